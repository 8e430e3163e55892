"""Multimodal supervoxels (SSLIC_Var), their graph-based merging, metrics and refinement.

``slic.sslic`` oversegments the stacked sequences inside the brain mask, ``hierarchy.build_hierarchy``
records the merging of similar touching supervoxels as a merge tree (any level in milliseconds),
``metrics`` scores a map as the paper does, and ``snap.snap_to_supervoxels`` snaps a label map to
the supervoxels. ``step.STEP`` is the pipeline
step (imported lazily by the registry).
"""

from __future__ import annotations

from .snap import snap_to_supervoxels

__all__ = ["snap_to_supervoxels"]
