"""BrainBarriers core: brain mask, tumour, anatomical barriers, supervoxels and CTV from brain MRI.

Slicer-free; the Slicer module in ``SlicerBrainBarriers/`` drives it through ``brainbarriers.worker``.
"""

__version__ = "0.1.0"
