"""Click-to-edit with supervoxels, without Qt: a point in RAS -> the supervoxel under it -> its
region at the chosen level of the merge hierarchy -> the selected segment updated.

Used by the Segment Editor effect (``SegmentEditorSupervoxelEffect``, thin glue) and usable from the
Python console; tested with slicer-core's real MRML and Segmentations logic.

Geometry: the supervoxel map is a labelmap volume node, possibly oblique, anisotropic and under a
linear transform. A world RAS point goes to the map's voxel with the inverse of its world IJK-to-RAS
(parent transforms included) and is rounded to the nearest voxel centre. The region is handed over
as a ``vtkOrientedImageData`` with the map's world geometry, cropped to the region's bounding box,
or resampled (nearest neighbour) onto a geometry the caller gives (the Segment Editor's modifier
labelmap); Slicer's segmentation logic takes it from there onto the segmentation's own geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from brainbarriers.supervoxels.hierarchy import Hierarchy, build_hierarchy

from .scene import (
    SceneError,
    _array_to_matrix,
    node_affine,
    node_array,
    node_to_volume,
    parent_to_world,
)


@dataclass(frozen=True)
class UncertainRegion:
    """A region to review: its id at the chosen level, the model's mean uncertainty over it (0..1),
    its volume, and a world RAS point inside it (its voxel nearest to its centre) to jump to."""

    region: int
    uncertainty: float
    volume_ml: float
    ras: tuple[float, float, float]


class SupervoxelRegions:
    """An oversegmentation (labelmap node, supervoxels 1..n) with its merge hierarchy.

    ``regions_at(level)`` gives the supervoxel -> region table of a level (a number of regions),
    cached; a level change costs about a millisecond, nothing is recomputed.
    """

    def __init__(self, labelmap_node, hierarchy: Hierarchy):
        self.node = labelmap_node
        self.over = node_array(labelmap_node).astype(np.int32)
        self.affine = node_affine(labelmap_node, world=True)
        if hierarchy.n != int(self.over.max()):
            raise SceneError(f"the hierarchy has {hierarchy.n} supervoxels, the map "
                             f"'{labelmap_node.GetName()}' {int(self.over.max())}")
        self.hierarchy = hierarchy
        self._luts: dict[int, np.ndarray] = {}
        self._uncertainty_key = None  # the uncertainty node state self._uncertainty was made from
        self._uncertainty = None
        # Per supervoxel, the bounding box of its voxels: a region's box without scanning the map.
        from scipy import ndimage as ndi

        n = hierarchy.n
        self._lo = np.zeros((n + 1, 3), np.int64)
        self._hi = np.zeros((n + 1, 3), np.int64)
        for label, box in enumerate(ndi.find_objects(self.over, max_label=n), start=1):
            if box is not None:
                self._lo[label] = [b.start for b in box]
                self._hi[label] = [b.stop - 1 for b in box]

    @classmethod
    def from_nodes(cls, labelmap_node, volume_nodes: Sequence, focus_segment=None,
                   **options) -> SupervoxelRegions:
        """Build the hierarchy from the oversegmentation and the sequences' volume nodes (any
        grid: each is resampled, linearly, onto the map's grid when it is on another).

        ``focus_segment``: (segmentation node, segment id), the segment about to be edited; the
        merging keeps its regions fine within 5 mm of it, as the supervoxels step does around the
        model's tumour (``hierarchy``, Focus)."""
        from brainbarriers.geometry import resample_to
        from brainbarriers.supervoxels.hierarchy import FOCUS_FACTOR, focus_around
        from brainbarriers.supervoxels.slic import scale_to_unit

        from .scene import segment_array

        over = node_to_volume(labelmap_node)
        if focus_segment is not None:
            segmentation_node, segment_id = focus_segment
            segment = segment_array(labelmap_node.GetScene(), segmentation_node, segment_id,
                                    labelmap_node) > 0
            focus = focus_around(segment, over.grid.spacing)
            if focus is not None:
                options = {"focus": focus, "focus_factor": FOCUS_FACTOR, **options}
        mask = over.array > 0
        images = []
        for node in volume_nodes:
            volume = resample_to(node_to_volume(node), over.grid)
            images.append(scale_to_unit(np.asarray(volume.array, np.float32), mask))
        if not images:
            raise SceneError("the supervoxel hierarchy needs at least one image volume")
        return cls(labelmap_node, build_hierarchy(over.array.astype(np.int64), images, **options))

    # ------------------------------------------------------------------ lookups
    def regions_at(self, level: int) -> np.ndarray:
        """Supervoxel id -> region id at ``level`` regions (clamped to what the tree holds)."""
        level = int(np.clip(level, self.hierarchy.min_regions, self.hierarchy.n))
        lut = self._luts.get(level)
        if lut is None:
            lut = self._luts[level] = self.hierarchy.lookup(regions=level)
        return lut

    def ijk_of(self, ras: Sequence[float]) -> tuple[int, int, int] | None:
        """The map voxel whose centre is nearest to the world RAS point; None outside the map."""
        point = np.linalg.solve(self.affine, np.array([*map(float, ras[:3]), 1.0]))[:3]
        ijk = np.round(point).astype(int)
        if (ijk < 0).any() or (ijk >= np.array(self.over.shape)).any():
            return None
        return tuple(int(v) for v in ijk)

    def supervoxel_at(self, ras: Sequence[float]) -> int:
        ijk = self.ijk_of(ras)
        return 0 if ijk is None else int(self.over[ijk])

    def region_at(self, ras: Sequence[float], level: int) -> tuple[int, np.ndarray]:
        """(region id, its supervoxel ids) under the point at ``level``; (0, empty) outside."""
        sv = self.supervoxel_at(ras)
        if sv == 0:
            return 0, np.zeros(0, np.int64)
        lut = self.regions_at(level)
        region = int(lut[sv])
        return region, np.nonzero(lut == region)[0]

    def region_mask(self, members: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
        """The voxels of a set of supervoxels, as (mask, box) with the mask cropped to the box."""
        lo = self._lo[members].min(0)
        hi = self._hi[members].max(0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        return np.isin(self.over[box], members), box

    def most_uncertain(self, uncertainty_node, level: int, limit: int = 20,
                       min_uncertainty: float = 0.05) -> list[UncertainRegion]:
        """The regions at ``level`` where the tumour model doubts most, highest mean uncertainty
        first (``tumor.review.regions_by_uncertainty``): review starts there. The uncertainty map
        (a scalar volume node, any grid) is resampled linearly onto the map's world grid, once per
        node state."""
        from brainbarriers.tumor.review import regions_by_uncertainty

        uncertainty = self._uncertainty_on_map(uncertainty_node)
        lut = self.regions_at(level)
        regions = lut[self.over]
        voxel_ml = abs(np.linalg.det(self.affine[:3, :3])) / 1000.0
        found = []
        for region, mean, voxels in regions_by_uncertainty(regions, uncertainty,
                                                           min_uncertainty)[:limit]:
            mask, box = self.region_mask(np.nonzero(lut == region)[0])
            inside = np.argwhere(mask)
            nearest = inside[np.argmin(((inside - inside.mean(0)) ** 2).sum(1))]
            ijk = nearest + [b.start for b in box]
            ras = (self.affine @ np.array([*ijk, 1.0]))[:3]
            found.append(UncertainRegion(region, mean, voxels * voxel_ml,
                                         tuple(float(v) for v in ras)))
        return found

    def _uncertainty_on_map(self, node) -> np.ndarray:
        from brainbarriers.geometry import resample_to
        from brainbarriers.volume import Grid

        image = node.GetImageData()
        key = (node.GetID(), node.GetMTime(), image.GetMTime() if image is not None else 0)
        if self._uncertainty_key != key:
            on_map = resample_to(node_to_volume(node), Grid(self.over.shape, self.affine))
            self._uncertainty = np.asarray(on_map.array, np.float32)
            self._uncertainty_key = key
        return self._uncertainty

    # ------------------------------------------------------------------ to Slicer
    def modifier(self, ras: Sequence[float], level: int, segmentation_node=None, reference=None):
        """The region under the point as a vtkOrientedImageData (1 inside, 0 elsewhere), or None
        outside the supervoxels.

        Its geometry is in the frame of ``segmentation_node`` (a segmentation's labelmaps live in
        its node's local frame: its parent transforms are undone), in world RAS without one.
        Without ``reference``: the map's grid cropped to the region's box; with a
        vtkOrientedImageData ``reference`` (in that same frame): resampled onto its geometry."""
        region, members = self.region_at(ras, level)
        if region == 0:
            return None
        mask, box = self.region_mask(members)
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(*mask.shape)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
            np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)).ravel(), deep=True,
            array_type=vtk.VTK_UNSIGNED_CHAR))
        shift = np.eye(4)
        shift[:3, 3] = [s.start for s in box]
        frame = np.eye(4) if segmentation_node is None else np.linalg.inv(
            parent_to_world(segmentation_node))
        image.SetImageToWorldMatrix(_array_to_matrix(frame @ self.affine @ shift))
        if reference is None:
            return image
        out = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, out, False)
        return out


