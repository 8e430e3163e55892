"""A volume is its voxels and its affine, always together.

Conventions (the same as NIfTI / nibabel and Slicer's RAS world):
- ``array`` is indexed ``[i, j, k]`` (the file's own voxel axes, not numpy's z-y-x of SimpleITK);
- ``affine`` is the 4x4 matrix mapping voxel indices ``(i, j, k, 1)`` to RAS+ millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The geometry of a volume without its voxels."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def direction(self) -> np.ndarray:
        """Unit column vectors of the voxel axes in RAS."""
        return self.affine[:3, :3] / self.spacing

    def same_as(self, other: Grid, atol: float = 1e-4) -> bool:
        return tuple(self.shape) == tuple(other.shape) and np.allclose(
            self.affine, other.affine, atol=atol
        )

    def describe(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"{'x'.join(map(str, self.shape))} voxels of {sp} mm"


@dataclass(frozen=True, eq=False)
class Volume:
    array: np.ndarray
    affine: np.ndarray
    # Where it came from (for messages); empty for computed volumes.
    source: str = ""
    # The NIfTI header it was read with, kept so outputs can be written with the input's own header.
    header: object | None = field(default=None, repr=False)

    def __post_init__(self):
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def grid(self) -> Grid:
        return Grid(tuple(int(s) for s in self.array.shape), self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def spacing(self) -> np.ndarray:
        return self.grid.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def with_array(self, array: np.ndarray, source: str = "") -> Volume:
        """Another volume on this one's grid (keeps the header for writing)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.shape}")
        return Volume(array, self.affine, source=source, header=self.header)

    def world_coordinates(self, ijk: np.ndarray) -> np.ndarray:
        """RAS mm of voxel indices given as an (N, 3) array."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
