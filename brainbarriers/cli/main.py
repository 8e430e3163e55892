"""The ``brainbarriers`` command.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)``, which
registers the subcommand and sets ``func`` (called with the parsed args; returns an exit code).
Bad input (InputError) prints one line naming the file and the problem and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import Cancelled, InputError

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = ["run", "cohort", "demo", "skullstrip", "train", "supervoxels", "ctv", "export", "dicom-node", "models", "evaluate"]

EXIT_INPUT = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainbarriers",
        description="Brain mask, tumour sub-regions, anatomical barriers, supervoxels and a "
        "barrier-respecting CTV from brain MRI.",
    )
    parser.add_argument("--version", action="version", version=f"brainbarriers {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"brainbarriers: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except Cancelled:
        print("brainbarriers: cancelled; finished outputs were kept, nothing half-written",
              file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
