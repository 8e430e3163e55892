"""The atlas stage on each sequence of the same head: does T1ce, T2 or FLAIR give what T1 gives?

Real BraTS cases have no barrier truth, so each sequence's cerebellum and ventricles are compared
with those the same stage draws on the case's T1 (Dice), and the ventricles' volumes are printed,
for the template stage and the default (multi-atlas) stage. Brain mask: the voxels non-zero in any
sequence (the cases are skull-stripped).

    python bench/barriers_sequences.py [--cases Brats18_CBICA_AME_1,Brats18_TCIA10_639_1]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEQUENCES = ("t1", "t1ce", "t2", "flair")


def main() -> int:
    from brainbarriers.barriers.atlas import CEREBELLUM, VENTRICLES, atlas_barriers
    from brainbarriers.metrics import dice
    from brainbarriers.tumor.train import find_cases, load_case_volumes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="Brats18_CBICA_AME_1,Brats18_TCIA10_639_1")
    args = p.parse_args()
    cases = {c["id"]: c for c in find_cases([DATA / "brats18", DATA / "brats-gli"])}
    print(f"{'case':<22} {'stage':<11} {'cerebellum T1ce / T2 / FLAIR':>30} "
          f"{'ventricles T1ce / T2 / FLAIR':>30} {'ventricles ml T1 / T1ce / T2 / FLAIR':>38}")
    for case_id in args.cases.split(","):
        vols, mask, _ = load_case_volumes(cases[case_id])
        ml = float(np.prod(mask.spacing)) / 1000
        for stage in ("template", "multiatlas"):
            labels = {}
            for s in SEQUENCES:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    labels[s], _ = atlas_barriers(vols[s], mask, anatomy=stage)
                for w in caught:
                    print(f"  {case_id} {stage} {s}: {w.message}")
            agree = {name: [dice(labels[s] == value, labels["t1"] == value) for s in SEQUENCES[1:]]
                     for name, value in (("cerebellum", CEREBELLUM), ("ventricles", VENTRICLES))}
            volumes = [(labels[s] == VENTRICLES).sum() * ml for s in SEQUENCES]
            print(f"{case_id:<22} {stage:<11} {' / '.join(f'{d:.3f}' for d in agree['cerebellum']):>30} "
                  f"{' / '.join(f'{d:.3f}' for d in agree['ventricles']):>30} "
                  f"{' / '.join(f'{v:.1f}' for v in volumes):>38}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
