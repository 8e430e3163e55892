"""Progress reporters: tqdm bars for people, JSON lines for programs (the Slicer worker protocol).

JSON-lines protocol, one object per line on stdout:
  {"event": "start", "steps": [...], "out": DIR, "device": "cpu"}
  {"event": "step", "step": NAME, "status": "running"|"skipped"|"done", "fraction": 0..1, ...}
  {"event": "progress", "step": NAME, "fraction": 0..1, "message": TEXT}
  {"event": "warning", "step": NAME|null, "message": TEXT}
  {"event": "done", "outputs": {product: path}, "manifest": path}
  {"event": "error", "kind": "input"|"cancelled"|"internal", "message": TEXT}
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable

from .pipeline.core import CancelToken, ProgressEvent


class JsonLinesReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, event: ProgressEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()

    def error(self, kind: str, message: str) -> None:
        self.stream.write(json.dumps({"event": "error", "kind": kind, "message": message}) + "\n")
        self.stream.flush()


class TqdmReporter:
    """One bar per step; warnings printed above the bars."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._step = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.event == "step":
            status = event.data.get("status")
            if status == "running":
                self._close()
                self._step = event.step
                self._bar = self._tqdm(total=100, desc=f"{event.step:<12}", unit="%",
                                       bar_format="{desc} {bar} {n:3.0f}% {elapsed} {postfix}",
                                       file=sys.stderr)
            elif status in ("done", "skipped"):
                if self._bar is None or self._step != event.step:
                    self._close()
                    self._bar = self._tqdm(total=100, desc=f"{event.step:<12}", file=sys.stderr,
                                           bar_format="{desc} {bar} {n:3.0f}% {postfix}")
                self._bar.n = 100
                self._bar.set_postfix_str(event.message)
                self._close()
        elif event.event == "progress" and self._bar is not None:
            self._bar.n = round(100 * (event.fraction or 0.0), 1)
            if event.message:
                self._bar.set_postfix_str(event.message[:40])
            self._bar.refresh()
        elif event.event == "warning":
            self._tqdm.write(f"warning: {event.message}", file=sys.stderr)
        elif event.event == "done":
            self._close()
            print(f"outputs in {event.data.get('manifest', '').rsplit('/', 1)[0]}", file=sys.stderr)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def cancel_on_signals(token: CancelToken) -> Callable[[], None]:
    """SIGTERM and SIGINT cancel the run at its next safe point. Returns a function that restores
    the previous handlers."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        token.cancel()

    for s in previous:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
