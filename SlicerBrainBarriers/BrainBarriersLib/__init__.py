"""Helpers of the BrainBarriers Slicer module that need no Qt: the scene bridge (``scene``), the
worker client (``worker_client``), one run from scene to scene (``runner``) and the dependency
check (``dependencies``). Only ``scene`` imports ``slicer`` (MRML and VTK, no widgets)."""
