"""Pipeline: named steps with declared inputs and outputs, run in a run folder with a manifest.

A *product* is a named volume (``"t1ce"``, ``"brain_mask"``, ``"tumor"``, ...). Raw sequences are
products too. Every product lives in ``RUN/work/<name>.nii.gz`` on the canonical form of the
reference grid (see ``geometry``); the final outputs are written back on the user's reference grid
under fixed names. A step is skipped on a rerun when its key (its name, version, options and the keys
of its inputs) is the same as in the manifest and its files are still there.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import Cancelled, InputError
from ..geometry import canonical_grid, grids_overlap, reorient_to, resample_to, to_canonical
from ..io import atomic_path, load_volume, save_volume, sha256_file
from ..volume import Grid, Volume

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")
SEQUENCE_FLAGS = {s: f"--{s}" for s in SEQUENCES}

# Products written to the run folder under fixed names, on the user's reference grid.
FINAL_OUTPUTS = {
    "brain_mask": "brain_mask.nii.gz",
    "tumor": "tumor.nii.gz",
    "barriers": "barriers.nii.gz",
    "supervoxels": "supervoxels.nii.gz",
    "supervoxels_merged": "supervoxels_merged.nii.gz",
    "ctv": "ctv.nii.gz",
}
MANIFEST = "manifest.json"
WORK = "work"


@dataclass(frozen=True)
class ProgressEvent:
    """What the CLI, the worker protocol and the Slicer module show."""

    event: str  # "start" | "step" | "progress" | "warning" | "done"
    step: str | None = None
    fraction: float | None = None
    message: str = ""
    data: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = {"event": self.event}
        if self.step is not None:
            d["step"] = self.step
        if self.fraction is not None:
            d["fraction"] = round(float(self.fraction), 4)
        if self.message:
            d["message"] = self.message
        d.update(self.data)
        return json.dumps(d)


class CancelToken:
    """Set from any thread (a signal handler, the GUI); steps stop at their next safe point."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


@dataclass(frozen=True)
class Step:
    """A pipeline step. ``run`` receives a StepContext and returns ``{product: Volume}``.

    Volumes returned must be on the context's grid (``ctx.grid``). ``labels`` names the outputs that
    are label maps (written as integers, resampled with nearest neighbour).
    """

    name: str
    run: Callable[[StepContext], dict[str, Volume]]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    optional_outputs: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()  # raw sequences this step needs given on the command line
    labels: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""

    @property
    def declared_inputs(self) -> tuple[str, ...]:
        return self.sequences + self.inputs + self.optional_inputs


class StepContext:
    """What a step sees: its inputs (canonical grid), options, device, progress, cancel, warnings."""

    def __init__(self, run: PipelineRun, step: Step):
        self._run = run
        self.step = step
        self.options: dict = dict(run.options.get(step.name, {}))
        self.device: str = run.device
        self.grid: Grid = run.grid

    def has(self, product: str) -> bool:
        return self._run.has(product)

    def get(self, product: str) -> Volume:
        if product not in self.step.declared_inputs:
            raise KeyError(f"step {self.step.name} did not declare input {product!r}")
        return self._run.get(product)

    def sequences(self) -> list[str]:
        """The raw sequences given for this run, in canonical order."""
        return [s for s in SEQUENCES if s in self._run.given]

    def progress(self, fraction: float, message: str = "") -> None:
        self._run.cancel.check()
        self._run.emit(ProgressEvent("progress", self.step.name, min(max(fraction, 0.0), 1.0), message))

    def check_cancel(self) -> None:
        self._run.cancel.check()

    def warn(self, message: str) -> None:
        self._run.warn(message, self.step.name)

    def new_volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.grid.affine)


