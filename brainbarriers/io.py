"""Reading and writing volumes with their geometry.

Reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series folders;
writes NIfTI and Slicer's ``.seg.nrrd``. Every write goes to a temporary name in the destination
folder and is renamed into place, so a crash or a cancel never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import nibabel.openers
import numpy as np

from .errors import InputError
from .volume import Volume

# SimpleITK (NRRD/MHA/DICOM, ~100 MB once imported) is imported where it is used.

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# RAS (NIfTI, Slicer) <-> LPS (ITK, DICOM): flip the first two world axes.
_LPS = np.diag([-1.0, -1.0, 1.0])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ---------------------------------------------------------------------------------------- reading
def load_volume(path: str | Path, *, allow_empty: bool = False) -> Volume:
    """Load a 3D scalar volume, checking that it is usable.

    Raises InputError naming the file for: a missing path, an unknown format, a corrupt file, a 2D or
    4D image, NaN/Inf voxels and (unless ``allow_empty``) an all-zero volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        volume = _read_dicom_series(path)
    else:
        suffix = _suffix(path)
        try:
            if suffix in NIFTI_SUFFIXES:
                volume = _read_nifti(path)
            elif suffix in ITK_SUFFIXES:
                volume = _read_itk(path)
            else:
                raise InputError(
                    path,
                    f"unknown format '{suffix}' (expected .nii, .nii.gz, .nrrd, .mha, .mhd "
                    "or a DICOM folder)",
                )
        except InputError:
            raise
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, RuntimeError, ValueError,
                nib.filebasedimages.ImageFileError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                path, f"cannot be read, the file is corrupt or truncated ({reason})"
            ) from e
    check_volume(volume, path, allow_empty=allow_empty)
    return volume


