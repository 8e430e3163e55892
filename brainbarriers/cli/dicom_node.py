"""``brainbarriers dicom-node``: receive studies by DICOM, send back RT structures and SEG."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def _node(args: argparse.Namespace) -> int:
    from ..dicom.node import DicomNode, check_steps, load_config
    from ..errors import InputError

    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        raise InputError(None, "dicom-node needs pynetdicom: pip install 'brainbarriers[dicom]'") from None
    config = load_config(args.config)
    if args.check:
        check_steps(config)
        print(f"{args.config}: valid; would listen as {config.ae_title} on {config.bind}:"
              f"{config.port} and send to {config.destination.describe()}")
        return 0
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = DicomNode(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "dicom-node", help="DICOM node: receive studies, send back RT Structure Set and SEG",
        description="Run a DICOM Storage SCP configured by a JSON file (AE title, port, allowed "
        "calling AE titles, spool folder, quiet time, destination, pipeline steps, series rules). "
        "Each study received is run through the pipeline once it has been quiet for "
        "quiet_seconds, and its RT Structure Set and SEG are sent by C-STORE to the destination. "
        "Jobs survive a restart; one log line per study in <spool>/node.log. Stop with SIGTERM.")
    p.add_argument("--config", required=True, metavar="FILE", help="the node's JSON configuration")
    p.add_argument("--check", action="store_true", help="check the configuration and exit")
    p.set_defaults(func=_node)
