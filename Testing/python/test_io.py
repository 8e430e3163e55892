"""Reading and writing keep every volume's geometry, in every supported format."""

from __future__ import annotations

import errno
import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from brainbarriers.errors import InputError
from brainbarriers.geometry import reorient_to
from brainbarriers.io import load_volume, save_segmentation, save_volume, to_sitk
from brainbarriers.labels import TUMOR_SEGMENTS
from brainbarriers.volume import Volume


def oblique_volume(shape=(12, 10, 8), spacing=(0.9, 1.1, 3.0), dtype=np.int16) -> Volume:
    """An anisotropic volume with an oblique direction matrix and asymmetric content."""
    angle = np.deg2rad(17)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag(spacing) @ np.diag([-1, 1, 1])
    affine[:3, 3] = [31.5, -12.25, 7.0]
    array = (np.arange(np.prod(shape)).reshape(shape) % 251 + 1).astype(dtype)
    return Volume(array, affine)


def write_dicom_series(volume: Volume, folder) -> None:
    """A minimal but valid CT-like DICOM series, one file per slice, written by SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(volume)
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1234567"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.7654321",
            "0020|0052": "1.2.826.0.1.3680043.2.1125.1.999",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:.6f}" for c in origin),
            "0020|0037": "\\".join(f"{c:.6f}" for c in (direction[0], direction[3], direction[6],
                                                       direction[1], direction[4], direction[7])),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


LPS = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS, written out here rather than taken from io


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_formats_round_trip_geometry(tmp_path, suffix):
    vol = oblique_volume()
    path = tmp_path / f"v{suffix}"
    if suffix.startswith(".nii"):
        save_volume(vol, path)
    else:
        sitk.WriteImage(to_sitk(vol), str(path))
    back = load_volume(path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    # The file itself, read by another reader, puts each voxel at the same physical point (in
    # LPS for NRRD/MetaImage): a writer and reader that both dropped the RAS/LPS flip would still
    # agree with each other above, but not here.
    ijk = np.array([[0, 0, 0], [11, 9, 7], [3, 5, 2]])
    if suffix == ".nrrd":
        header = nrrd.read_header(str(path))
        assert header["space"] == "left-posterior-superior"
        lps = header["space origin"] + ijk @ header["space directions"]
    elif suffix == ".mha":
        image = sitk.ReadImage(str(path))
        lps = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ijk])
    else:
        lps = nib.affines.apply_affine(nib.load(path).affine, ijk) * LPS
    np.testing.assert_allclose(lps * LPS, vol.world_coordinates(ijk), atol=1e-4)


def test_nrrd_written_by_another_writer_is_read_at_its_physical_position(tmp_path):
    """A voxel NRRD places at LPS (10, 20, 30) is at RAS (-10, -20, 30) in the volume we read."""
    directions = np.array([[0.0, 1.5, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # rows: i, j, k
    nrrd.write(str(tmp_path / "v.nrrd"), np.arange(60, dtype=np.int16).reshape(3, 4, 5) + 1,
               {"space": "left-posterior-superior", "space directions": directions,
                "space origin": np.array([10.0, 20.0, 30.0])})
    vol = load_volume(tmp_path / "v.nrrd")
    assert vol.array[2, 1, 3] == 2 * 20 + 1 * 5 + 3 + 1
    np.testing.assert_allclose(vol.world_coordinates(np.array([[0, 0, 0]]))[0], [-10, -20, 30])
    expected = (np.array([10.0, 20.0, 30.0]) + [2, 1, 3] @ directions) * LPS
    np.testing.assert_allclose(vol.world_coordinates(np.array([[2, 1, 3]]))[0], expected)


def test_dicom_series_folder(tmp_path):
    import pydicom

    vol = oblique_volume(shape=(16, 12, 6))
    write_dicom_series(vol, tmp_path / "series")
    back = load_volume(tmp_path / "series")
    # DICOM readers stack slices along the row x column normal, which here runs against k:
    # the same voxels in world space, with the third axis reversed.
    assert not np.allclose(back.affine, vol.affine, atol=1e-4)
    same = reorient_to(back, vol.grid)
    np.testing.assert_array_equal(same.array, vol.array)
    # Each file's ImagePositionPatient (LPS, read with pydicom) is the first voxel of a slice of
    # the volume we read, and of the volume written.
    first_voxels = back.world_coordinates(np.array([[0, 0, k] for k in range(back.shape[2])]))
    written = vol.world_coordinates(np.array([[0, 0, k] for k in range(vol.shape[2])]))
    for f in sorted((tmp_path / "series").glob("*.dcm")):
        ras = np.asarray(pydicom.dcmread(f).ImagePositionPatient, float) * LPS
        assert np.abs(first_voxels - ras).max(axis=1).min() < 1e-3, f.name
        assert np.abs(written - ras).max(axis=1).min() < 1e-3, f.name


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """ITK would stack 7 slices at the mean spacing, misplacing every slice beyond the gap."""
    vol = oblique_volume(shape=(16, 12, 8))
    write_dicom_series(vol, tmp_path / "series")
    (tmp_path / "series" / "slice003.dcm").unlink()
    with pytest.raises(InputError, match="unevenly spaced slices.*missing") as e:
        load_volume(tmp_path / "series")
    assert str(tmp_path / "series") in str(e.value) and "\n" not in str(e.value)
    # A truncated file (the copy broke off) is not read either, and is refused the same way.
    write_dicom_series(vol, tmp_path / "truncated")
    f = tmp_path / "truncated" / "slice004.dcm"
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(InputError, match="unevenly spaced|cannot be read"):
        load_volume(tmp_path / "truncated")


def _nifti_with_header_affine(tmp_path, rows) -> Path:
    """A NIfTI whose sform is exactly ``rows`` (nibabel would refuse to build such an image)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    path = tmp_path / "affine.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header=header), path)
    return path


