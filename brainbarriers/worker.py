"""``python -m brainbarriers.worker``: the pipeline as a background process for the Slicer module.

Same arguments as ``brainbarriers run`` (inputs, ``--out``, ``--steps``, ``--device``, ``--set``),
but progress always goes to stdout as JSON lines (the protocol in ``brainbarriers.progress``), and
everything else, Python prints and C libraries writing to file descriptor 1 included, goes to
stderr: a client reads stdout line by line and keeps stderr as the log. The last line on stdout is a
``done`` or an ``error`` event (none only when the process is killed).

Exit codes: 0 done, 2 bad input, 130 cancelled (SIGTERM/SIGINT at a safe point), 1 internal error.
A run that asks for ``--device cuda`` with ``CUDA_VISIBLE_DEVICES=-1`` (the client's forced CPU run)
is an input error, as on the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli.main import EXIT_CANCELLED, EXIT_INPUT
from .errors import Cancelled, InputError

EXIT_OK = 0
EXIT_INTERNAL = 1


def build_parser() -> argparse.ArgumentParser:
    from .cli.run import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="python -m brainbarriers.worker",
        description="Run the pipeline on one case, reporting progress as JSON lines on stdout "
        "(for the Slicer module and other programs); the log goes to stderr.",
    )
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder")
    return parser


def _protocol_stream():
    """A private copy of stdout for the protocol; fd 1 and sys.stdout then point at stderr."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json_progress = True
    protocol = _protocol_stream()

    from .cli.run import execute
    from .pipeline import SEQUENCES
    from .progress import JsonLinesReporter

    inputs = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s)}
    try:
        # execute() writes the protocol's error event itself before re-raising.
        return execute(inputs, Path(args.out), args, reporter=JsonLinesReporter(protocol))
    except InputError as e:
        print(f"brainbarriers.worker: input error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except Cancelled:
        print("brainbarriers.worker: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception:
        import traceback

        traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        protocol.flush()


if __name__ == "__main__":
    sys.exit(main())
