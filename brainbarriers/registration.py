"""Image registration with SimpleITK: the shared pieces, and the rigid co-registration of a patient's
sequences to the reference sequence.

Every registration here runs on one thread with a fixed sampling seed, so the same images give the
same transform to the bit (``one_thread``).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

from .io import to_sitk
from .volume import Volume

#: A co-registration that moves a sequence further than this is taken for a failed one (a patient
#: moves a few millimetres and degrees within one session): the scanner's alignment is kept.
MAX_SHIFT_MM = 40.0
MAX_ROTATION_DEG = 20.0
#: A move up to this is within the registration's own error and under the tumour model's 2 mm grid
#: (the 48 sequences of the 16 BraTS cases in ../shared/data, aligned by their curators, come out
#: 0.1-0.8 mm and 0.1-0.7 degrees from their T1ce): by default the headers' alignment is kept and
#: nothing is resampled for it.
MIN_SHIFT_MM = 1.5
MIN_ROTATION_DEG = 1.5
#: Names ``rigid_coregister`` as it computes: a run reuses an earlier run's move only when this and
#: both files are the same. Change it with anything that changes the transforms it finds.
RIGID_METHOD = "mattes-mi-15pc-seed1-4+2mm-100it"


def shrunk(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` smoothed and downsampled by whole factors to about ``spacing_mm`` per axis."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    if max(factors) == 1:  # already that coarse: smoothing would only blur it past its atlas
        return image
    smoothed = sitk.SmoothingRecursiveGaussian(image, [0.5 * f * s for f, s in zip(factors, image.GetSpacing())])
    return sitk.Shrink(smoothed, factors)


@contextmanager
def one_thread():
    """SimpleITK on one thread inside. ITK adds its threads' partial Mattes histograms in whatever
    order its thread pool finishes them, so on two threads the same registration gives transforms
    about 1e-5 mm apart from call to call, and now and then a different voxel label (measured;
    ``SetNumberOfThreads`` on the method does not reach the metric). On one thread it is the same
    every time; every registration runs inside."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def mattes_method(iterations: int, shrink: list[int], sigmas: list[float]) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information on a seeded 15 % sample, gradient descent, a multi-level pyramid."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.15, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6)
    return reg


def rigid_coregister(fixed: Volume, moving: Volume, iterations: int = 100) -> sitk.Euler3DTransform:
    """The rigid transform that maps points of ``fixed`` (LPS, mm) to where the same anatomy lies in
    ``moving``: two sequences of one patient, any contrasts (mutual information), whole heads or
    skull-stripped. It starts from the scanner's alignment (the headers), rotates about the fixed
    image's centre, and works at 4 then 2 mm."""
    with one_thread():
        fixed_image = shrunk(sitk.Cast(to_sitk(fixed), sitk.sitkFloat32), 2.0)
        moving_image = shrunk(sitk.Cast(to_sitk(moving), sitk.sitkFloat32), 2.0)
        start = sitk.Euler3DTransform()
        centre = np.asarray(fixed_image.GetSize(), float) / 2.0 - 0.5
        start.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
        reg = mattes_method(iterations, [2, 1], [2.0, 1.0])
        reg.SetInitialTransform(start, inPlace=True)
        reg.Execute(fixed_image, moving_image)
    return start


def euler_transform(center_lps, parameters) -> sitk.Euler3DTransform:
    """The rigid transform recorded as its centre and Euler parameters (LPS, mm, radians)."""
    euler = sitk.Euler3DTransform()
    euler.SetCenter(list(center_lps))
    euler.SetParameters(list(parameters))
    return euler


def rigid_motion(transform: sitk.Euler3DTransform) -> tuple[float, float]:
    """(shift of the rotation centre in mm, rotation angle in degrees) of a rigid transform."""
    rotation = np.asarray(transform.GetMatrix(), float).reshape(3, 3)
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
    return float(np.linalg.norm(transform.GetTranslation())), float(angle)


def sequence_to_reference_ras(record: dict) -> np.ndarray:
    """The 4x4 RAS matrix that carries a co-registered sequence onto its reference, from the run
    manifest's ``coregistration`` record (whose Euler transform, in LPS, maps reference points to
    the sequence's): what a viewer applies to the sequence to show it aligned with the results."""
    euler = euler_transform(record["center_lps"], record["euler3d_lps"])
    reference_to_sequence = np.eye(4)
    reference_to_sequence[:3, :3] = np.asarray(euler.GetMatrix()).reshape(3, 3)
    centre = np.asarray(euler.GetCenter())
    reference_to_sequence[:3, 3] = centre + np.asarray(euler.GetTranslation()) - reference_to_sequence[:3, :3] @ centre
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
    return np.linalg.inv(lps @ reference_to_sequence @ lps)