@pytest.mark.parametrize("rows", [[[0] * 4] * 3, [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]],
                         ids=["zero", "singular"])
def test_zero_or_singular_affine_is_one_line_exit_2(tmp_path, rows, capsys):
    from brainbarriers.cli.main import main

    path = _nifti_with_header_affine(tmp_path, rows)
    with pytest.raises(InputError, match="zero or singular affine"):
        load_volume(path)
    code = main(["run", "--t1", str(path), "--steps", "skullstrip", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0], err
    assert not (tmp_path / "o").exists()


def test_nifti_matches_nibabel_world_coordinates(tmp_path):
    """The affine we read is nibabel's: a voxel lands at the same RAS point in both."""
    vol = oblique_volume()
    save_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(tmp_path / "v.nii.gz")
    ijk = np.array([[1, 2, 3], [11, 0, 7]])
    np.testing.assert_allclose(load_volume(tmp_path / "v.nii.gz").world_coordinates(ijk),
                               nib.affines.apply_affine(img.affine, ijk), atol=1e-5)


def test_itk_reads_our_nifti_at_the_same_world_points(tmp_path):
    """Slicer reads NIfTI with ITK: ITK's LPS physical points must match our RAS ones."""
    vol = oblique_volume()
    save_volume(vol, tmp_path / "v.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    for ijk in [(0, 0, 0), (11, 9, 7), (3, 5, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = vol.world_coordinates(np.array([ijk]))[0]
        np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-4)


def test_output_keeps_input_header(tmp_path):
    vol = oblique_volume()
    img = nib.Nifti1Image(vol.array, vol.affine)
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=2)  # aligned-to-another-file, kept on output
    nib.save(img, tmp_path / "in.nii.gz")
    src = load_volume(tmp_path / "in.nii.gz")
    save_volume(src.with_array((src.array > 100).astype(np.uint8)), tmp_path / "out.nii.gz")
    out = nib.load(tmp_path / "out.nii.gz")
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-5)


