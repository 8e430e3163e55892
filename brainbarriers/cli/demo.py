"""``brainbarriers demo``: run every step on the shipped demo case."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..demo import copy_demo_inputs, evaluate_run
from .run import add_run_arguments, execute


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    inputs = copy_demo_inputs(out)
    code = execute(inputs, out, args)
    results = evaluate_run(out)
    if not args.json_progress:
        print(f"evaluation against the demo case's ground truth ({out / 'evaluation.json'}):",
              file=sys.stderr)
        print(json.dumps(results, indent=2))
    return code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="run every step on the bundled demo case",
        description="Copy the bundled demo case (SRI24 anatomy with a synthetic glioma, four "
        "sequences with skull) to OUT/inputs, run every step on it, and write the outputs, "
        "overview.png and evaluation.json (each output scored against the case's truth).")
    add_run_arguments(p, inputs=False)
    p.add_argument("--out", default="demo_out", metavar="DIR",
                   help="run folder (default: ./demo_out)")
    p.set_defaults(func=_demo)
