"""Build the multi-atlas set of the cerebellum/ventricle stage (``brainbarriers/data/anatomy/oasis``).

    python scripts/build_oasis_atlases.py [--data ../shared/data/oasis-miccai2012]

From each OASIS subject of the MICCAI 2012 multi-atlas labelling challenge (skull-stripped T1
``<id>/<id>_SS.nii.gz`` and Neuromorphometrics labels ``<id>/<id>_glm.nii.gz``) it writes
``oasis-<id>_t1.nii.gz`` (T1 at 2 mm, uint8) and ``oasis-<id>_barriers.nii.gz`` (cerebellum 5,
ventricles 6, falx 1 and tentorium 2 at 1 mm, cropped; definitions in
``brainbarriers.barriers.multiatlas``). The data are
CC BY-NC: see the README written beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainbarriers.barriers.multiatlas import ATLAS_SUBJECTS, atlas_folder, make_atlas
from brainbarriers.io import load_volume, save_volume


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/oasis-miccai2012"))
    p.add_argument("--out", default=str(atlas_folder()))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ATLAS_SUBJECTS:
        folder = Path(args.data) / name
        atlas = make_atlas(name, load_volume(folder / f"{name}_SS.nii.gz"),
                           load_volume(folder / f"{name}_glm.nii.gz"))
        save_volume(atlas.t1, out / f"oasis-{name}_t1.nii.gz", np.uint8)
        save_volume(atlas.labels, out / f"oasis-{name}_barriers.nii.gz", np.uint8)
        print(name, atlas.t1.grid.describe(), atlas.labels.grid.describe(), flush=True)


if __name__ == "__main__":
    main()
