"""The extension's Python requirements: which are missing here, and the pip run that installs them.

Qt-free; the Slicer module asks the user before installing what this reports (never at import).
The install never replaces a package that is already there: every installed distribution the
requirements do not name is held at its installed version with a pip constraints file, and only
binary wheels are used (no compiler needed; the same resolution the requirements test checks).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import queue
import re
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Installed by the PyTorch extension (PyTorchUtils), never by pip from here.
TORCH = "torch"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def read_requirements(path: str | Path) -> list[str]:
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonicalize_name(match.group(1))


def is_satisfied(requirement: str) -> bool:
    try:
        installed = md.version(requirement_name(requirement))
    except md.PackageNotFoundError:
        return False
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def missing_requirements(path: str | Path) -> list[str]:
    """Requirement lines of ``path`` not satisfied here, torch left out (see ``torch_missing``)."""
    return [r for r in read_requirements(path)
            if requirement_name(r) != TORCH and not is_satisfied(r)]


def torch_requirement(path: str | Path) -> str:
    """The version specifier of the torch line (e.g. ">=2.8"), for PyTorchUtils."""
    for r in read_requirements(path):
        if requirement_name(r) == TORCH:
            return str(Requirement(r).specifier)
    return ""


def torch_missing(path: str | Path) -> bool:
    """torch absent, or older than the requirements ask for."""
    return not is_satisfied(TORCH + torch_requirement(path))


def installed_constraints(exclude: Iterable[str]) -> str:
    """``name==version`` for every installed distribution not named in ``exclude``: pip may add
    packages but not change one that is there (Slicer's own, or another extension's)."""
    skip = {canonicalize_name(n) for n in exclude}
    pins = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in skip:
            pins[canonicalize_name(name)] = dist.version
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def pip_install_command(python: Sequence[str], requirements: Sequence[str],
                        constraints_file: str | Path) -> list[str]:
    return [*python, "-m", "pip", "install", "--only-binary=:all:", "--disable-pip-version-check",
            "-c", str(constraints_file), *requirements]


class PipRun:
    """One pip process: its output read in a thread, handed out by ``poll`` (never blocks), so the
    Slicer module can show it from a QTimer while the GUI stays responsive."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None):
        self.command = list(command)
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover - no console window
            kwargs["creationflags"] = 0x08000000
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, text=True, encoding="utf-8", errors="replace",
            **kwargs)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def poll(self) -> list[str]:
        """Output lines since the last call; sets ``returncode`` once all output is read."""
        new = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.returncode = self._process.wait()
                break
            new.append(line)
        self.lines += new
        return new

    def wait(self, timeout: float | None = None) -> int:
        self._thread.join(timeout)
        self.poll()
        if self.returncode is None:
            raise TimeoutError(f"{self.command[:4]} still runs after {timeout} s")
        return self.returncode
