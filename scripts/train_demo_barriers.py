"""Train the shipped demo barrier models (``brainbarriers/data/models/barriers_demo``) on CPU.

    nohup python scripts/train_demo_barriers.py [OUT [--stage1-from STAGE1]] > train.log 2>&1 &

Twelve generated cases (seeds 1000-1011) at 2 mm (zoom=2), inputs T1ce + T2; stage 1 (DynUNet) on
the whole volume at 4 mm, 1500 iterations; stage 2, one HMRNet per structure on the 2 mm crops, 500
iterations each (HMRNet-s for falx and sagittal sinus with sagittal slices and for the transverse
sinus with axial slices; HMRNet-p for tentorium, cerebellum and ventricles). Losses, deep
supervision, augmentation, crops from three stage-1 checkpoints and poly lr decay are the paper's.
Demo-only reductions, recorded in every manifest: fewer channels (DynUNet 8-16-32-64; HMRNet
high-resolution branch 4 channels, multi-resolution branch 8-16-32-64-32-16-8: half the paper's 8
and 16-...-16, the architecture otherwise the paper's), few cases and iterations, and Adam instead
of SGD (hundreds of iterations instead of ~10^5; see ``barriers.train.make_optimizer``). Two
threads; 49 minutes on a 2-core CPU shared with other work (stage 1 12 min, each stage-2 model 4-8
min); ``train.log`` beside the packages is that run's log.

The shipped set predates HMRNet's fusion blocks and stage 1's deep supervision (issue 14): its
stage-2 manifests record ``"fusion": "concat"`` (the layout its weights were trained with, which this
script keeps with ``--fusion concat``: the lighter one for a CPU demo) and its stage-1 manifest has no
``deep_supervision`` (no extra head; a run of this script now trains one).
The shipped set is one run of this script made before ``--reach`` existed: ``"reach": 5`` was then
written into its stage-2 manifests (an inference setting, chosen on seeds 8001-8003 among 3, 5 and
8; the weights are unchanged). ``python bench/barriers_accuracy.py`` scores it on held-out cases.
"""

from __future__ import annotations

import argparse
import sys

from brainbarriers.barriers import cli

DESCRIPTION = (
    "DEMO ONLY - trained on 12 generated phantom cases (T1ce + T2, 2 mm), not on patients. "
    "Paper 000 two-stage framework with reduced widths: DynUNet filters 8-16-32-64 (stage 1, 4 mm); "
    "HMRNet high-resolution branch 4 channels and multi-resolution branch 8-16-32-64-32-16-8 "
    "(the paper: 8 and 16-32-64-128-64-32-16), architecture otherwise the paper's; Adam (lr 0.01, "
    "poly decay) instead of SGD because of the short CPU budget.")
DEMO_ARGS = ("--phantom 12 --iterations1 1500 --iterations2 500 --optimizer adam --lr 0.01 --lr2 0.01 "
             "--stage1-spacing 4 --stage2-spacing 2 --filters 8,16,32,64 --hr-channels 4 "
             "--mr-channels 8,16,32,64,32,16,8 --fusion concat --patch 32,32,32 --seed 0 --threads 2 --half")

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "brainbarriers/data/models/barriers_demo"
    extra = sys.argv[2:]  # e.g. --stage1-from FOLDER/stage1 to retrain stage 2 only
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    sys.exit(cli.main(p.parse_args([*DEMO_ARGS.split(), "--out", out, "--description", DESCRIPTION, *extra])))
