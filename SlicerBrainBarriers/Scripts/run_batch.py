"""Batch mode: run BrainBarriers on one case in Slicer without the main window.

    Slicer --no-splash --no-main-window --python-script run_batch.py -- \\
        --t1 t1.nii.gz --t1ce t1ce.nii.gz --t2 t2.nii.gz --flair flair.nii.gz \\
        --out results/ [--steps barriers,ctv] [--device cpu] [--install-dependencies]

Writes OUT/segmentation.seg.nrrd (every label output as terminology-tagged segments, on the T1ce
grid or the first input's) and OUT/<supervoxel map>.nrrd, then exits 0; on any failure it prints
the error (with the worker's log) and exits 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_batch.py", description=__doc__.split("\n\n")[0])
    for s in SEQUENCES:
        parser.add_argument(f"--{s}", metavar="FILE", help=f"{s.upper()} image")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--steps", default=None, help="comma-separated steps (default: all)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--coregister", choices=("auto", "always", "never"), default="auto",
                        help="rigid co-registration of the sequences to the reference (as in "
                        "`brainbarriers run`)")
    parser.add_argument("--set", dest="options", action="append", default=[],
                        metavar="STEP.KEY=VALUE", help="a step option; may be repeated")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    parser.add_argument("--install-dependencies", action="store_true",
                        help="install missing Python packages without asking")
    args = parser.parse_args(argv)
    if not any(getattr(args, s) for s in SEQUENCES):
        parser.error("give at least one input image (--t1, --t1ce, --t2, --flair, --ct)")
    return args


def parse_options(items: list[str]) -> dict[str, dict]:
    import json

    options: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        step, _, name = key.partition(".")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options.setdefault(step, {})[name] = parsed
    return options


def main(argv: list[str]) -> int:
    import slicer

    if argv[:1] == ["--"]:  # what follows Slicer's own options
        argv = argv[1:]
    try:
        args = parse(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    from BrainBarriers import BrainBarriersLogic

    logic = BrainBarriersLogic()
    if logic.missingDependencies():
        if not args.install_dependencies:
            print("error: missing Python packages: " + ", ".join(logic.missingDependencies()) +
                  " (rerun with --install-dependencies)", file=sys.stderr)
            return 1
        logic.installDependencies(askConfirmation=False)
    nodes = {}
    for s in SEQUENCES:
        path = getattr(args, s)
        if path:
            if not os.path.exists(path):
                print(f"error: {path}: does not exist", file=sys.stderr)
                return 2
            nodes[s] = slicer.util.loadVolume(path)
    result = logic.run(**nodes, steps=args.steps.split(",") if args.steps else None,
                       device=args.device, coregister=args.coregister,
                       options=parse_options(args.options),
                       timeout=args.timeout, waitForCompletion=True)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for key, node in result.items():
        if node is None:
            continue
        # a sequence's move onto the reference is a linear transform: ITK's HDF5 transform file
        ext = {"segmentation": ".seg.nrrd"}.get(key, ".h5" if key.endswith("_to_reference") else ".nrrd")
        path = os.path.join(args.out, key + ext)
        if not slicer.util.saveNode(node, path):
            print(f"error: could not write {path}", file=sys.stderr)
            return 1
        written.append(path)
    print("written: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    import slicer

    try:
        code = main(sys.argv[1:])
    except Exception:
        traceback.print_exc()
        code = 1
    slicer.util.exit(code)
