"""Training augmentation of our own, beside MONAI's: sequences seen as thick-sliced clinical scans.

Its own module so that MONAI is imported only where training is (``train.transforms``), and the
transform is a module-level class that DataLoader worker processes can unpickle.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage as ndi


def slab_average(array: np.ndarray, slab: int, axis: int) -> np.ndarray:
    """``array`` as a thick-sliced acquisition shows it once resampled: averaged over slabs of
    ``slab`` voxels along ``axis``, then linearly interpolated between the slab centres back onto
    the same grid."""
    moved = np.moveaxis(np.asarray(array, np.float32), axis, -1)
    depth = moved.shape[-1]
    count = -(-depth // slab)
    padding = [(0, 0)] * (moved.ndim - 1) + [(0, count * slab - depth)]
    slabs = np.pad(moved, padding, mode="edge").reshape(*moved.shape[:-1], count, slab).mean(-1)
    centres = (np.arange(depth) - (slab - 1) / 2.0) / slab  # each voxel's place among the slabs
    grid = np.meshgrid(*[np.arange(n) for n in moved.shape[:-1]], centres, indexing="ij")
    back = ndi.map_coordinates(slabs, grid, order=1, mode="nearest").astype(np.float32)
    return np.moveaxis(back, -1, axis)


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """With probability ``prob`` a sample is seen as a clinic often scans it: each sequence, with
    probability 1/2, in slabs of 2 or 3 voxels (4-6 mm at the cpu configuration's 2 mm) along one
    axis drawn for the sample. The labels are left as they are (the expert's, drawn at 1 mm)."""

    def __init__(self, prob: float = 0.3):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, ["image"])

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return data
        axis = int(self.R.randint(3))
        image = np.array(data["image"], np.float32)
        for channel in range(image.shape[0]):
            if self.R.random_sample() < 0.5:
                image[channel] = slab_average(image[channel], 2 + int(self.R.random_sample() < 0.5), axis)
        return {**data, "image": image}