def _check_affine(affine: np.ndarray, path: Path) -> None:
    """Refuse a header whose voxel axes do not span space: no voxel would have a position."""
    linear = affine[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    if not np.isfinite(affine).all():
        raise InputError(path, "has a non-finite affine (voxel-to-world matrix) in its header")
    if spacing.min() <= 0 or abs(np.linalg.det(linear / spacing)) < 1e-3:
        raise InputError(path, "has a zero or singular affine (voxel-to-world matrix) in its "
                         "header: the voxels have no position in space")


def check_volume(volume: Volume, path: str | Path, *, allow_empty: bool = False) -> None:
    a = volume.array
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(path, f"has voxel type {a.dtype}, expected real scalar voxels")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise InputError(path, f"has {bad} NaN or infinite voxels")
    if not allow_empty and not np.any(a):
        raise InputError(path, "is empty (every voxel is zero)")


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    # Trailing singleton dimensions (a 3D image saved as 4D with one frame) are harmless.
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        kind = f"{array.ndim}D" if array.ndim != 3 else "flat (a 2D slice)"
        raise InputError(path, f"is {kind} with shape {tuple(array.shape)}, expected a 3D volume")
    return array


def _read_nifti(path: Path) -> Volume:
    img = nib.load(str(path))
    array = np.asanyarray(img.dataobj)
    array = _as_3d(array, path)
    header = img.header.copy()
    _check_affine(img.affine, path)
    return Volume(np.ascontiguousarray(array), img.affine, source=str(path), header=header)


def _read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return _from_sitk(image, path)


def _read_dicom_series(folder: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(folder, "is a folder without a DICOM series")
    if len(series) > 1:
        raise InputError(
            folder, f"holds {len(series)} DICOM series; give the folder of one series"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(folder, f"DICOM series cannot be read ({str(e).splitlines()[0]})") from e
    if len(files) > 1:
        positions = [reader.GetMetaData(i, "0020|0032") if reader.HasMetaDataKey(i, "0020|0032")
                     else None for i in range(len(files))]
        _check_slice_spacing(folder, positions, image)
    return _from_sitk(image, folder)


def _check_slice_spacing(folder: Path, positions: list[str | None], image) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal.

    ITK stacks the slices it finds at their mean spacing (with a warning on stderr only), so a
    missing or unreadable slice would shift every slice beyond it by millimetres. Refusing is safer
    than resampling for planning: the user can find the missing file.
    """
    if any(p is None for p in positions):
        raise InputError(folder, "has a slice without ImagePositionPatient; cannot check its "
                         "slice spacing")
    try:
        points = np.array([[float(v) for v in p.split("\\")] for p in positions])
    except ValueError as e:
        raise InputError(folder, f"has an unreadable ImagePositionPatient ({e})") from e
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
    along = np.sort(points @ normal)
    gaps = np.diff(along)
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise InputError(folder, "has two or more slices at one position: a mixed series?")
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(1e-3, 0.01 * step):
        raise InputError(
            folder, f"has unevenly spaced slices: {gaps[worst]:.4g} mm between slices {worst + 1} "
            f"and {worst + 2} of {len(along)}, {step:.4g} mm elsewhere; a slice is missing or "
            "unreadable (refused rather than stacked at the wrong positions)")


def _from_sitk(image, path: Path) -> Volume:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
        )
    if image.GetDimension() != 3:
        size = tuple(image.GetSize())
        raise InputError(path, f"is {image.GetDimension()}D with size {size}, expected a 3D volume")
    array = _as_3d(sitk.GetArrayFromImage(image).transpose(2, 1, 0), path)
    affine = affine_from_sitk(image)
    _check_affine(affine, path)
    return Volume(np.ascontiguousarray(array), affine, source=str(path))


def affine_from_sitk(image) -> np.ndarray:
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def to_sitk(volume: Volume):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    spacing = volume.spacing
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple((_LPS @ volume.grid.direction).ravel().tolist()))
    image.SetOrigin(tuple((_LPS @ volume.affine[:3, 3]).tolist()))
    return image


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, or of every file in a folder (a DICOM series) in name order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- writing
# A write that fails for one of these is the user's to fix (a full disk, a read-only or
# forbidden folder): one line naming the file, not a traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})


def write_error(path: str | Path, error: OSError) -> InputError:
    return InputError(path, f"cannot be written ({error.strerror or error})")


def _umask() -> int:
    umask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the user's umask."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` would give a new folder (mkdtemp makes it 0700)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place on success.

    The file gets the user's usual permissions (mkstemp makes it 0600). A write refused by the
    system (disk full, read-only) becomes an InputError naming ``path``; no temporary is left.
    """
    path = Path(path)
    suffix = _suffix(path) if path.name.endswith(".seg.nrrd") is False else ".seg.nrrd"
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}",
                                    dir=path.parent)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def inside(root: str | Path, name: object, where: str | Path | None = None) -> Path:
    """``root / name``, refusing a name that leads outside ``root``: absolute, with ``..``, or
    through a symbolic link. Every path a manifest or a package names goes through here."""
    root, rel = Path(root), Path(str(name))
    path = root / rel
    if (not str(name) or rel.is_absolute() or ".." in rel.parts
            or not path.resolve().is_relative_to(root.resolve())):
        raise InputError(where or root, f"names {str(name)!r}, which is outside {root}")
    return path


def is_partial(path: Path) -> bool:
    """A temporary left by ``atomic_path`` (after a kill, which no ``finally`` survives)."""
    return path.name.startswith(".") and ".part" in path.name


def check_writable_folder(folder: str | Path) -> None:
    """Fail early, before anything is written, if ``folder`` cannot be made or written in."""
    folder = Path(folder)
    existing = folder
    while True:
        try:
            existing.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            if existing.is_symlink():
                raise InputError(existing, "is a broken symbolic link") from None
            existing = existing.parent
        except OSError as e:  # a symlink loop, a file used as a folder, ...
            raise InputError(existing, f"cannot be used as a folder ({e.strerror or e})") from None
    if not existing.is_dir():
        raise InputError(existing, "is a file, so the output folder cannot be created there")
    try:  # a real write test: permission bits do not tell for root or read-only file systems
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(folder, f"output folder is not writable ({e.strerror or e})") from e


def save_volume(volume: Volume, path: str | Path, dtype: np.dtype | str | None = None) -> Path:
    """Write a volume as NIfTI (atomically). Uses the volume's own NIfTI header when it has one."""
    path = Path(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: volumes are written as .nii or .nii.gz")
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    header = volume.header.copy() if isinstance(volume.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(array, volume.affine, header=header)
    img.set_data_dtype(array.dtype)
    if header is not None:
        # Keep the input's qform/sform codes, refresh both matrices from the affine.
        img.set_qform(volume.affine, code=int(header["qform_code"]) or 1)
        img.set_sform(volume.affine, code=int(header["sform_code"]) or 1)
        img.header["scl_slope"], img.header["scl_inter"] = np.nan, np.nan
    else:
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# nibabel compresses at level 1 by default; outputs are written once and read many times.
nib.openers.Opener.default_compresslevel = 6


def save_segmentation(
    path: str | Path,
    layers: Sequence[tuple[Volume, Sequence[tuple[int, object]]]],
) -> Path:
    """Write Slicer's ``.seg.nrrd``.

    ``layers`` holds label maps on one grid, each with the segments it contains as
    ``(label value, SegmentSpec)``. Every label map becomes a layer, so overlapping segments (the
    brain and the tumour inside it) are kept.
    """
    import slicerio

    path = Path(path)
    if not layers:
        raise ValueError("no segments to write")
    grid = layers[0][0].grid
    for volume, _ in layers:
        if not volume.grid.same_as(grid):
            raise ValueError("all segmentation layers must be on one grid")
    voxels = np.stack([v.array.astype(np.uint8) for v, _ in layers], axis=0)  # (layer, i, j, k)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine
    segments = []
    for layer, (_, specs) in enumerate(layers):
        for value, spec in specs:
            segments.append(
                {
                    "id": spec.key,
                    "name": spec.name,
                    "color": list(spec.color),
                    "labelValue": int(value),
                    "layer": layer,
                    "terminology": spec.terminology_dict(),
                }
            )
    segmentation = {
        "voxels": voxels if len(layers) > 1 else voxels[0],
        "ijkToLPS": ijk_to_lps,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path
