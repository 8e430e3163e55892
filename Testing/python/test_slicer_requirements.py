"""The extension's requirements install in every supported Slicer (5.10, 5.12) on every platform.

Static checks against the Python packages each Slicer release ships (``../shared/slicer-python``):
shipped packages are asked for by ranges their shipped version satisfies, everything else is
pinned, torch's range is what monai needs. Network checks (marked ``network``; skipped with the
reason when PyPI cannot be reached) ask PyPI, binary wheels only, for Python 3.12 on Linux x86_64,
macOS arm64 and Windows amd64: every pinned requirement has a wheel (``pip download --no-deps``),
and the whole set resolves with its dependencies while each Slicer's shipped packages stay at their
shipped versions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SlicerBrainBarriers"))

from BrainBarriersLib.dependencies import (  # noqa: E402
    TORCH,
    read_requirements,
    requirement_name,
)

REQUIREMENTS = ROOT / "SlicerBrainBarriers" / "Resources" / "requirements.txt"
SHIPPED_DIR = ROOT.parent / "shared" / "slicer-python"
SLICER_VERSIONS = ("v5.10.0", "v5.12.3")
PLATFORMS = {  # pip --platform tags. pip widens macOS tags to older versions and universal2 but
    # not manylinux ones: every glibc from 2.17 (manylinux2014) to 2.28 (Slicer's Linux builds).
    "linux": [f"manylinux_2_{minor}_x86_64" for minor in range(17, 29)] + ["manylinux2014_x86_64"],
    "macos": ["macosx_12_0_arm64"],
    "windows": ["win_amd64"],
}
# Core dependencies deliberately not installed into Slicer (requirements.txt says why).
NOT_IN_SLICER = {"simpleitk", "requests", "pydicom", "highdicom"}


def shipped(version: str) -> dict[str, str]:
    path = SHIPPED_DIR / version / "python-packages-shipped.txt"
    if not path.is_file():
        pytest.skip(f"{path} is not here (the shared Slicer package lists)")
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line:
            name, version_ = line.strip().split("==")
            pins[canonicalize_name(name)] = version_
    return pins


def requirements() -> dict[str, Requirement]:
    return {requirement_name(r): Requirement(r) for r in read_requirements(REQUIREMENTS)}


# ------------------------------------------------------------------------------ static
@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_slicers_own_packages_are_asked_for_by_ranges_they_satisfy(slicer_version):
    own = shipped(slicer_version)
    for name, req in requirements().items():
        if name in own:
            assert all(s.operator != "==" for s in req.specifier), f"{req} pins a shipped package"
            assert req.specifier.contains(own[name]), \
                f"{req} would replace Slicer {slicer_version}'s {name} {own[name]}"


def test_everything_else_is_pinned_and_torch_is_left_to_the_pytorch_extension():
    own = set(shipped("v5.10.0")) | set(shipped("v5.12.3"))
    reqs = requirements()
    for name, req in reqs.items():
        if name in own or name == TORCH:
            continue
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", str(req)
    # monai's own torch requirement is met by the lowest torch our range admits.
    import importlib.metadata as md

    monai_torch = next(Requirement(r) for r in md.requires("monai") if r.startswith("torch"))
    lowest = next(s.version for s in reqs[TORCH].specifier if s.operator == ">=")
    assert monai_torch.specifier.contains(lowest), (str(reqs[TORCH]), str(monai_torch))
    assert not set(reqs) & NOT_IN_SLICER


def test_requirements_cover_the_core():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    reqs = requirements()
    core = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for line in core:
        name = requirement_name(line)
        if name in NOT_IN_SLICER or name == TORCH:
            continue
        assert name in reqs, f"{name} (a core dependency) is missing from requirements.txt"
        pin = [s.version for s in reqs[name].specifier if s.operator == "=="]
        if pin:
            assert Requirement(line).specifier.contains(pin[0]), (line, str(reqs[name]))


# ------------------------------------------------------------------------------ network
def _index_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory):
    if not _index_reachable():
        pytest.skip("PyPI (pypi.org:443) cannot be reached: wheel availability not checked")
    # Ask PyPI itself, whatever this machine's pip configuration (local indexes, constraints).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _pip(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--isolated",
                           "--index-url", "https://pypi.org/simple", "--only-binary=:all:",
                           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                           "--disable-pip-version-check", "-q"],
                          env=env, capture_output=True, text=True, timeout=300)


def _platform_args(platform: str) -> list[str]:
    return [a for tag in PLATFORMS[platform] for a in ("--platform", tag)]


@pytest.mark.network
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_every_pinned_requirement_has_a_wheel(platform, pip_env, tmp_path):
    pins = [str(r) for r in requirements().values()
            if any(s.operator == "==" for s in r.specifier)]
    result = _pip(["download", "--no-deps", "-d", str(tmp_path), *_platform_args(platform),
                   *pins], pip_env)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = {canonicalize_name(p.name.split("-")[0]) for p in tmp_path.glob("*.whl")}
    assert wheels == {requirement_name(p) for p in pins}


def _torch_stub(folder: Path) -> str:
    """A metadata-only torch wheel standing in for the torch that the PyTorch extension installs
    (pip on this machine cannot resolve torch's per-platform CUDA dependencies for another OS)."""
    version = "2.8.0+stub"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return version


@pytest.mark.network
@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_requirements_resolve_to_wheels_without_replacing_slicers_packages(
        platform, slicer_version, pip_env, tmp_path):
    own = shipped(slicer_version)
    stub = tmp_path / "stub"
    stub.mkdir()
    torch_version = _torch_stub(stub)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in own.items())
                           + f"torch=={torch_version}\n")
    report = tmp_path / "report.json"
    result = _pip(["install", "--dry-run", "--ignore-installed", "--target", str(tmp_path / "t"),
                   "--find-links", str(stub), "--report", str(report), *_platform_args(platform),
                   "-r", str(REQUIREMENTS), "-c", str(constraints)], pip_env)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text(encoding="utf-8"))["install"]}
    for name, version in chosen.items():
        if name in own:
            assert version == own[name], f"{name} {own[name]} would become {version}"
    assert "simpleitk" not in chosen  # Slicer's own build, which 5.10 ships without pip metadata
    assert chosen[TORCH] == torch_version