def edit_segment(segmentation_node, segment_id: str, regions: SupervoxelRegions,
                 ras: Sequence[float], level: int, remove: bool = False) -> bool:
    """Add the region under ``ras`` (at ``level`` regions) to the segment, or remove it from it.

    Returns False (and changes nothing) when the point is outside the supervoxels. The console's
    form of the effect's click; undo is the Segment Editor's, around its own call.
    """
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise SceneError(f"segmentation '{segmentation_node.GetName()}' has no segment "
                         f"'{segment_id}'")
    modifier = regions.modifier(ras, level, segmentation_node)
    if modifier is None:
        return False
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    extent = modifier.GetExtent()
    if remove:
        # Min with the inverted region inside the region's box: the region's voxels go, the rest
        # of the segment (inside and outside the box) stays.
        scalars = modifier.GetPointData().GetScalars()
        inverted = 1 - numpy_support.vtk_to_numpy(scalars)
        scalars.DeepCopy(numpy_support.numpy_to_vtk(inverted.astype(np.uint8), deep=True,
                                                    array_type=vtk.VTK_UNSIGNED_CHAR))
        return bool(logic.SetBinaryLabelmapToSegment(modifier, segmentation_node, segment_id,
                                                     logic.MODE_MERGE_MIN, extent))
    return bool(logic.SetBinaryLabelmapToSegment(modifier, segmentation_node, segment_id,
                                                 logic.MODE_MERGE_MAX, extent))
