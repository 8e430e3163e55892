"""Shared fixtures: small generated cases, built once per test session."""

from __future__ import annotations

import os

import pytest

# Tests share two cores; one thread per library keeps runs predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_case():
    """A glioma case on the SRI24 anatomy at 2 mm (120x120x77), seeded."""
    from brainbarriers.phantom import make_case

    return make_case(seed=3, zoom=2, radius_mm=16.0, edema_mm=8.0, hemisphere="left")


@pytest.fixture(scope="session")
def small_case_dir(small_case, tmp_path_factory):
    """The small case written as NIfTI files (t1.nii.gz ... tumor_truth.nii.gz)."""
    folder = tmp_path_factory.mktemp("small_case")
    small_case.write(folder)
    return folder