def test_seg_nrrd_has_names_colours_and_voxels(tmp_path):
    import slicerio

    vol = oblique_volume()
    labels = np.zeros(vol.shape, np.uint8)
    labels[2:5, 2:6, 1:3] = 1
    labels[6:9, 3:5, 4:6] = 4
    brain = np.zeros(vol.shape, np.uint8)
    brain[1:10, 1:8, 0:7] = 1
    from brainbarriers.labels import BRAIN_SEGMENT

    path = save_segmentation(tmp_path / "s.seg.nrrd", [
        (vol.with_array(brain), [(1, BRAIN_SEGMENT)]),
        (vol.with_array(labels), [(1, TUMOR_SEGMENTS[1]), (4, TUMOR_SEGMENTS[4])]),
    ])
    seg = slicerio.read_segmentation(str(path))
    names = {s["name"]: s for s in seg["segments"]}
    assert set(names) == {"Brain", "Necrotic tumour core", "Enhancing tumour"}
    np.testing.assert_allclose(names["Enhancing tumour"]["color"], TUMOR_SEGMENTS[4].color, atol=1e-3)
    assert names["Brain"]["terminology"]["type"][1] == "12738006"
    # Voxels of each segment, and the geometry, in world space (LPS in the file).
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ seg["ijkToLPS"], vol.affine, atol=1e-5)
    for name, expected in [("Brain", brain == 1), ("Enhancing tumour", labels == 4)]:
        mask = slicerio.extract_segments(seg, [(name, 1)])["voxels"] > 0
        np.testing.assert_array_equal(mask, expected)


def test_writes_are_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the earlier file as it was and no temporary beside it."""
    vol = oblique_volume()
    final = tmp_path / "out.nii.gz"
    final.write_bytes(b"the earlier result")
    written_to = []

    def full_disk(img, filename):  # writes part of the file, then the disk is full
        written_to.append(Path(filename))
        Path(filename).write_bytes(b"half a NIfTI")
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(nib, "save", full_disk)
    with pytest.raises(InputError, match="out.nii.gz: cannot be written .No space left"):
        save_volume(vol, final)
    assert written_to and written_to[0] != final  # the bytes went to a temporary name
    assert final.read_bytes() == b"the earlier result"
    assert list(tmp_path.iterdir()) == [final]


def test_written_files_follow_the_umask(tmp_path):
    """mkstemp makes 0600 files; outputs get what the user's umask gives any new file."""
    old = os.umask(0o027)
    try:
        save_volume(oblique_volume(), tmp_path / "a.nii.gz")
        mode = stat.S_IMODE((tmp_path / "a.nii.gz").stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o640


# ------------------------------------------------------------------------------------ bad input
def _nifti(tmp_path, array, name="bad.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: _nifti(p, np.ones((10, 12), np.float32)), "2D"),
        (lambda p: _nifti(p, np.ones((10, 12, 1), np.float32)), "2D"),
        (lambda p: _nifti(p, np.ones((6, 6, 6, 3), np.float32)), "4D"),
        (lambda p: _nifti(p, np.where(np.eye(6)[:, :, None] > 0, np.nan, 1.0) * np.ones((6, 6, 6), np.float32)), "NaN"),
        (lambda p: _nifti(p, np.full((6, 6, 6), np.inf, np.float32)), "infinite"),
        (lambda p: _nifti(p, np.zeros((6, 6, 6), np.int16)), "empty"),
        (lambda p: p / "missing.nii.gz", "does not exist"),
        (lambda p: (p / "x.png").write_bytes(b"\x89PNG") and p / "x.png", "unknown format"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as e:
        load_volume(path)
    assert str(path) in str(e.value) and problem in str(e.value)
    assert "\n" not in str(e.value)


def test_corrupt_gzip(tmp_path):
    good = _nifti(tmp_path, np.ones((8, 8, 8), np.int16), "good.nii.gz")
    data = good.read_bytes()
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        load_volume(bad)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header at all" * 3)[:-8] + b"\0" * 8)
    with pytest.raises(InputError, match=str(garbage)):
        load_volume(garbage)


def test_4d_with_one_frame_is_accepted(tmp_path):
    path = _nifti(tmp_path, np.ones((6, 7, 8, 1), np.float32))
    assert load_volume(path).shape == (6, 7, 8)
