"""Pipeline: named steps with declared inputs and outputs, run in a run folder with a manifest.

A *product* is a named volume (``"t1ce"``, ``"brain_mask"``, ``"tumor"``, ...). Raw sequences are
products too. Every product lives in ``RUN/work/<name>.nii.gz`` on the canonical form of the
reference grid (see ``geometry``); the final outputs are written back on the user's reference grid
under fixed names. A step is skipped on a rerun when its key (its name, version, options and the keys
of its inputs) is the same as in the manifest and its files are still there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import Cancelled, InputError
from ..export import write_overview, write_segmentation
from ..geometry import canonical_grid, grids_overlap, reorient_to, resample_to, to_canonical
from ..io import (
    atomic_path,
    check_writable_folder,
    is_partial,
    load_volume,
    save_volume,
    sha256_file,
)
from ..labels import SEGMENTS_BY_OUTPUT
from ..volume import Grid, Volume

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")
SEQUENCE_FLAGS = {s: f"--{s}" for s in SEQUENCES}
#: Rigid co-registration of the other sequences to the reference: "auto" applies a move found
#: above the registration's own error (``registration.MIN_SHIFT_MM``), "always" any move found,
#: "never" trusts the headers' alignment.
COREGISTER = ("auto", "always", "never")

# Products written to the run folder under fixed names, on the user's reference grid.
FINAL_OUTPUTS = {
    "brain_mask": "brain_mask.nii.gz",
    "tumor": "tumor.nii.gz",
    "tumor_uncertainty": "tumor_uncertainty.nii.gz",
    "barriers": "barriers.nii.gz",
    "supervoxels": "supervoxels.nii.gz",
    "supervoxels_merged": "supervoxels_merged.nii.gz",
    "ctv": "ctv.nii.gz",
}
MANIFEST = "manifest.json"
WORK = "work"
LOCK = ".brainbarriers.lock"


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


def check_options(step: Step, options: Mapping) -> None:
    """Refuse options the step does not read: a misspelt one would silently be ignored."""
    unknown = sorted(set(options) - set(step.options or ()))
    if step.options is not None and unknown:
        raise InputError(None, f"{step.name}: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(step.options)})")


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
    sequences_any: tuple[str, ...] = ()  # of these, at least one must be given
    labels: tuple[str, ...] = ()
    version: str = "1"
    description: str = ""
    options: tuple[str, ...] | None = None  # the --set keys it reads; None: not checked

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
    check_writable_folder(out)


class PipelineRun:
    """One run of some steps on one case, in one run folder."""

    def __init__(
        self,
        inputs: Mapping[str, str | Path],
        out: str | Path,
        steps: list[Step],
        *,
        reference: str | None = None,
        coregister: str = "auto",
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
        self.error = ""

        unknown = set(inputs) - set(SEQUENCES)
        if unknown:
            raise InputError(None, f"unknown sequence(s): {', '.join(sorted(unknown))}")
        self.given = {s: Path(p) for s, p in inputs.items() if p is not None}
        if not self.given:
            raise InputError(None, "no input sequence given (use --t1, --t1ce, --t2, --flair, --ct)")
        self._check_plan()
        self.reference = self._choose_reference(reference)
        if coregister not in COREGISTER:
            raise InputError(None, f"--coregister {coregister!r}: expected one of {', '.join(COREGISTER)}")
        self.coregister = coregister
        self.coregistration: dict[str, dict] = {}
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
            if step.sequences_any and not set(step.sequences_any) & set(self.given):
                flags = ", ".join(SEQUENCE_FLAGS[s] for s in step.sequences_any)
                raise InputError(None, f"missing sequence: step '{step.name}' needs at least one "
                                 f"of {flags}")
            lacking = [p for p in step.inputs if p not in available]
            if lacking:
                raise InputError(
                    None, f"step '{step.name}' needs {', '.join(lacking)}, which no earlier step makes"
                )
            available |= set(step.outputs) | set(step.optional_outputs)
            check_options(step, self.options.get(step.name, {}))

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

    def _prepare_sequences(self, earlier_moves: dict) -> None:
        """Each sequence on the reference grid, co-registered as ``self.coregister`` says;
        ``earlier_moves``: the previous run's ``coregistration`` record in this folder."""
        ref = self.volumes[self.reference]
        self.input_sha256 = {name: sha256_file(path) for name, path in self.given.items()}
        self.coregistration = {}
        for name, volume in self.volumes.items():
            coregister = name != self.reference and self.coregister != "never"
            key = _hash({"file": self.input_sha256[name], "grid": self.grid.affine.tolist(),
                         "shape": self.grid.shape,
                         **({"coregister": self.coregister,
                             "to": self.input_sha256[self.reference]} if coregister else {})})
            if not volume.grid.same_as(ref.grid):
                self.warn(
                    f"{name} ({self.given[name]}) is on another grid ({volume.grid.describe()}) than "
                    f"the reference {self.reference} ({ref.grid.describe()}); resampled to it"
                )
            self.cancel.check()
            transform = (self._coregistration(name, volume, ref, earlier_moves.get(name))
                         if coregister else None)
            volume = resample_to(volume, ref.grid, transform=transform)
            self._cache[name] = to_canonical(volume.with_array(volume.array.astype(np.float32)))
            self._product_keys[name] = key

    def _coregistration(self, name: str, volume: Volume, ref: Volume, earlier: dict | None):
        """The rigid move that puts ``volume`` on the reference (a SimpleITK transform), or None
        where the headers' alignment is kept: a move within the registration's own error (mode
        "auto"), or one too large for a patient within one session (a failed registration).
        ``earlier`` (this sequence's record from the folder's previous run) gives the move
        without registering again when it was found for the same two files the same way."""
        from .. import registration as reg  # here: SimpleITK costs ~100 MB (see resample_to)

        key = _hash({"moving": self.input_sha256[name], "fixed": self.input_sha256[self.reference],
                     "method": reg.RIGID_METHOD})
        if earlier and earlier.get("key") == key:  # recorded to the bit: the same resampling
            transform = reg.euler_transform(earlier["center_lps"], earlier["euler3d_lps"])
        else:
            try:
                transform = reg.rigid_coregister(ref, volume)
            except RuntimeError as e:  # ITK's own failures (e.g. no overlap left to sample)
                reason = (str(e).strip().splitlines() or ["no reason given"])[-1]
                self.warn(f"{name} ({self.given[name]}): co-registration to the reference "
                          f"{self.reference} failed ({reason}); the headers' alignment is kept")
                return None
        shift, angle = reg.rigid_motion(transform)
        implausible = shift > reg.MAX_SHIFT_MM or angle > reg.MAX_ROTATION_DEG
        small = shift <= reg.MIN_SHIFT_MM and angle <= reg.MIN_ROTATION_DEG
        applied = not implausible and not (small and self.coregister == "auto")
        self.coregistration[name] = {
            "to": self.reference, "shift_mm": round(shift, 3), "rotation_deg": round(angle, 3),
            "applied": applied, "center_lps": list(transform.GetCenter()),
            "euler3d_lps": list(transform.GetParameters()), "key": key}
        move = f"{shift:.1f} mm and {angle:.1f} degrees"
        if implausible:
            self.warn(f"{name} ({self.given[name]}): co-registration to the reference {self.reference} "
                      f"found a move of {move}, more than a patient moves within one session; the "
                      "headers' alignment is kept: check that it is this patient's and its header")
        elif applied:
            self.warn(f"{name} ({self.given[name]}) rigidly co-registered to the reference "
                      f"{self.reference}: moved {move}")
        return transform if applied else None

    def _previous_manifest(self) -> dict:
        try:
            return json.loads((self.out / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------------------ running
    def run(self) -> dict[str, Path]:
        """Run the steps; returns the final outputs written (product -> path).

        The folder is locked for the run (a second run into it is refused). The folder then holds
        this run's products only: earlier outputs are removed before the steps run and rewritten
        at the end from the work products this run made or checked. A refused input leaves no
        folder that the run itself created.
        """
        created = _make_folder(self.out)
        with folder_lock(self.out):
            try:
                return self._run_locked()
            except InputError:
                if created:  # nothing of a refused run stays behind, not even its manifest
                    shutil.rmtree(self.out, ignore_errors=True)
                raise

    def _run_locked(self) -> dict[str, Path]:
        self.started = time.time()
        earlier = self._previous_manifest()
        previous = {s["name"]: s for s in earlier.get("steps", [])}
        _remove_partial_files(self.out)
        (self.out / WORK).mkdir(exist_ok=True)
        self._write_manifest("running")  # from here on the manifest names this run's inputs
        for name in _final_files():
            (self.out / name).unlink(missing_ok=True)
        self.emit(ProgressEvent("start", data={"steps": [s.name for s in self.steps],
                                               "out": str(self.out), "device": self.device}))
        status = "running"
        try:
            self._prepare_sequences(earlier.get("coregistration", {}))
            for step in self.steps:
                self.cancel.check()
                self._run_step(step, previous.get(step.name))
                self._write_manifest(status)
            self.cancel.check()
            self._remove_stale_work()
            outputs = self._export()
            status = "done"
        except Cancelled:
            status = "cancelled"
            raise
        except BaseException as e:
            status = "failed"
            self.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            try:
                self._write_manifest(status)
            except (OSError, InputError):
                if status == "done":
                    raise
                # Already failing (say, the disk is full): keep the first error.
        self.emit(ProgressEvent("done", data={"outputs": {k: str(v) for k, v in outputs.items()},
                                              "manifest": str(self.out / MANIFEST)}))
        return outputs

    def _remove_stale_work(self) -> None:
        """Work products this run neither made nor checked are an earlier run's: never kept."""
        for path in (self.out / WORK).glob("*.nii.gz"):
            if path.name[: -len(".nii.gz")] not in self._product_keys:
                path.unlink()

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
        # Earlier runs' files were removed at the start: what is written here is this run's.
        written: dict[str, Path] = {}
        for product, filename in FINAL_OUTPUTS.items():
            if self.has(product):
                written[product] = save_volume(self.user_grid_volume(product), self.out / filename)
        for product in self._product_keys:
            if product.endswith("_brain"):  # skull-stripped sequences, for the user and later runs
                written[product] = save_volume(
                    self.user_grid_volume(product), self.out / f"{product}.nii.gz"
                )
        label_maps = [p for p in SEGMENTS_BY_OUTPUT if self.has(p)]
        seg = write_segmentation({p: self.user_grid_volume(p) for p in label_maps},
                                 self.out / "segmentation.seg.nrrd")
        if seg is not None:
            written["segmentation"] = seg
        written["overview"] = write_overview(
            self.get(self.reference), {p: self.get(p) for p in label_maps},
            self.out / "overview.png", name=self.out.name, steps=[s.name for s in self.steps])
        return written

    def _write_manifest(self, status: str) -> None:
        manifest = {
            "status": status,
            "brainbarriers": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": self.device,
            "reference": self.reference,
            "coregister": self.coregister,
            "coregistration": self.coregistration,
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
            **({"error": self.error} if self.error else {}),
            "versions": software_versions(),
            "seconds": round(time.time() - self.started, 3),
        }
        path = self.out / MANIFEST
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2))


