"""``brainbarriers train barriers``'s options, kept light: building the CLI parser (``--help``)
must not import torch, so ``main`` imports the training code only when the target runs.
The training itself is documented in ``brainbarriers.barriers.train``.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="ABCs 2020 challenge training folder (NNN_t1/_t2/_ct/_labelmap_task1)")
    src.add_argument("--phantom", type=int, help="train on this many generated cases instead")
    p.add_argument("--out", required=True, help="model-set folder to write (stage1/, stage2_<structure>/)")
    p.add_argument("--sequences", default=None,
                   help="input sequences, comma-separated (default: ct,t1ce,t2 when every case has a CT - "
                        "the paper's best setting - else t1ce,t2)")
    p.add_argument("--structures", default="falx,tentorium,sagittal_sinus,transverse_sinus,cerebellum,ventricles",
                   help="structures to train stage-2 models for (comma-separated keys)")
    p.add_argument("--iterations1", type=int, default=3000)
    p.add_argument("--iterations2", type=int, default=3000)
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate (poly decay, power 0.9)")
    p.add_argument("--lr2", type=float, default=None, help="stage-2 initial learning rate (default: --lr)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd: the paper's (default); adam: for short runs such as the CPU demo")
    p.add_argument("--stage1-spacing", type=float, default=2.4, help="mm; the whole volume is resampled")
    p.add_argument("--stage2-spacing", type=float, default=1.2, help="mm (ABCs images are at 1.2 mm)")
    p.add_argument("--filters", default="32,64,128,256", help="DynUNet filters per level")
    p.add_argument("--hr-channels", type=int, default=8)
    p.add_argument("--mr-channels", default="16,32,64,128,64,32,16")
    p.add_argument("--fusion", choices=("conv", "concat"), default="conv",
                   help="HMRNet layout: conv (a conv block fuses each concatenation before the BFC attention, "
                        "as the authors' code; default) or concat (the lighter first layout)")
    p.add_argument("--patch", default="64,64,64", help="stage-2 training patch / sliding window")
    p.add_argument("--margin", type=int, default=10, help="voxels added around the coarse bounding box")
    p.add_argument("--reach", type=_reach, default=5.0,
                   help="at inference, stage 2 labels only voxels this close (voxels) to the coarse mask; "
                        "'box': the whole box, as in the paper (default 5)")
    p.add_argument("--abcs-labels", default=None, help="JSON {challenge value: our label} override")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--description", default="", help="text for the packages' manifests")
    p.add_argument("--stage1-from", default=None,
                   help="reuse this trained stage-1 package instead of training one (stage 2 only)")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: library default)")




def _reach(text: str) -> float | None:
    if text == "box":
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("--reach is a distance in voxels (>= 0) or 'box'")
    return value


def main(args) -> int:
    # Imported here, not at the top: the options above must load without torch, and train.py does
    # not import this module (no import circle).
    from .train import main as train_main

    return train_main(args)
