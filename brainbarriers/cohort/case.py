"""One case of a cohort, as a Dask worker runs it: the pipeline into the case's run folder, then
the case's summary row (status, timings, warnings, volumes in ml, Dice/HD95 against a truth)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import Cancelled, InputError
from ..pipeline.core import FINAL_OUTPUTS, MANIFEST, CancelToken, PipelineRun, ProgressEvent, Step
from .discover import Case

PROGRESS_TOPIC = "brainbarriers-cohort"
# The steps that run a network on the run's device (the others are CPU work).
NETWORK_STEPS = frozenset({"skullstrip", "tumor", "barriers"})


def run_case(case: Case, out: str, steps: list[Step], options: dict[str, dict],
             reference: str | None = None, device: str = "auto",
             cancel_event: str | None = None, topic: str = PROGRESS_TOPIC,
             gpu_turns: bool = False, coregister: str = "auto") -> dict:
    """Run ``steps`` on ``case`` into ``out``; never raises for the case's own failures (bad input,
    a crash in a step): they are the row's ``status`` and ``error``. A killed worker is Dask's to
    retry. ``cancel_event``: the name of a ``distributed.Event`` that, once set, stops the run at
    its next safe point (for clusters whose workers outlive the client). ``topic``: where the
    progress goes (one per cohort run, so that runs sharing a scheduler do not mix).
    ``gpu_turns``: the network steps take turns on the worker's GPU (``take_gpu_turns``)."""
    started = time.time()
    row: dict = {"case": case.id, "layout": case.layout, "status": "failed", "error": "",
                 "out": out, "worker": _worker_address()}
    token = CancelToken()
    stop_watch = _watch_cancel(cancel_event, token)
    if token.cancelled:  # queued when the cohort was cancelled: touch nothing
        stop_watch()
        return {**row, "status": "cancelled", "seconds": 0.0}
    ran = False  # the run folder's manifest is this attempt's only once the run started
    try:
        if case.problems:
            raise InputError(None, "; ".join(case.problems))
        if gpu_turns:
            steps = take_gpu_turns(steps)
        run = PipelineRun(case.inputs, out, steps, reference=reference, coregister=coregister,
                          device=device, options=options, on_event=_forward(case.id, topic),
                          cancel=token)
        ran = True
        run.run()
        row["status"] = "done"
    except InputError as e:
        row["error"] = f"input: {e}"
    except Cancelled:
        row["status"] = "cancelled"
    except Exception as e:  # a step's crash is this case's row, not the cohort's end
        row["error"] = f"{type(e).__name__}: {e} | {_last_frames(e)}"
    finally:
        stop_watch()
    row["seconds"] = round(time.time() - started, 3)
    row["peak_rss_mb"] = _peak_rss_mb()
    manifest = _read_manifest(Path(out)) if ran else {}
    row.update(manifest_columns(manifest))
    if row["status"] == "done":
        try:
            row.update(volume_columns(Path(out), manifest))
            if case.truth:
                row.update(score_columns(Path(out), case.truth))
        except Exception as e:  # the outputs are there; a summary that cannot be read is noted
            row["error"] = f"summary: {type(e).__name__}: {e}"
    return row


def gpu_name() -> str:
    """One name per GPU: the host and the GPUs its process sees (workers pinned to different GPUs
    with CUDA_VISIBLE_DEVICES take turns on their own one)."""
    return (f"brainbarriers-gpu-{socket.gethostname()}-"
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}")


def take_gpu_turns(steps: list[Step]) -> list[Step]:
    """The network steps wrapped to hold a lease of a cluster-wide ``distributed.Semaphore`` (one
    lease per GPU) while they run: on a GPU machine they queue for the GPU while the CPU steps of
    other cases go on. The step keys do not change (a step's key does not hold its function)."""
    from distributed import Semaphore

    gpu = Semaphore(max_leases=1, name=gpu_name())

    def wrap(run: Callable) -> Callable:
        def run_on_gpu(ctx):
            while not gpu.acquire(timeout=1.0):  # waiting, yet still cancellable
                ctx.check_cancel()
            try:
                return run(ctx)
            finally:
                gpu.release()
        return run_on_gpu

    return [dataclasses.replace(s, run=wrap(s.run)) if s.name in NETWORK_STEPS else s
            for s in steps]


