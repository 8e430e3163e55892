"""Segmentation of the Anatomical Barriers to Cancer spread (ABCs): HMRNet two-stage and atlas stage.

Label map (``brainbarriers.labels.BARRIER_SEGMENTS``): 1 falx cerebri, 2 tentorium cerebelli,
3 sagittal brain sinus, 4 transverse brain sinus, 5 cerebellum, 6 ventricles (the ABCs 2020
challenge joins 3 and 4 as "sinuses"; we keep them apart as the paper's stage 2 does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    label: int
    key: str
    kind: str  # "p": HMRNet-p (3D), "s": HMRNet-s (2.5D)
    slice_axis: int  # HMRNet-s's slice axis in the canonical RAS array (0 sagittal, 2 axial)
    theta: float  # false-negative weight of the loss (paper IV-A)


STRUCTURES: dict[int, Structure] = {
    1: Structure(1, "falx", "s", 0, 3.0),
    2: Structure(2, "tentorium", "p", 2, 3.5),
    3: Structure(3, "sagittal_sinus", "s", 0, 3.0),
    4: Structure(4, "transverse_sinus", "s", 2, 2.0),
    5: Structure(5, "cerebellum", "p", 2, 2.0),
    6: Structure(6, "ventricles", "p", 2, 2.5),
}
N_CLASSES = 7  # background + six structures
