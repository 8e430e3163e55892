"""Reading and writing keep every volume's geometry, in every supported format."""

from __future__ import annotations

import gzip

import nibabel as nib
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


def test_dicom_series_folder(tmp_path):
    vol = oblique_volume(shape=(16, 12, 6))
    write_dicom_series(vol, tmp_path / "series")
    back = load_volume(tmp_path / "series")
    # DICOM readers stack slices along the row x column normal, which here runs against k:
    # the same voxels in world space, with the third axis reversed.
    assert not np.allclose(back.affine, vol.affine, atol=1e-4)
    same = reorient_to(back, vol.grid)
    np.testing.assert_array_equal(same.array, vol.array)


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
    """A failure while writing leaves neither the file nor a temporary beside it."""
    vol = oblique_volume()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        save_volume(vol, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


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
