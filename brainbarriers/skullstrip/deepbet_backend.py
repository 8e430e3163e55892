"""deepbet (Fisch et al. 2024; MIT): two TorchScript 3D U-Nets shipped in the ``deepbet`` wheel.

deepbet's own recipe, which this follows through its ``BrainExtraction`` object: the image in
closest-to-RAS voxel order (our canonical grid) is shrunk to 128^3 for a first network that finds
the brain's bounding box; the box, widened by 10 % on each side, is resized to 256^3 for the second
network, whose output is resized back into the box. Both resizes are nearest-neighbour, and the
intensities are scaled by the 0.5 % / 99.5 % quantiles of the shrunk image. The result here is the
probability map; thresholding and the clean-up are shared with the other backend (see ``core``).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ..errors import InputError
from .weights import deepbet_weights


@functools.lru_cache(maxsize=2)
def extractor(device: str):
    """deepbet's ``BrainExtraction`` with the pinned weights, on ``device`` (cached per process)."""
    from deepbet.bet import BrainExtraction

    paths = deepbet_weights()
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in recent torch; the files are pinned by sha256 above.
        warnings.simplefilter("ignore", DeprecationWarning)
        bet = BrainExtraction(no_gpu=device == "cpu", model_path=str(paths["model.pt"]),
                              bbox_model_path=str(paths["bbox_model.pt"]))
    # deepbet picks its own device (CUDA or Apple MPS when present); ours is the one asked for.
    bet.model.to(device)
    bet.bbox_model.to(device)
    return bet


def predict(array: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Brain probability (float32, the array's shape) for a T1-weighted array in RAS voxel order."""
    import torch

    bet = extractor(device)
    x = np.ascontiguousarray(array, dtype=np.float32)
    try:
        with torch.inference_mode():
            probability = bet.run_model(x)
    except (AssertionError, ValueError) as e:
        # deepbet asserts when its first network finds too little brain to draw a box around, and
        # its largest-component step fails on an empty map.
        raise InputError(None, "no brain was found in the image: is it a head MRI?") from e
    return np.asarray(probability, dtype=np.float32)
