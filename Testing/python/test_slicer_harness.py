"""The Slicer module inside Slicer 5.10.0 and 5.12.3: ``slicer_harness_cases.py`` runs in a fresh
process per release, on that release's own ``slicer`` Python package (``../shared/slicer-python``)
over the slicer-core wheel, only Qt stood in. It drives the panel's model choices, the parameter
node, a failed install, a failed run, and the real background worker on the demo case
(skull-stripping on CPU, about 20 s): from the panel's Apply down to the segmentation node under
5.10.0, and the module's own self-test under 5.12.3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")
HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "slicer-python"


@pytest.mark.parametrize("version, demo_run", [("v5.10.0", "panel"), ("v5.12.3", "selftest")])
def test_the_module_works_on_slicers_own_python_package(version, demo_run):
    if not (SHARED / version).is_dir():
        pytest.skip(f"{SHARED / version} is not here (Slicer's released Python package)")
    env = dict(os.environ, BB_SLICER_VERSION=version, BB_HARNESS_DEMO=demo_run)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(HERE / "slicer_harness_cases.py")],
        cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "1 skipped" in result.stdout, result.stdout[-500:]
