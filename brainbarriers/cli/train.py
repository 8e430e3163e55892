"""``brainbarriers train TARGET``: training loops that produce model packages.

Each target is a module with ``add_arguments(parser)`` and ``main(args) -> int``. The module is
imported when the parser is built (``brainbarriers --help``), so it must stay light: no torch or
networks at import time - ``main`` imports the training code when the target runs.
"""

from __future__ import annotations

import importlib

TRAIN_TARGETS: dict[str, tuple[str, str]] = {
    # target: (module, one-line help)
    "tumor": ("brainbarriers.tumor.train",
              "tumour sub-region models (HNF-Netv2, ConResNet, SegResNet) from BraTS 2021/2023 folders"),
    "barriers": ("brainbarriers.barriers.cli",
                 "two-stage ABCs barrier models (DynUNet + HMRNets) from the ABCs layout or phantoms"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model and write it as a model package")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_text) in TRAIN_TARGETS.items():
        tp = targets.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(tp)
        tp.set_defaults(func=mod.main)
