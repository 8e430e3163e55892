"""Skull-stripping: the brain mask of a head MRI, by deepbet (default) or HD-BET.

- ``core.brain_mask(volume, backend=, device=)``: the mask of one volume on its own grid (any
  orientation, any voxel size); refuses volumes that are not a head.
- ``step.STEP``: the pipeline's ``skullstrip`` step (brain mask + skull-stripped sequences).
- ``weights``: the backends' shipped weights, pinned by sha256.
"""

from __future__ import annotations

from .core import BACKENDS, PLAUSIBLE_ML, SkullStripResult, brain_mask

__all__ = ["BACKENDS", "PLAUSIBLE_ML", "SkullStripResult", "brain_mask"]
