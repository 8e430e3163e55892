"""The worker protocol and the Qt-free worker client, as real subprocesses: progress and result,
bad input, crash, cancel (whole process tree gone within 2 s) and timeout."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))

from BrainBarriersLib.worker_client import (  # noqa: E402
    CANCELLED,
    DONE,
    FAILED,
    TIMEOUT,
    WorkerClient,
    worker_command,
)

LAUNCHER = [sys.executable, str(Path(__file__).parent / "support" / "fake_launcher.py")]
SEQS = ("t1", "t1ce", "t2", "flair")
# Cheapest first: the step the progress/result test runs, whichever exists when the test runs.
PREFERENCE = ("skullstrip", "ctv", "supervoxels", "tumor", "barriers")


def runnable_step() -> str | None:
    """A step of the current registry that can run from the four MR sequences alone."""
    from brainbarriers.pipeline import plan

    names = {s.name for s in plan(None)}
    for name in PREFERENCE:
        if name not in names:
            continue
        available = set(SEQS)
        ok = True
        for step in plan([name]):
            if not set(step.sequences) <= set(SEQS) or not set(step.inputs) <= available:
                ok = False
                break
            available |= set(step.outputs) | set(step.optional_outputs)
        if ok:
            return name
    return None


def _inputs(folder: Path) -> dict[str, Path]:
    return {s: folder / f"{s}.nii.gz" for s in SEQS}


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _wait_for_child(client: WorkerClient, timeout: float = 20.0) -> list[int]:
    """PIDs of launcher + interpreter once the interpreter exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = _tree(client.pid)
        if len(procs) >= 2:
            return [p.pid for p in procs]
        time.sleep(0.05)
    raise AssertionError("the launcher never started the interpreter")


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_worker_command_line():
    cmd = worker_command(["py"], {"t1": "/a/t1.nii.gz"}, "/out", steps=["ctv"], device="cpu",
                         options={"ctv": {"margin_mm": 15}}, reference="t1")
    assert cmd[:3] == ["py", "-m", "brainbarriers.worker"]
    assert cmd[cmd.index("--t1") + 1] == "/a/t1.nii.gz"
    assert cmd[cmd.index("--steps") + 1] == "ctv"
    assert cmd[cmd.index("--set") + 1] == "ctv.margin_mm=15"
    assert cmd[cmd.index("--device") + 1] == "cpu"


def test_bad_input_is_an_error_event_with_exit_code_2(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    step = runnable_step()
    client = WorkerClient(worker_command([sys.executable], {"t1": missing}, tmp_path / "run",
                                         steps=[step] if step else None))
    state = client.start().wait()
    assert state == FAILED
    assert client.returncode == 2
    assert client.error["kind"] == "input"
    if step:  # with a plan that can run, the missing file is what fails
        assert str(missing) in client.error["message"]
        assert "does not exist" in client.error["message"]
    # the worker's stderr is the log, and it says the same
    assert f"input error: {client.error['message']}" in client.error["log"]
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_crash_reports_exit_status_and_log(tmp_path, small_case_dir):
    """The interpreter dies (as when the OOM killer strikes): the launcher passes on the status,
    the client reports a crash with the log tail."""
    client = WorkerClient(worker_command(LAUNCHER, _inputs(small_case_dir), tmp_path / "r"))
    client.start()
    pids = _wait_for_child(client)
    os.kill(pids[-1], signal.SIGKILL)
    assert client.wait() == FAILED
    assert client.returncode != 0
    assert client.error["kind"] == "crash"
    assert "signal 9" in client.error["message"] or "code" in client.error["message"]
    assert "log" in client.error


def test_cancel_ends_the_whole_process_tree_within_2_s(tmp_path, small_case_dir):
    step = runnable_step()
    client = WorkerClient(worker_command(LAUNCHER, _inputs(small_case_dir), tmp_path / "run",
                                         steps=[step] if step else None, device="cpu"))
    client.start()
    pids = _wait_for_child(client)
    if step:  # cancel in the middle of real work
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline and not any(e.get("event") == "step" for e in seen):
            seen += client.poll()
            time.sleep(0.05)
        pids = [p.pid for p in _tree(client.pid)] or pids
    t0 = time.monotonic()
    client.cancel()
    while not _gone(pids) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    assert _gone(pids), f"processes left: {pids}"
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert client.wait() == CANCELLED
    final = client.error
    assert final["kind"] == "cancelled"
    manifest = tmp_path / "run" / "manifest.json"
    if manifest.exists():  # the pipeline stopped at a safe point, or was killed before writing
        assert '"status": "done"' not in manifest.read_text()


def test_timeout_stops_the_run(tmp_path, small_case_dir):
    client = WorkerClient(worker_command(LAUNCHER, _inputs(small_case_dir), tmp_path / "run"),
                          timeout=0.5)
    client.start()
    pids = _wait_for_child(client)
    assert client.wait(interval=0.05) == TIMEOUT
    assert client.error["kind"] == "timeout"
    assert "0.5 s" in client.error["message"]
    t0 = time.monotonic()
    while not _gone(pids) and time.monotonic() - t0 < 2:
        time.sleep(0.02)
    assert _gone(pids)


def test_progress_and_result_of_a_real_run(tmp_path, small_case_dir):
    step = runnable_step()
    if step is None:
        pytest.skip("no pipeline step can run from the MR sequences alone yet")
    client = WorkerClient(worker_command([sys.executable], _inputs(small_case_dir),
                                         tmp_path / "run", steps=[step], device="cpu"))
    events = []
    assert client.start().wait(on_event=events.append) == DONE, client.error
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["done", "finished"]
    assert step in events[0]["steps"]
    assert any(e["event"] == "step" and e.get("status") == "done" for e in events)
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["step"] == step]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    outputs = client.result["outputs"]
    assert outputs and all(Path(p).exists() for p in outputs.values())
    assert Path(client.result["manifest"]).exists()
    # stdout carried only protocol lines: nothing JSON-like ended up in the log
    assert '"event"' not in client.log_tail(400)
