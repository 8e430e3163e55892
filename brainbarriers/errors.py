"""Errors the user can act on. The CLI prints them on one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: names the file (or folder) and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class Cancelled(Exception):
    """The run was cancelled at a safe point; nothing half-written was left."""