def option_flag(value, step: str, name: str) -> bool:
    """A true/false step option, given as a bool or as text (from ``--set`` or the Slicer panel)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InputError(None, f"{step}: option {name} must be true or false, got {value!r}")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(None, f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise InputError(None, "--device cuda was asked for, but no CUDA GPU is available")
    return "cpu"


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"brainbarriers": __version__, "python": platform.python_version()}
    for package in ("numpy", "SimpleITK", "nibabel", "torch", "monai", "scipy", "scikit-image"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def check_output_folder(out: Path) -> None:
    """Fail early, before anything is written, if the run folder cannot be made or written."""
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(existing, "is a file, so the output folder cannot be created there")
    try:  # a real write test: permission bits do not tell for root or read-only file systems
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(out, f"output folder is not writable ({e.strerror or e})") from e


class PipelineRun:
    """One run of some steps on one case, in one run folder."""

    def __init__(
        self,
        inputs: Mapping[str, str | Path],
        out: str | Path,
        steps: list[Step],
        *,
        reference: str | None = None,
        device: str = "auto",
        options: Mapping[str, dict] | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
    ):
        self.out = Path(out)
        self.steps = steps
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.on_event = on_event or (lambda event: None)
        self.cancel = cancel or CancelToken()
        self.warnings: list[dict] = []
        self._cache: dict[str, Volume] = {}
        self._product_keys: dict[str, str] = {}
        self.step_records: list[dict] = []
        self.input_sha256: dict[str, str] = {}

        unknown = set(inputs) - set(SEQUENCES)
        if unknown:
            raise InputError(None, f"unknown sequence(s): {', '.join(sorted(unknown))}")
        self.given = {s: Path(p) for s, p in inputs.items() if p is not None}
        if not self.given:
            raise InputError(None, "no input sequence given (use --t1, --t1ce, --t2, --flair, --ct)")
        self._check_plan()
        self.reference = self._choose_reference(reference)
        self.device = resolve_device(device)
        check_output_folder(self.out)
        self.volumes = self._load_inputs()
        ref = self.volumes[self.reference]
        self.user_grid: Grid = ref.grid
        self.grid: Grid = canonical_grid(ref.grid)

    # ------------------------------------------------------------------------------ planning
    def _check_plan(self) -> None:
        available = set(self.given)
        for step in self.steps:
            missing = [s for s in step.sequences if s not in self.given]
            if missing:
                flags = ", ".join(SEQUENCE_FLAGS[s] for s in missing)
                raise InputError(None, f"missing sequence: step '{step.name}' needs {flags}")
            lacking = [p for p in step.inputs if p not in available]
            if lacking:
                raise InputError(
                    None, f"step '{step.name}' needs {', '.join(lacking)}, which no earlier step makes"
                )
            available |= set(step.outputs) | set(step.optional_outputs)

    def _choose_reference(self, reference: str | None) -> str:
        if reference is None:
            return next(s for s in ("t1ce", "t1", "t2", "flair", "ct") if s in self.given)
        if reference not in self.given:
            raise InputError(None, f"reference sequence {reference!r} was not given")
        return reference

    def _load_inputs(self) -> dict[str, Volume]:
        volumes = {name: load_volume(path) for name, path in self.given.items()}
        seen: dict[str, str] = {}
        for name, path in self.given.items():
            resolved = str(path.resolve())
            if resolved in seen:
                raise InputError(path, f"is given both as {seen[resolved]} and as {name}")
            seen[resolved] = name
        ref = volumes[self.reference]
        for name, volume in volumes.items():
            if name == self.reference:
                continue
            if grids_overlap(volume.grid, ref.grid) < 0.3:
                raise InputError(
                    self.given[name],
                    f"({name}) does not overlap the reference {self.reference} in space: "
                    "a different patient, or a wrong header?",
                )
        return volumes

    # ------------------------------------------------------------------------------ products
    def work_path(self, product: str) -> Path:
        return self.out / WORK / f"{product}.nii.gz"

    def has(self, product: str) -> bool:
        return product in self._cache or product in self._product_keys

    def get(self, product: str) -> Volume:
        if product not in self._cache:
            if product not in self._product_keys:
                raise KeyError(product)
            self._cache[product] = load_volume(self.work_path(product), allow_empty=True)
        return self._cache[product]

    def emit(self, event: ProgressEvent) -> None:
        self.on_event(event)

    def warn(self, message: str, step: str | None = None) -> None:
        self.warnings.append({"step": step, "message": message})
        self.emit(ProgressEvent("warning", step, message=message))

    def _prepare_sequences(self) -> None:
        ref = self.volumes[self.reference]
        self.input_sha256 = {name: sha256_file(path) for name, path in self.given.items()}
        for name, volume in self.volumes.items():
            key = _hash({"file": self.input_sha256[name], "grid": self.grid.affine.tolist(),
                         "shape": self.grid.shape})
            if not volume.grid.same_as(ref.grid):
                self.warn(
                    f"{name} ({self.given[name]}) is on another grid ({volume.grid.describe()}) than "
                    f"the reference {self.reference} ({ref.grid.describe()}); resampled to it"
                )
                volume = resample_to(volume, ref.grid)
            self._cache[name] = to_canonical(volume.with_array(volume.array.astype(np.float32)))
            self._product_keys[name] = key

    def _previous_manifest(self) -> dict:
        try:
            return json.loads((self.out / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------------------ running
    def run(self) -> dict[str, Path]:
        """Run the steps; returns the final outputs written (product -> path)."""
        (self.out / WORK).mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.emit(ProgressEvent("start", data={"steps": [s.name for s in self.steps],
                                               "out": str(self.out), "device": self.device}))
        self._prepare_sequences()
        previous = {s["name"]: s for s in self._previous_manifest().get("steps", [])}
        status = "running"
        try:
            for step in self.steps:
                self.cancel.check()
                self._run_step(step, previous.get(step.name))
                self._write_manifest(status)
            self.cancel.check()
            outputs = self._export()
            status = "done"
        except Cancelled:
            status = "cancelled"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            self._write_manifest(status)
        self.emit(ProgressEvent("done", data={"outputs": {k: str(v) for k, v in outputs.items()},
                                              "manifest": str(self.out / MANIFEST)}))
        return outputs

    def _run_step(self, step: Step, previous: dict | None) -> None:
        inputs = [p for p in step.declared_inputs if self.has(p)]
        options = self.options.get(step.name, {})
        key = _hash({"step": step.name, "version": step.version, "options": options,
                     "device": self.device if options.get("device_dependent") else None,
                     "inputs": {p: self._product_keys[p] for p in inputs}})
        record = {"name": step.name, "version": step.version, "key": key, "options": options,
                  "inputs": inputs}
        if previous and previous.get("key") == key and previous.get("status") in ("done", "skipped"):
            produced = previous.get("outputs", [])
            if all(self.work_path(p).exists() for p in produced):
                for p in produced:
                    self._product_keys[p] = _hash({"step": key, "product": p})
                    self._cache.pop(p, None)
                record.update(status="skipped", outputs=produced, seconds=0.0)
                self.step_records.append(record)
                self.emit(ProgressEvent("step", step.name, 1.0, "unchanged, skipped",
                                        data={"status": "skipped"}))
                return
        self.emit(ProgressEvent("step", step.name, 0.0, step.description, data={"status": "running"}))
        t0 = time.perf_counter()
        ctx = StepContext(self, step)
        results = step.run(ctx)
        self.cancel.check()  # a step cancelled during its last stretch writes nothing
        expected = set(step.outputs)
        allowed = expected | set(step.optional_outputs)
        if not expected <= set(results) or not set(results) <= allowed:
            raise RuntimeError(
                f"step {step.name} returned {sorted(results)}, declared {sorted(allowed)}"
            )
        for product, volume in results.items():
            if not volume.grid.same_as(self.grid):
                raise RuntimeError(f"step {step.name} returned {product} on another grid")
            dtype = _label_dtype(volume.array) if product in step.labels else np.float32
            volume = Volume(volume.array.astype(dtype, copy=False), self.grid.affine)
            save_volume(volume, self.work_path(product))
            self._cache[product] = volume
            self._product_keys[product] = _hash({"step": key, "product": product})
        seconds = time.perf_counter() - t0
        record.update(status="done", outputs=sorted(results), seconds=round(seconds, 3))
        self.step_records.append(record)
        self.emit(ProgressEvent("step", step.name, 1.0, f"done in {seconds:.1f} s",
                                data={"status": "done", "seconds": round(seconds, 3)}))

    def user_grid_volume(self, product: str) -> Volume:
        """A product brought back, exactly, onto the user's reference grid, with its header."""
        canonical = self.get(product)
        back = reorient_to(canonical, self.user_grid)
        return self.volumes[self.reference].with_array(back.array)

    def _export(self) -> dict[str, Path]:
        from ..export import write_overview, write_segmentation

        written: dict[str, Path] = {}
        declared = {p for step in self.steps for p in step.outputs + step.optional_outputs}
        for product, filename in FINAL_OUTPUTS.items():
            if self.has(product):
                written[product] = save_volume(self.user_grid_volume(product), self.out / filename)
            elif product in declared:
                # A step of this run chose not to make it (e.g. no CTV from an empty GTV): an
                # earlier run's file would now be wrong.
                (self.out / filename).unlink(missing_ok=True)
                self.work_path(product).unlink(missing_ok=True)
        for product in self._product_keys:
            if product.endswith("_brain"):  # skull-stripped sequences, for the user and later runs
                written[product] = save_volume(
                    self.user_grid_volume(product), self.out / f"{product}.nii.gz"
                )
        seg = write_segmentation(self, self.out / "segmentation.seg.nrrd")
        if seg is not None:
            written["segmentation"] = seg
        written["overview"] = write_overview(self, self.out / "overview.png")
        return written

    def _write_manifest(self, status: str) -> None:
        manifest = {
            "status": status,
            "brainbarriers": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": self.device,
            "reference": self.reference,
            "reference_grid": {"shape": list(self.user_grid.shape),
                               "affine": np.round(self.user_grid.affine, 6).tolist()},
            "inputs": {
                name: {"path": str(path), "sha256": self.input_sha256.get(name),
                       "shape": list(self.volumes[name].shape),
                       "spacing": np.round(self.volumes[name].spacing, 5).tolist()}
                for name, path in self.given.items()
            },
            "steps": self.step_records,
            "outputs": {p: FINAL_OUTPUTS[p] for p in FINAL_OUTPUTS if self.has(p)},
            "warnings": self.warnings,
            "versions": software_versions(),
            "seconds": round(time.time() - self.started, 3),
        }
        path = self.out / MANIFEST
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2))


def _label_dtype(array: np.ndarray) -> type:
    top = int(array.max()) if array.size else 0
    return np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
