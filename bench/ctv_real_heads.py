"""The CTV on real labelled heads at 1 mm: how much of a 15 mm CTV ends where the barriers should stop
it, with barriers drawn from the manual labels, from the template stage (sheets moved onto the
image's CSF lines) and from the default atlas stage (falx, tentorium, cerebellum and ventricles from
the OASIS atlases; leave-one-out: the head's own atlas is never used), beside the Euclidean margin.

    python bench/ctv_real_heads.py [--heads 1000 1001]

The GTVs are those of ``Testing/python/test_ctv_real.py`` (which runs the same checks at 2 mm with
the label-drawn barriers): a 6 mm ball at the medial surface of the left hemisphere 15-25 mm above
the corpus callosum (CTV in the right hemisphere's cortex, ml) and one in the left temporal-occipital
cortex on the tentorium, far from the notch (CTV in the cerebellum, ml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OASIS = ROOT.parent / "shared" / "data" / "oasis-miccai2012"
sys.path.insert(0, str(ROOT / "Testing" / "python"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--heads", nargs="+", default=["1000", "1001"])
    args = p.parse_args()
    import test_ctv_real as placements

    from brainbarriers.barriers.atlas import atlas_barriers
    from brainbarriers.barriers.multiatlas import ATLAS_SUBJECTS, make_atlas
    from brainbarriers.barriers.position import sheets_from_labels
    from brainbarriers.io import load_volume

    print(f"{'head':>5} {'barriers':>28} {'medial GTV: CTV in right cortex':>32} {'Euclidean':>9} "
          f"{'tentorial GTV: CTV in cerebellum':>33} {'Euclidean':>9}")
    atlases = {o: make_atlas(o, load_volume(OASIS / o / f"{o}_SS.nii.gz"), load_volume(OASIS / o / f"{o}_glm.nii.gz"))
               for o in ATLAS_SUBJECTS}
    for s in args.heads:
        labels = load_volume(OASIS / s / f"{s}_glm.nii.gz")
        t1 = load_volume(OASIS / s / f"{s}_SS.nii.gz")
        brain = t1.with_array((t1.array > 0).astype(np.uint8))
        h = placements.labelled_head(labels, brain)
        medial = placements._medial_left_gtv(h, (15.0, 25.0))
        tentorial = placements._tentorial_gtv(h)

        template, _ = atlas_barriers(t1, brain, anatomy="template")
        others = tuple(atlas for name, atlas in atlases.items() if name != s)  # never the head's own
        default, _ = atlas_barriers(t1, brain, atlases=others)
        ml = float(np.prod(labels.spacing)) / 1000
        for name, barriers in (("from the labels", sheets_from_labels(labels)),
                               ("template stage", t1.with_array(template)),
                               ("multi-atlas, leave-one-out", t1.with_array(default))):
            h["barriers"] = barriers
            ctv_m, eu_m = placements._margins(h, medial)
            ctv_t, eu_t = placements._margins(h, tentorial)
            print(f"{s:>5} {name:>28} {(ctv_m & h['right_cortex']).sum() * ml:32.2f} "
                  f"{(eu_m & h['right_cortex']).sum() * ml:9.2f} {(ctv_t & h['cerebellum']).sum() * ml:33.2f} "
                  f"{(eu_t & h['cerebellum']).sum() * ml:9.2f}", flush=True)


if __name__ == "__main__":
    main()
