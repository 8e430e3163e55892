"""Render the Extension Index screenshot and the Sample Data thumbnail from a demo run.

    brainbarriers demo --out demo_out --device cpu
    python scripts/render_screenshot.py demo_out

writes ``Screenshots/BrainBarriers-demo.png``: an offscreen VTK rendering (not a capture of
Slicer's window) of the run's segments as surfaces - tumour sub-regions, barriers and the CTV -
over an axial slice of the T1ce, coloured as the segments are in Slicer; and
``SlicerBrainBarriers/Resources/Icons/BrainBarriersDemo.png``: the demo case's thumbnail (an axial
T1ce slice).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import vtk
from vtkmodules.util import numpy_support

from brainbarriers.io import load_volume
from brainbarriers.labels import SEGMENTS_BY_OUTPUT

ROOT = Path(__file__).resolve().parents[1]
OPACITY = {"brain_mask": 0.0, "tumor": 1.0, "barriers": 1.0, "ctv": 0.35}


def _image(array: np.ndarray) -> vtk.vtkImageData:
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(),
                                         deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def _matrix(affine: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    return matrix


def _surface(mask: np.ndarray, affine: np.ndarray, color, opacity: float) -> vtk.vtkActor:
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputData(_image(mask.astype(np.float32)))
    contour.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(contour.GetOutputPort())
    smooth.SetNumberOfIterations(20)
    smooth.SetPassBand(0.05)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(smooth.GetOutputPort())
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.SetUserMatrix(_matrix(affine))
    return actor


def _slice(t1ce, k: int) -> vtk.vtkImageActor:
    array = t1ce.array.astype(np.float32)
    lo, hi = np.percentile(array[array > 0], [1, 99.5])
    grey = (np.clip((array[:, :, k:k + 1] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(_image(grey))
    shift = np.eye(4)
    shift[2, 3] = k
    actor.SetUserMatrix(_matrix(t1ce.affine @ shift))
    actor.SetOpacity(0.6)
    return actor


def render(run: Path, out: Path, size=(1200, 800)) -> None:
    t1ce = load_volume(run / "inputs" / "t1ce.nii.gz")
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.08, 0.12)
    tumour_k = None
    for key, specs in SEGMENTS_BY_OUTPUT.items():
        path = run / f"{key}.nii.gz"
        if not path.exists() or OPACITY[key] == 0.0:
            continue
        labels = load_volume(path, allow_empty=True)
        for value, spec in specs.items():
            mask = labels.array == value
            if mask.any():
                renderer.AddActor(_surface(mask, labels.affine, spec.color, OPACITY[key]))
                if key == "tumor" and tumour_k is None:
                    tumour_k = int(np.argwhere(mask)[:, 2].mean())
    # An axial T1ce slice through the tumour, see-through so the structures below show.
    renderer.AddActor(_slice(t1ce, tumour_k if tumour_k is not None else t1ce.shape[2] // 2))
    # Seen from the front, above and to the patient's left (RAS: -x, +y, +z), head up.
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    focal = np.array(camera.GetFocalPoint())
    distance = camera.GetDistance()
    camera.SetPosition(*(focal + distance * np.array([-0.45, 0.75, 0.5])))
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCameraClippingRange()
    camera.Zoom(1.6)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(out))
    writer.SetInputConnection(grab.GetOutputPort())
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.Write()


def thumbnail(t1ce_path: Path, out: Path, size: int = 128) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage as ndi

    from brainbarriers.geometry import to_canonical

    volume = to_canonical(load_volume(t1ce_path))  # RAS: i left -> right, j posterior -> anterior
    array = volume.array[:, :, volume.shape[2] // 2].astype(np.float32)
    lo, hi = np.percentile(array[array > 0], [1, 99.5])
    grey = np.clip((array - lo) / (hi - lo), 0, 1).T[::-1]  # rows: anterior at the top
    square = ndi.zoom(grey, size / max(grey.shape), order=1)
    canvas = np.zeros((size, size), np.float32)
    r0, c0 = (size - square.shape[0]) // 2, (size - square.shape[1]) // 2
    canvas[r0:r0 + square.shape[0], c0:c0 + square.shape[1]] = square
    out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(out, canvas, cmap="gray", vmin=0, vmax=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `brainbarriers demo` run folder")
    args = parser.parse_args()
    render(args.run, ROOT / "Screenshots" / "BrainBarriers-demo.png")
    thumbnail(args.run / "inputs" / "t1ce.nii.gz",
              ROOT / "SlicerBrainBarriers" / "Resources" / "Icons" / "BrainBarriersDemo.png")


if __name__ == "__main__":
    main()
