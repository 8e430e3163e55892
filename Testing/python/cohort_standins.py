"""Test-only cheap steps for the cohort tests (not product code). Dask's spawned workers import
this module by name: pytest's sys.path reaches them through multiprocessing's spawn."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from brainbarriers.pipeline import Step


def tumour_rule(t2: np.ndarray) -> np.ndarray:
    """The stand-in tumour step's labels: oedema above the 95th percentile, enhancing core above
    the 99th (the tests write their truths with the same rule, or a shifted one)."""
    labels = np.zeros(t2.shape, np.uint8)
    labels[t2 > np.percentile(t2, 95)] = 2
    labels[t2 > np.percentile(t2, 99)] = 4
    return labels


def _mask(ctx):
    return {"brain_mask": ctx.new_volume((ctx.get("t1").array > 0).astype(np.uint8))}


def _first_to_claim(marker: str, ctx) -> bool:
    """True for exactly one case, the first to get here (O_EXCL); it writes its pid and case."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    # Test-only peek at the run folder, so the test knows which case it was.
    os.write(fd, f"{os.getpid()} {ctx._run.out.name}".encode())
    os.close(fd)
    return True


def _tumour(ctx):
    marker = ctx.options.get("kill_once")
    if marker and _first_to_claim(marker, ctx):  # that case kills its worker, once
        os.kill(os.getpid(), signal.SIGKILL)
    hold = ctx.options.get("hold")
    if hold and _first_to_claim(hold, ctx):  # holds (until cancelled, 60 s at most) for Ctrl-C
        for _ in range(600):
            ctx.progress(0.5)  # raises Cancelled once the run is cancelled
            time.sleep(0.1)
    log = ctx.options.get("log")
    if log:  # when this step ran (it takes 0.5 s), for the GPU-turns test
        start = time.time()
        time.sleep(0.5)
        with open(log, "a") as f:
            f.write(f"{start} {time.time()}\n")
    ctx.progress(0.5)
    ctx.warn("stand-in tumour step")
    return {"tumor": ctx.new_volume(tumour_rule(ctx.get("t2").array))}


STEPS = [
    Step("skullstrip", _mask, sequences=("t1",), outputs=("brain_mask",), labels=("brain_mask",)),
    Step("tumor", _tumour, sequences=("t2",), inputs=("brain_mask",), outputs=("tumor",),
         labels=("tumor",)),
]


def marker_case(marker: Path) -> tuple[int, str]:
    pid, case = marker.read_text().split()
    return int(pid), case