def _final_files() -> list[str]:
    """Every file name a run writes in its folder, besides the manifest and ``work/``."""
    brains = [f"{s}_brain.nii.gz" for s in SEQUENCES]
    return [*FINAL_OUTPUTS.values(), *brains, "segmentation.seg.nrrd", "overview.png"]


def _make_folder(out: Path) -> bool:
    """Make the run folder; True when this call created it (so a refused run may remove it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.mkdir()
        return True
    except FileExistsError:
        if not out.is_dir():
            raise InputError(out, "is a file, not a folder") from None
        return False


def _remove_partial_files(out: Path) -> None:
    """Temporaries of a run that was killed (SIGKILL, power loss: no ``finally`` ran)."""
    for folder in (out, out / WORK):
        if folder.is_dir():
            for path in folder.iterdir():
                if is_partial(path) and path.is_file():
                    path.unlink()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``.brainbarriers.lock``, released by the kernel if
    the process dies); a second run into the folder is refused with the holder's process id."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 16).decode(errors="replace").strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            raise InputError(folder, f"another brainbarriers run (process {holder}) is writing "
                             "to this folder; wait for it to finish or choose another --out")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:  # flock, not lockf: it also excludes a second run inside the same process
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _label_dtype(array: np.ndarray) -> type:
    top = int(array.max()) if array.size else 0
    return np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
