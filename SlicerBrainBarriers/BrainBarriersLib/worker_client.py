"""Worker client: runs ``python -m brainbarriers.worker`` as a separate process and reads its
JSON-lines progress without blocking. Needs neither Qt nor Slicer, so it is tested as a real
subprocess in pytest; the Slicer module polls it from a QTimer, scripts call ``wait()``.

- Two reader threads: stdout lines (the protocol) go into a queue, stderr lines into the log (a
  bounded tail in memory, and the whole log in ``log_path`` when given).
- ``poll()`` returns the protocol events received since the last call and, once, a final
  ``{"event": "finished", ...}`` event with the state ("done", "failed", "cancelled", "timeout").
- ``cancel()`` ends the whole process tree: in Slicer the command is the ``PythonSlicer`` launcher,
  and killing the launcher alone leaves the real interpreter running. SIGTERM first (the pipeline
  stops at its next safe point and writes nothing half-done), SIGKILL for what is left after
  ``grace`` seconds; everything is gone within ``grace`` + 1 s.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

try:  # Slicer's Python may lack psutil; the fallback uses the process group (POSIX) or taskkill.
    import psutil
except ImportError:  # pragma: no cover - psutil is installed with the extension's requirements
    psutil = None

RUNNING, DONE, FAILED, CANCELLED, TIMEOUT = "running", "done", "failed", "cancelled", "timeout"
FINISHED = (DONE, FAILED, CANCELLED, TIMEOUT)


def python_command() -> list[str]:
    """The interpreter to start the worker with: ``PythonSlicer`` inside Slicer (a launcher that
    sets up Slicer's environment), this interpreter elsewhere."""
    import shutil

    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        launcher = shutil.which("PythonSlicer")
        if launcher:
            return [launcher]
    return [sys.executable]


def worker_command(python: Sequence[str], inputs: Mapping[str, str | Path], out: str | Path, *,
                   steps: Sequence[str] | None = None, device: str = "auto",
                   options: Mapping[str, Mapping[str, object]] | None = None,
                   reference: str | None = None, coregister: str = "auto") -> list[str]:
    """The command line of one worker run (inputs: sequence -> file)."""
    command = [*python, "-m", "brainbarriers.worker", "--out", str(out), "--device", device,
               "--coregister", coregister]
    for sequence, path in inputs.items():
        command += [f"--{sequence}", str(path)]
    if reference:
        command += ["--reference", reference]
    if steps:
        command += ["--steps", ",".join(steps)]
    for step, values in (options or {}).items():
        for key, value in values.items():
            command += ["--set", f"{step}.{key}={json.dumps(value)}"]
    return command


def _wait_until_ended(procs: list, timeout: float) -> list:
    """Wait up to ``timeout`` s for ``procs`` to end; returns those still running. A zombie has
    ended: an orphan's zombie waits for PID 1 to reap it (psutil.wait_procs would wait on it)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def kill_process_tree(pid: int, grace: float = 0.5) -> list[int]:
    """Terminate ``pid`` and all its descendants; kill what is still alive after ``grace`` s.
    Returns the PIDs that were signalled."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return []
        # Collect the children before signalling: a launcher that dies first orphans them.
        procs = root.children(recursive=True) + [root]
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        alive = _wait_until_ended(procs, grace)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _wait_until_ended(alive, 1.0)
        return [p.pid for p in procs]
    if os.name == "nt":  # pragma: no cover
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        return [pid]
    try:  # the worker was started in its own session, so its group is the whole tree
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            os.killpg(pid, 0)
            time.sleep(0.05)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return [pid]


class WorkerClient:
    """One worker process: start, poll, cancel, wait."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, timeout: float | None = None,
                 log_path: str | Path | None = None, log_lines: int = 400):
        self.command = list(command)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else None
        self.state = "idle"
        self.returncode: int | None = None
        self.result: dict | None = None  # the "done" event
        self.error: dict | None = None  # {"kind", "message", "log"}
        self.last_error_event: dict | None = None
        self._events: queue.Queue = queue.Queue()
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._log_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._process: subprocess.Popen | None = None
        self._started = 0.0
        self._final_sent = False
        self._requested: str | None = None  # "cancelled" or "timeout", set before killing

    # ------------------------------------------------------------------------------ control
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> WorkerClient:
        if self._process is not None:
            raise RuntimeError("this worker was started already")
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover - no console window, own process group
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000
        else:
            kwargs["start_new_session"] = True  # a group of its own: Ctrl+C in Slicer's terminal
        self._log_file = open(self.log_path, "w", encoding="utf-8") if self.log_path else None
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **kwargs)
        self._started = time.monotonic()
        self.state = RUNNING
        for target, stream in ((self._read_stdout, self._process.stdout),
                               (self._read_stderr, self._process.stderr)):
            thread = threading.Thread(target=target, args=(stream,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def cancel(self, grace: float = 0.5) -> None:
        """End the run and its whole process tree (within ``grace`` + 1 s)."""
        if self._process is None or self.state in FINISHED:
            return
        self._requested = self._requested or CANCELLED
        kill_process_tree(self._process.pid, grace=grace)
        try:
            self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill_process_tree killed it
            self._process.kill()

    def poll(self) -> list[dict]:
        """Events received since the last call (never blocks). The last one of a run is
        ``{"event": "finished", "state": ..., "returncode": ..., "error": ..., "result": ...}``."""
        events: list[dict] = []
        if self._process is None:
            return events
        if (self.state == RUNNING and self.timeout is not None
                and time.monotonic() - self._started > self.timeout):
            self._requested = TIMEOUT
            self.cancel()
        exited = self._process.poll() is not None
        if exited:  # drain everything the readers will still deliver
            for thread in self._threads:
                thread.join(timeout=2.0)
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            if event.get("event") == "done":
                self.result = event
            elif event.get("event") == "error":
                self.last_error_event = event
        if exited and not self._final_sent:
            self._finish()
            events.append(self._final_event())
        return events

    def wait(self, on_event: Callable[[dict], None] | None = None,
             interval: float = 0.1) -> str:
        """Block until the run ends (console and batch use); returns the final state."""
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self._final_sent:
                return self.state
            time.sleep(interval)

    def log_tail(self, lines: int = 40) -> str:
        with self._log_lock:
            return "\n".join(list(self._log)[-lines:])

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    # ------------------------------------------------------------------------------ internals
    def _read_stdout(self, stream) -> None:
        for line in stream:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                event = json.loads(text)
                if not isinstance(event, dict) or "event" not in event:
                    raise ValueError
            except ValueError:  # not protocol: keep it with the log
                self._append_log(text)
                continue
            self._events.put(event)
        stream.close()

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self._append_log(line.rstrip("\n"))
        stream.close()

    def _append_log(self, text: str) -> None:
        with self._log_lock:
            self._log.append(text)
            if self._log_file is not None:
                self._log_file.write(text + "\n")
                self._log_file.flush()

    def _finish(self) -> None:
        self._final_sent = True
        self.returncode = self._process.returncode
        if self._log_file is not None:
            self._log_file.close()
        if self._requested == TIMEOUT:
            self.state = TIMEOUT
            self.error = {"kind": "timeout",
                          "message": f"the run took longer than {self.timeout:g} s and was stopped"}
        elif self._requested == CANCELLED:
            self.state = CANCELLED
            self.error = {"kind": "cancelled", "message": "cancelled"}
        elif self.returncode == 0 and self.result is not None:
            self.state = DONE
        else:
            self.state = FAILED
            if self.last_error_event is not None:
                kind = self.last_error_event.get("kind", "internal")
                message = self.last_error_event.get("message", "")
                if kind == "cancelled":
                    self.state = CANCELLED
            elif self.returncode == 0:
                kind, message = "internal", "the worker ended without a result"
            else:
                kind = "crash"
                how = (f"was killed by signal {-self.returncode}" if self.returncode < 0
                       else f"exited with code {self.returncode}")
                message = f"the worker {how} without reporting an error"
            self.error = {"kind": kind, "message": message}
        if self.error is not None:
            self.error["log"] = self.log_tail()
            self.error["returncode"] = self.returncode

    def _final_event(self) -> dict:
        return {"event": "finished", "state": self.state, "returncode": self.returncode,
                "error": self.error, "result": self.result, "seconds": round(self.elapsed, 3)}
