"""Train the shipped demo barrier models (``brainbarriers/data/models/barriers_demo``) on CPU.

    nohup python scripts/train_demo_barriers.py [OUT [--stage1-from STAGE1]] > train.log 2>&1 &

Eight generated cases (seeds 1000-1007) at 2 mm (zoom=2), inputs T1ce + T2; stage 1 (DynUNet) on
the whole volume at 6 mm; stage 2, one HMRNet per structure on the 2 mm crops (HMRNet-s for falx
and sagittal sinus with sagittal slices and for the transverse sinus with axial slices; HMRNet-p
for tentorium, cerebellum and ventricles). Losses, deep supervision, augmentation, checkpoint
sampling and poly lr decay are the paper's. Demo-only reductions, recorded in every manifest:
fewer channels (DynUNet 8-16-32-64; HMRNet high-resolution branch 4 channels, multi-resolution
branch 8-16-32-64-32-16-8: half the paper's 8 and 16-...-16, the architecture otherwise the
paper's), few cases and iterations, and Adam instead of SGD (a few hundred iterations instead of
~10^5; see ``barriers.train.make_optimizer``). One thread; about 35 minutes on a busy 2-core CPU.

The shipped set was made in two runs of this script: the first wrote stage 1 (800 iterations, 9.5
min) and stage-2 models trained too briefly (100 iterations, lr 0.003: worse than stage 1); the
second retrained stage 2 with the current settings on the first run's stage 1
(``--stage1-from``), so its stage-2 crops came from that stage 1's final weights only.
"""

from __future__ import annotations

import argparse
import sys

import torch

from brainbarriers.barriers import cli

DESCRIPTION = (
    "DEMO ONLY - trained on 8 generated phantom cases (T1ce + T2, 2 mm), not on patients. "
    "Paper 000 two-stage framework with reduced widths: DynUNet filters 8-16-32-64 (stage 1, 6 mm); "
    "HMRNet high-resolution branch 4 channels and multi-resolution branch 8-16-32-64-32-16-8 "
    "(the paper: 8 and 16-32-64-128-64-32-16), architecture otherwise the paper's; Adam (lr 0.01, "
    "poly decay) instead of SGD because of the short CPU budget.")
DEMO_ARGS = ("--phantom 8 --iterations1 800 --iterations2 150 --optimizer adam --lr 0.01 --lr2 0.01 "
             "--stage1-spacing 6 --stage2-spacing 2 --filters 8,16,32,64 --hr-channels 4 "
             "--mr-channels 8,16,32,64,32,16,8 --patch 32,32,32 --seed 0 --threads 1 --half")

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1] if len(sys.argv) > 1 else "brainbarriers/data/models/barriers_demo"
    extra = sys.argv[2:]  # e.g. --stage1-from FOLDER/stage1 to retrain stage 2 only
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    sys.exit(cli.main(p.parse_args([*DEMO_ARGS.split(), "--out", out, "--description", DESCRIPTION, *extra])))
