"""One study's job for the DICOM node, run in a child process of the node (so that the pipeline's
memory, threads and any crash stay out of the Storage SCP): the pipeline on the study's series, then
the RT Structure Set and SEG, written under the results folder.

    python -m brainbarriers.dicom.job --input t1=DIR ... --out RUN_DIR --results DIR [--steps ...]
    python -m brainbarriers.dicom.job --check --steps skullstrip,tumor

Prints one JSON line on success ({"files": [...], "segments": [...]}); exits 2 with one line on
stderr naming the file and the problem for bad input, 130 when cancelled (SIGTERM), at a safe point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import Cancelled, InputError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m brainbarriers.dicom.job")
    p.add_argument("--input", action="append", default=[], metavar="SEQUENCE=DIR")
    p.add_argument("--out", metavar="RUN_DIR")
    p.add_argument("--results", metavar="DIR")
    p.add_argument("--steps", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", default="{}", help="JSON {step: {option: value}}")
    p.add_argument("--formats", default="rtstruct,seg")
    p.add_argument("--check", action="store_true", help="only check the step names")
    return p


def run_job(args: argparse.Namespace) -> dict:
    from ..pipeline import CancelToken, PipelineRun, plan
    from ..progress import cancel_on_signals
    from .export import export_run

    steps = plan(args.steps.split(",") if args.steps else None)
    if args.check:
        return {"steps": [s.name for s in steps]}
    inputs = {}
    for item in args.input:
        sequence, _, folder = item.partition("=")
        inputs[sequence] = Path(folder)
    token = CancelToken()
    restore = cancel_on_signals(token)
    try:
        PipelineRun(inputs, Path(args.out), steps, device=args.device,
                    options=json.loads(args.options), cancel=token).run()
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        files, segments = [], []
        for fmt in args.formats.split(","):
            token.check()
            result = export_run(args.out, fmt, results / f"{fmt}.dcm")
            files.append(str(result.path))
            segments = result.segments
    finally:
        restore()
    return {"files": files, "segments": segments}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(json.dumps(run_job(args)), flush=True)
        return 0
    except InputError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
