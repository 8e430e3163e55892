"""Which of the extension's pinned Python requirements are missing from this interpreter.

Qt-free; the Slicer module asks the user before installing what this reports (never at import).
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

# Packages Slicer ships (or the PyTorch extension installs): never reinstall them from here.
SKIP = {"numpy", "simpleitk", "torch", "requests"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def read_requirements(path: str | Path) -> list[str]:
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1).lower().replace("_", "-")


def is_satisfied(requirement: str) -> bool:
    name = requirement_name(requirement)
    try:
        installed = md.version(name)
    except md.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - without packaging, presence is all we can check
        return True
    return Requirement(requirement).specifier.contains(installed, prereleases=True)


def missing_requirements(path: str | Path) -> list[str]:
    """Requirement lines of ``path`` not satisfied here (Slicer's own packages skipped)."""
    return [r for r in read_requirements(path)
            if requirement_name(r) not in SKIP and not is_satisfied(r)]


def torch_available() -> bool:
    try:
        md.version("torch")
    except md.PackageNotFoundError:
        return False
    return True
