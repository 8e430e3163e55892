"""``brainbarriers cohort DATA --out OUT``: every case of a cohort, through Dask."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from ..errors import InputError
from ..pipeline import COREGISTER
from .run import add_run_arguments, parse_options


class CohortProgress:
    """One bar over the cases; its postfix names the step each running case is in."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="cases", unit="case", file=sys.stderr)
        self._running: dict[str, str] = {}
        self._finished: set[str] = set()  # a worker's late step event must not bring one back
        self._lock = threading.Lock()  # events come from the client's thread too

    def __call__(self, event: dict) -> None:
        with self._lock:
            kind = event.get("event")
            if kind == "case":
                self._running.pop(event["case"], None)
                self._finished.add(event["case"])
                self._bar.update(1)
                if event["status"] != "done":
                    self._bar.write(f"{event['case']}: {event['status']} {event.get('error', '')}",
                                    file=sys.stderr)
            elif (kind == "step" and event.get("status") == "running"
                  and event["case"] not in self._finished):
                self._running[event["case"]] = event["step"]
            elif kind == "warning":
                self._bar.write(f"{event['case']}: warning: {event['message']}", file=sys.stderr)
            elif kind == "done":
                self._bar.close()
                counts = ", ".join(f"{n} {s}" for s, n in event["counts"].items())
                print(f"{counts}; table: {event['table']}, report: {event['report']}",
                      file=sys.stderr)
                return
            if self._running:
                shown = list(self._running.items())[:4]
                self._bar.set_postfix_str(" ".join(f"{c}:{s}" for c, s in shown), refresh=True)


_STDOUT = threading.Lock()  # worker events arrive on the client's thread, case ends on ours


def json_lines(event: dict) -> None:
    with _STDOUT:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def _run(args: argparse.Namespace) -> int:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(None, "brainbarriers cohort needs Dask: "
                         "pip install 'brainbarriers[cohort]'") from None
    from ..cohort import ClusterSpec, find_cohort, run_cohort
    from ..pipeline import plan

    cases = find_cohort(args.data)
    steps = plan(args.steps.split(",") if args.steps else None)
    options = parse_options(args.options)
    spec = ClusterSpec(scheduler=args.scheduler, workers=args.workers,
                       threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                       retries=args.retries, gpu=args.gpu, dashboard=args.dashboard)
    report = json_lines if args.json_progress else CohortProgress(len(cases))
    result = run_cohort(cases, args.out, steps, options=options, reference=args.reference,
                        coregister=args.coregister,
                        device=args.device, cluster=spec, on_event=report)
    return 1 if result.counts.get("failed") else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cohort", help="run the pipeline on every case of a cohort (Dask)",
        description="Find the cases in DATA (BraTS 2018/2021/2023 folders, a BIDS data set, or a "
        "CSV with columns id,t1,t1ce,t2,flair[,ct][,seg]) and run each into OUT/<case>/ (the "
        "run folder of `brainbarriers run`) on a Dask cluster. OUT/cohort.csv (and .parquet) "
        "holds one row per case: status, error, timings, warnings, volumes in ml, and Dice/HD95 "
        "when a truth lies beside the inputs. A rerun skips finished cases. Exit code 1 when a "
        "case failed.")
    p.add_argument("data", metavar="DATA", help="folder of cases, or a CSV naming each case's files")
    p.add_argument("--out", required=True, metavar="DIR", help="cohort folder (created if needed)")
    p.add_argument("--reference", choices=("t1", "t1ce", "t2", "flair", "ct"), default=None,
                   help="sequence whose grid each case's outputs use (default: t1ce if given)")
    p.add_argument("--coregister", choices=COREGISTER, default="auto",
                   help="rigid co-registration of each case's sequences to its reference (as in "
                   "`brainbarriers run`)")
    add_run_arguments(p, inputs=False)
    dask = p.add_argument_group("Dask")
    dask.add_argument("--scheduler", metavar="ADDRESS",
                      help="a running Dask scheduler (tcp://host:8786); default: a LocalCluster")
    dask.add_argument("--workers", type=int, default=None,
                      help="LocalCluster worker processes (default: from the cores and memory, "
                      "one case each)")
    dask.add_argument("--threads-per-worker", type=int, default=1,
                      help="cases each LocalCluster worker runs at once (default 1)")
    dask.add_argument("--memory-limit", default=None, metavar="SIZE",
                      help="memory per LocalCluster worker, e.g. 8GB (default: memory / workers); "
                      "a worker past 95%% is restarted and its case retried")
    dask.add_argument("--retries", type=int, default=2,
                      help="times a case is retried after its worker died (default 2)")
    dask.add_argument("--gpu", action="store_true",
                      help="the network steps (skullstrip, tumor, barriers) take turns on each "
                      "GPU (one at a time per host and CUDA_VISIBLE_DEVICES) while the other "
                      "cases' CPU steps go on")
    dask.add_argument("--dashboard", default=None, metavar=":PORT",
                      help="serve the LocalCluster's Dask dashboard, e.g. :8787")
    p.set_defaults(func=_run)
