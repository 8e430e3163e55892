"""Run-level outputs: the all-segments ``.seg.nrrd`` and the ``overview.png`` picture.

They take volumes, not a pipeline run, so this module does not import the pipeline (which calls
it): the pipeline hands over its label maps and reference image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .io import atomic_path, save_segmentation
from .labels import SEGMENTS_BY_OUTPUT
from .volume import Volume


def write_segmentation(labels: Mapping[str, Volume], path: Path) -> Path | None:
    """Every label map (product -> volume on the user's grid) as segments of one ``.seg.nrrd``
    (one layer per label map); None when no segment is present."""
    layers = []
    for product, specs in SEGMENTS_BY_OUTPUT.items():
        if product not in labels:
            continue
        volume = labels[product]
        present = [(value, spec) for value, spec in specs.items() if np.any(volume.array == value)]
        if present:
            layers.append((volume, present))
    if not layers:
        return None
    return save_segmentation(path, layers)


def overlay_colors() -> list[tuple[str, int, tuple[float, float, float]]]:
    return [(product, value, spec.color)
            for product, specs in SEGMENTS_BY_OUTPUT.items() for value, spec in specs.items()]


def write_overview(reference: Volume, labels: Mapping[str, Volume], path: Path, *,
                   name: str, steps: Sequence[str]) -> Path:
    """Axial, coronal and sagittal slices of the reference sequence with every label outlined or
    filled, through the tumour's centre when there is one (else the volume's centre). The image
    and the label maps are on the canonical grid (axes run R, A, S); ``name`` and ``steps`` make
    the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = reference.array
    spacing = reference.spacing
    centre = np.array(image.shape) // 2
    for product in ("tumor", "ctv", "brain_mask"):
        if product in labels and np.any(labels[product].array):
            centre = np.round(np.argwhere(labels[product].array > 0).mean(0)).astype(int)
            break
    lo, hi = np.percentile(image[image > 0] if np.any(image > 0) else image, [1, 99.5])

    overlays = []
    for product, value, color in overlay_colors():
        if product in labels:
            overlays.append((labels[product].array == value, color, product == "brain_mask"))

    views = [
        ("axial", lambda a: a[:, :, centre[2]], (spacing[0], spacing[1])),
        ("coronal", lambda a: a[:, centre[1], :], (spacing[0], spacing[2])),
        ("sagittal", lambda a: a[centre[0], :, :], (spacing[1], spacing[2])),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for ax, (title, cut, (sx, sy)) in zip(axes, views):
        # Rows run along the second axis upwards: RAS canonical shown in radiological-free layout.
        ax.imshow(np.clip((cut(image) - lo) / max(hi - lo, 1e-6), 0, 1).T, cmap="gray",
                  origin="lower", aspect=sy / sx, interpolation="nearest")
        for mask, color, outline_only in overlays:
            m = cut(mask).T
            if not m.any():
                continue
            if outline_only:
                ax.contour(m, levels=[0.5], colors=[color], linewidths=0.8, origin="lower")
            else:
                rgba = np.zeros(m.shape + (4,))
                rgba[m] = (*color, 0.45)
                ax.imshow(rgba, origin="lower", aspect=sy / sx, interpolation="nearest")
        ax.set_title(title, color="white")
        ax.axis("off")
    fig.suptitle(f"{name}: {', '.join(steps)}", color="white")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, facecolor="black", format="png")
    plt.close(fig)
    return path
