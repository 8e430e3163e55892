"""A whole cohort through Dask: one task per case, on a LocalCluster or a running cluster.

Why per case: a case's steps share its run folder and lock, and each case is minutes of work, so
the scheduler's overhead is nothing. Process workers: a case that crashes its interpreter (SIGKILL,
out of memory) takes one worker down; the nanny restarts it and the scheduler gives the case to a
worker again, up to ``distributed.scheduler.allowed-failures`` times, after which the case is a
failed row. A case that fails by itself (bad input, an exception) is a row at once: it would fail
the same way again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Cancelled, InputError
from ..io import atomic_path
from ..pipeline.core import MANIFEST, Step, check_options
from .case import PROGRESS_TOPIC, run_case
from .discover import Case
from .report import write_report

ROWS = "rows"  # OUT/rows/<case>.json: each finished case's row, read back by a rerun
TABLE = "cohort"  # OUT/cohort.csv and OUT/cohort.parquet
FIRST_COLUMNS = ["case", "status", "error", "layout", "seconds", "n_warnings"]
CANCEL_GRACE_S = 20  # how long Ctrl-C waits for running cases to stop at a safe point
# Memory to plan per case with every step on CPU: bench_cohort.py measured a 2.1 GB peak per worker
# on real 240x240x155 BraTS cases; the rest is room for larger heads. --memory-limit overrides it.
MEMORY_PER_CASE = 4 * 2**30


@dataclass
class ClusterSpec:
    scheduler: str | None = None  # address of a running scheduler; None: a LocalCluster
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int | None = None  # per worker; None: the machine's memory / workers
    retries: int = 2  # reruns of a case whose worker died under it
    gpu: bool = False  # network steps take turns on each GPU (case.take_gpu_turns)
    dashboard: str | None = None  # e.g. ":8787"; None: on a free port


@dataclass
class CohortResult:
    rows: list[dict]
    table: Path
    parquet: Path | None
    counts: dict[str, int] = field(default_factory=dict)


def local_cluster_size(n_cases: int, spec: ClusterSpec) -> tuple[int, int, int]:
    """(workers, threads per worker, threads each case's libraries may use) for this machine:
    as many one-case workers as cores and memory allow, never more than the cases."""
    import psutil

    cores = os.cpu_count() or 1
    if spec.workers:
        workers = spec.workers
    else:
        by_memory = max(1, psutil.virtual_memory().total // MEMORY_PER_CASE)
        workers = max(1, min(cores, by_memory, n_cases))
    threads = max(1, spec.threads_per_worker)
    return workers, threads, max(1, cores // (workers * threads))


def finished_row(case: Case, out: Path, steps: list[Step], options: dict[str, dict]) -> dict | None:
    """The saved row of a case whose run folder holds a finished run of these steps, options and
    inputs (by path, and inputs not newer than the run); None if it must run."""
    try:
        manifest = json.loads((out / case.id / MANIFEST).read_text())
        row = json.loads((out / ROWS / f"{case.id}.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("status") != "done" or row.get("created") != manifest.get("created"):
        return None
    done = [(s["name"], s["version"], s.get("options", {})) for s in manifest.get("steps", [])]
    if done != [(s.name, s.version, options.get(s.name, {})) for s in steps]:
        return None
    inputs = {k: v["path"] for k, v in manifest.get("inputs", {}).items()}
    if inputs != case.inputs:
        return None
    made = (out / case.id / MANIFEST).stat().st_mtime
    if any(Path(p).stat().st_mtime > made for p in case.inputs.values()):
        return None
    return row


def run_cohort(cases: list[Case], out: str | Path, steps: list[Step], *,
               options: dict[str, dict] | None = None, reference: str | None = None,
               coregister: str = "auto", device: str = "auto", cluster: ClusterSpec | None = None,
               on_event: Callable[[dict], None] | None = None) -> CohortResult:
    """Run every case not already finished; write the table (also when cancelled: Ctrl-C cancels
    the tasks, closes the cluster, writes what is known and raises Cancelled)."""
    from distributed import Client, Event, as_completed, wait

    options = options or {}
    for step in steps:  # a misspelt --set fails here once, not in every case's row
        check_options(step, options.get(step.name, {}))
    out = Path(out)
    (out / ROWS).mkdir(parents=True, exist_ok=True)
    cluster = cluster or ClusterSpec()
    emit = on_event or (lambda event: None)
    rows: dict[str, dict] = {}
    todo = []
    for case in cases:
        row = finished_row(case, out, steps, options)
        if row is None:
            todo.append(case)
        else:
            rows[case.id] = {**row, "ran": False}
    emit({"event": "start", "cases": len(cases), "to_run": len(todo), "out": str(out)})
    for case_id, row in rows.items():
        emit({"event": "case", "case": case_id, "status": row["status"], "skipped": True})

    def record(case: Case, row: dict) -> None:
        rows[case.id] = {**row, "ran": True}
        if row["status"] == "done":
            _save_row(out, row)
        emit({"event": "case", "case": case.id, "status": row["status"], "error": row["error"],
              "seconds": row.get("seconds")})

    local = None
    client = None
    futures: dict = {}
    cancel_name = f"brainbarriers-cancel-{uuid.uuid4().hex}"
    interrupted = False
    try:
        if todo:
            if cluster.scheduler:
                try:
                    client = Client(cluster.scheduler)
                except OSError as e:
                    raise InputError(None, f"--scheduler {cluster.scheduler}: {e}") from None
            else:
                local = _local_cluster(len(todo), cluster)
                client = Client(local)
            topic = f"{PROGRESS_TOPIC}-{uuid.uuid4().hex}"
            client.subscribe_topic(topic, lambda item: emit(item[1]))
            futures = {
                client.submit(run_case, case, str(out / case.id), steps, options, reference,
                              device, cancel_name, topic, cluster.gpu, coregister=coregister, pure=False,
                              key=f"case-{case.id}-{uuid.uuid4().hex[:8]}"): case
                for case in todo
            }
            for future in as_completed(futures):
                record(futures[future], _result(future, futures[future], out))
    except KeyboardInterrupt:
        interrupted = True
        if client is not None and futures:
            # Running cases stop at their next safe point and say so in their manifest (workers
            # of a --scheduler cluster would otherwise go on); queued ones return at once.
            with contextlib.suppress(Exception):
                Event(cancel_name, client=client).set()
                wait(list(futures), timeout=CANCEL_GRACE_S)
            for future, case in futures.items():
                if case.id not in rows and future.status == "finished":
                    record(case, future.result())
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
    finally:
        if client is not None:
            client.close()
        if local is not None:
            local.close()
        unfinished = "cancelled" if interrupted else "not run"
        ordered = [rows.get(c.id) or {"case": c.id, "layout": c.layout, "status": unfinished,
                                      "error": ""} for c in cases]
        table, parquet = write_table(ordered, out)
        report = write_report(ordered, out)
    counts: dict[str, int] = {}
    for row in ordered:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    emit({"event": "done", "counts": counts, "table": str(table), "report": str(report)})
    if interrupted:
        raise Cancelled("cohort cancelled; finished cases are kept, a rerun picks up")
    return CohortResult(ordered, table, parquet, counts)


def _local_cluster(n_cases: int, spec: ClusterSpec):
    import dask
    import psutil
    from distributed import LocalCluster

    workers, threads, lib_threads = local_cluster_size(n_cases, spec)
    memory = spec.memory_limit or psutil.virtual_memory().total // workers
    env = {v: str(lib_threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                         "OPENBLAS_NUM_THREADS")}
    # The scheduler of a LocalCluster lives in this process: the setting reaches it here.
    with dask.config.set({"distributed.scheduler.allowed-failures": spec.retries}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                            memory_limit=memory, env=env,
                            dashboard_address=spec.dashboard or ":0",  # :0, a free port
                            silence_logs=40)


def _result(future, case: Case, out: Path) -> dict:
    """The case's row; a task that Dask itself gave up on (its workers died) is a failed row."""
    try:
        return future.result()
    except Exception as e:
        from distributed import KilledWorker

        if isinstance(e, KilledWorker):
            error = ("worker died running this case, every time it was tried (out of memory? "
                     "see the worker logs)")
        else:
            error = f"{type(e).__name__}: {e}"
        return {"case": case.id, "layout": case.layout, "status": "failed", "error": error,
                "out": str(out / case.id)}


def _save_row(out: Path, row: dict) -> None:
    with atomic_path(out / ROWS / f"{row['case']}.json") as tmp:
        tmp.write_text(json.dumps(row, indent=1))


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path | None]:
    """``cohort.csv`` (and ``cohort.parquet`` when pyarrow is installed): one row per case, the
    union of the rows' columns, the usual ones first."""
    columns = [c for c in FIRST_COLUMNS if any(c in r for r in rows)]
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = out / f"{TABLE}.csv"
    with atomic_path(table) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return table, None
    parquet = out / f"{TABLE}.parquet"
    data = {c: [r.get(c) for r in rows] for c in columns}
    with atomic_path(parquet) as tmp:
        pq.write_table(pa.table(data), str(tmp))
    return table, parquet
