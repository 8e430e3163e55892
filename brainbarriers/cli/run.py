"""``brainbarriers run``: every step (or those asked for) on one case."""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

from ..errors import Cancelled, InputError
from ..pipeline import COREGISTER, SEQUENCES, CancelToken, PipelineRun, plan
from ..progress import JsonLinesReporter, TqdmReporter, cancel_on_signals


def add_run_arguments(parser: argparse.ArgumentParser, *, inputs: bool = True) -> None:
    if inputs:
        for s in SEQUENCES:
            parser.add_argument(f"--{s}", metavar="FILE",
                                help=f"{s.upper()} image (NIfTI, NRRD, MHA or a DICOM folder)")
        parser.add_argument("--reference", choices=SEQUENCES, default=None,
                            help="sequence whose grid the outputs use (default: t1ce if given)")
        parser.add_argument("--coregister", choices=COREGISTER, default="auto",
                            help="rigid co-registration of the other sequences to the reference "
                            "(mutual information): auto (default) moves a sequence when the move "
                            "found exceeds 1.5 mm or 1.5 degrees, always applies any move found, never "
                            "trusts the headers' alignment")
    parser.add_argument("--steps", default=None,
                        help="comma-separated steps to run (their dependencies are added); "
                        "default: all")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where networks run (auto: CUDA when available)")
    parser.add_argument("--set", dest="options", action="append", default=[],
                        metavar="STEP.KEY=VALUE",
                        help="a step option, e.g. tumor.tta=false (VALUE is read as JSON when it "
                        "can be); may be repeated")
    parser.add_argument("--json-progress", action="store_true",
                        help="print one JSON object per line instead of progress bars")


def parse_options(items: list[str]) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        step, dot, name = key.partition(".")
        if not sep or not dot or not step or not name:
            raise InputError(None, f"--set {item!r}: expected STEP.KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options.setdefault(step, {})[name] = parsed
    return options


def execute(inputs: dict, out: Path, args: argparse.Namespace, *, extra_options=None,
            reporter=None) -> int:
    """Run the pipeline with the reporter and cancellation the flags ask for (``reporter``: a
    JsonLinesReporter on a stream of the caller's, e.g. the worker's protocol stream)."""
    if reporter is None:
        reporter = JsonLinesReporter() if args.json_progress else TqdmReporter()
    token = CancelToken()
    restore = cancel_on_signals(token)
    try:
        steps = plan(args.steps.split(",") if args.steps else None)
        options = parse_options(args.options)
        for step, values in (extra_options or {}).items():
            options.setdefault(step, {}).update(values)
        run = PipelineRun(inputs, out, steps, reference=getattr(args, "reference", None),
                          coregister=getattr(args, "coregister", "auto"),
                          device=args.device, options=options, on_event=reporter, cancel=token)
        run.run()
        return 0
    except InputError as e:
        if args.json_progress:
            reporter.error("input", str(e))
        raise
    except Cancelled:
        if args.json_progress:
            reporter.error("cancelled", "cancelled")
        raise
    except Exception as e:
        if args.json_progress:
            reporter.error("internal", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        restore()


def _run(args: argparse.Namespace) -> int:
    inputs = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s)}
    return execute(inputs, Path(args.out), args)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the pipeline on one case",
                       description="Run the pipeline on one case. Outputs in OUT use fixed names: "
                       "brain_mask.nii.gz, tumor.nii.gz, barriers.nii.gz, supervoxels.nii.gz, "
                       "supervoxels_merged.nii.gz, ctv.nii.gz, segmentation.seg.nrrd, "
                       "manifest.json, overview.png.")
    add_run_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (created if needed)")
    p.set_defaults(func=_run)