def manifest_columns(manifest: dict) -> dict:
    row: dict = {"created": manifest.get("created", "")}
    for step in manifest.get("steps", []):
        row[f"seconds_{step['name']}"] = step.get("seconds")
    warnings = manifest.get("warnings", [])
    row["n_warnings"] = len(warnings)
    row["warnings"] = " | ".join(f"{w.get('step') or 'run'}: {w['message']}" for w in warnings)
    return row


def volume_columns(out: Path, manifest: dict) -> dict:
    """Volume in ml of every structure written (a label map's values, by their segment keys), and
    of the BraTS regions WT, TC and ET; the supervoxel maps give their count instead."""
    from ..io import load_volume
    from ..labels import SEGMENTS_BY_OUTPUT
    from ..metrics import BRATS_REGIONS, brats2021_labels

    row: dict = {}
    for product, filename in manifest.get("outputs", {}).items():
        volume = load_volume(out / filename, allow_empty=True)
        array = np.asarray(volume.array)
        ml = float(np.prod(volume.spacing)) / 1000.0
        if product in ("supervoxels", "supervoxels_merged"):
            row[f"n_{product}"] = int(np.count_nonzero(np.unique(array)))
            continue
        for value, spec in SEGMENTS_BY_OUTPUT.get(product, {}).items():
            row[f"ml_{spec.key}"] = round(int(np.count_nonzero(array == value)) * ml, 3)
        if product == "tumor":
            labels = brats2021_labels(array)
            for region, values in BRATS_REGIONS.items():
                row[f"ml_{region}"] = round(int(np.isin(labels, values).sum()) * ml, 3)
    return row


def score_columns(out: Path, truth: str) -> dict:
    """Dice and HD95 of the tumour regions against the truth beside the inputs (resampled, nearest
    neighbour, onto the output's grid when it lies on another)."""
    from ..geometry import resample_to
    from ..io import load_volume
    from ..metrics import brats_scores

    path = out / FINAL_OUTPUTS["tumor"]
    if not path.exists():
        return {}
    pred = load_volume(path, allow_empty=True)
    ref = load_volume(truth, allow_empty=True)
    if not ref.grid.same_as(pred.grid):
        ref = resample_to(ref, pred.grid, label=True)
    row = {}
    for region, s in brats_scores(pred, ref).items():
        row[f"dice_{region}"] = s["dice"]
        row[f"hd95_{region}"] = s["hd95"]
    return row


def _read_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _last_frames(e: BaseException, n: int = 3) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-n:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _peak_rss_mb() -> float | None:
    """The worker process's peak memory so far (its lifetime's, so at least this case's)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes vs KiB


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # called outside a worker (tests, a plain loop)
        return ""


def _forward(case_id: str, topic: str) -> Callable[[ProgressEvent], None]:
    """Step starts and ends, and warnings, sent to the client (``Client.subscribe_topic``); the
    fine-grained progress stays in the worker, to keep the scheduler's traffic small."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda event: None

    def send(event: ProgressEvent) -> None:
        if event.event in ("step", "warning"):
            worker.log_event(topic, {"case": case_id, "event": event.event,
                                              "step": event.step, "message": event.message,
                                              **event.data})
    return send


def _watch_cancel(name: str | None, token: CancelToken) -> Callable[[], None]:
    """Poll the named ``distributed.Event`` in a thread; cancel ``token`` once it is set."""
    if not name:
        return lambda: None
    from distributed import Event

    event, done = Event(name), threading.Event()
    if event.is_set():
        token.cancel()
        return lambda: None

    def watch() -> None:
        while not done.is_set():
            try:
                if event.wait(timeout=1.0):
                    token.cancel()
                    return
            except Exception:  # the scheduler went away: the nanny stops this worker anyway
                return

    # Not joined when the case ends: the watcher notices ``done`` within a second by itself.
    threading.Thread(target=watch, daemon=True).start()
    return done.set
