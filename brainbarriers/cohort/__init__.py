"""Whole cohorts through Dask: ``brainbarriers cohort DATA --out OUT``."""

from .discover import Case, find_cohort
from .runner import ClusterSpec, CohortResult, run_cohort

__all__ = ["Case", "ClusterSpec", "CohortResult", "find_cohort", "run_cohort"]
