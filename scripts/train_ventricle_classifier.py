"""Train the ventricle classifier shipped with the OASIS atlases (``brainbarriers.barriers.ventricles``).

    python scripts/train_ventricle_classifier.py [--data ../shared/data/oasis-miccai2012]

Each OASIS head (skull-stripped T1 and Neuromorphometrics labels) is registered to the other two
atlases, one at a time, as the multi-atlas stage registers a patient; its features under each
atlas's prior and under their fusion, with its own ventricles as the answer, are the training
set (nine examples in all). Writes ``ventricles_classifier.npz`` and its record (``.json``) beside
the atlases. The record's validation figures come from ``bench/barriers_accuracy.py --oasis``
(leave-one-out, a classifier trained without the head measured) and were added to it from there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from brainbarriers.barriers import ventricles
from brainbarriers.barriers.multiatlas import ATLAS_SUBJECTS, atlas_folder, load_atlases
from brainbarriers.io import load_volume


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/oasis-miccai2012"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    atlases = {a.name: a for a in load_atlases()}
    pairs = []
    for name in ATLAS_SUBJECTS:
        folder = Path(args.data) / name
        t1, labels = load_volume(folder / f"{name}_SS.nii.gz"), load_volume(folder / f"{name}_glm.nii.gz")
        others = tuple(atlases[o] for o in ATLAS_SUBJECTS if o != name)
        pairs += ventricles.examples(t1, labels, others)
        print(f"{name}: {sum(len(x) for x, _ in pairs)} voxels so far", flush=True)
    classifier = ventricles.train(pairs, seed=args.seed)
    record = {
        "what": "ventricle classifier of the multi-atlas stage (brainbarriers.barriers.ventricles)",
        "features": list(ventricles.FEATURES),
        "network": f"{len(ventricles.FEATURES)} -> {ventricles.HIDDEN} -> {ventricles.HIDDEN} -> 1, ReLU",
        "training": "full-batch Adam, learning rate 0.01, 300 steps, binary cross-entropy, "
                    f"seed {args.seed}, one thread",
        "data": [f"OASIS {n} (MICCAI 2012 multi-atlas labelling challenge), ventricles = "
                 "Neuromorphometrics 4, 11, 49-52; seen through the other two atlases, one at a "
                 "time and fused" for n in ATLAS_SUBJECTS],
        "voxels": int(sum(len(x) for x, _ in pairs)),
        "wall_s": round(time.perf_counter() - start, 1),
        "licence": "CC BY-NC (derived from the OASIS / Neuromorphometrics labels, as the atlases)",
        "validation": "leave-one-out on the three heads: bench/barriers_accuracy.py --oasis (README)",
    }
    path = atlas_folder() / ventricles.WEIGHTS
    classifier.save(path, record)
    print(f"wrote {path} ({record['voxels']} voxels, {record['wall_s']} s)")


if __name__ == "__main__":
    main()
