"""One pipeline run from the scene and back, without Qt: export the input volume nodes to a private
temporary folder, start the worker, turn its events into overall progress, import the results into
the scene when it ends, clean up. The Slicer module drives it from a QTimer (``poll``) or, for the
console and batch mode, with ``wait``. On failure or cancel the scene is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import scene as bridge
from .worker_client import CANCELLED, DONE, RUNNING, WorkerClient, python_command, worker_command

SEQUENCES = ("t1", "t1ce", "t2", "flair", "ct")
DEVICES = ("auto", "cpu", "cuda")


def core_pythonpath() -> str | None:
    """The folder holding the ``brainbarriers`` package when it is not installed in the Python the
    worker runs: the extension ships it beside the module (installed build), and a source checkout
    has it two levels up. None when ``brainbarriers`` is importable as it is."""
    here = Path(__file__).resolve().parent  # .../BrainBarriersLib
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "brainbarriers" / "__init__.py").exists():
            return str(candidate)
    return None


def worker_environment(device: str) -> dict[str, str]:
    env = dict(os.environ)
    path = core_pythonpath()
    if path:
        env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device == "cpu":  # a forced CPU run must not touch (or wait for) the GPU at all
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class RunStatus:
    """What the panel shows: overall fraction, a status line, and the outcome."""

    fraction: float = 0.0
    message: str = ""
    step: str | None = None
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    state: str = "idle"
    error: dict | None = None


def link_supervoxel_maps(nodes: dict, input_nodes: dict) -> None:
    """Mark a run's supervoxel map nodes with what the Segment Editor's Supervoxels effect needs:
    the input image nodes its hierarchy is built from, and the run's uncertainty node (by which
    it lists the regions to review first)."""
    sources = ",".join(n.GetID() for n in input_nodes.values() if n.GetID())
    uncertainty = nodes.get("tumor_uncertainty")
    for product in bridge.LABELMAP_PRODUCTS:
        if nodes.get(product) is not None:
            nodes[product].SetAttribute("BrainBarriers.SupervoxelSources", sources)
            if uncertainty is not None:
                nodes[product].SetAttribute("BrainBarriers.Uncertainty", uncertainty.GetID())


class PipelineJob:
    """A run of some steps on volume nodes of ``scene``; results imported into the same scene."""

    def __init__(self, scene, inputs: Mapping[str, object], *, steps: Sequence[str] | None = None,
                 device: str = "auto", options: Mapping[str, Mapping[str, object]] | None = None,
                 reference: str | None = None, coregister: str = "auto", name: str = "BrainBarriers",
                 timeout: float | None = None, python: Sequence[str] | None = None,
                 keep_files: bool = False, work_dir: str | Path | None = None,
                 on_update: Callable[[PipelineJob], None] | None = None):
        self.scene = scene
        self.inputs = {k: v for k, v in inputs.items() if v is not None}
        unknown = set(self.inputs) - set(SEQUENCES)
        if unknown:
            raise ValueError(f"unknown input(s) {sorted(unknown)}; use {', '.join(SEQUENCES)}")
        if not self.inputs:
            raise ValueError("no input volume selected")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}")
        self.steps = list(steps) if steps else None
        self.device = device
        self.options = options or {}
        self.reference_key = reference or next(s for s in ("t1ce", "t1", "t2", "flair", "ct")
                                               if s in self.inputs)
        self.reference_node = self.inputs[self.reference_key]
        self.coregister = coregister
        self.name = name
        self.timeout = timeout
        self.python = list(python) if python else python_command()
        self.keep_files = keep_files
        self.work_dir = Path(work_dir) if work_dir else None
        self.on_update = on_update
        self.status = RunStatus()
        self.client: WorkerClient | None = None
        self.nodes: dict = {}  # imported: {"segmentation": node, "supervoxels": node, ...}
        self._temp: Path | None = None

    # ------------------------------------------------------------------------------ control
    @property
    def folder(self) -> Path | None:
        return self._temp

    def start(self) -> PipelineJob:
        """Export the inputs and start the worker (raises bridge.SceneError for unusable nodes;
        nothing is left behind then)."""
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self._temp = Path(tempfile.mkdtemp(prefix="brainbarriers-", dir=self.work_dir))
        try:
            files = {}
            for sequence, node in self.inputs.items():
                files[sequence] = bridge.export_volume(node, self._temp / "inputs" /
                                                       f"{sequence}.nii.gz")
            command = worker_command(self.python, files, self._temp / "run", steps=self.steps,
                                     device=self.device, options=self.options,
                                     reference=self.reference_key, coregister=self.coregister)
            self.client = WorkerClient(command, env=worker_environment(self.device),
                                       timeout=self.timeout, log_path=self._temp / "worker.log")
            self.client.start()
        except BaseException:
            self._cleanup(force=True)
            raise
        self.status.state = RUNNING
        self.status.message = "starting the worker"
        self._notify()
        return self

    def poll(self) -> bool:
        """Handle what the worker reported; True while the run goes on."""
        if self.client is None:
            return False
        for event in self.client.poll():
            self._handle(event)
        return self.status.state == RUNNING

    def wait(self, interval: float = 0.2) -> str:
        """Block until the run ends and its results are in the scene; returns the final state."""
        import time

        while self.poll():
            time.sleep(interval)
        return self.status.state

    def cancel(self) -> None:
        if self.client is not None:
            self.client.cancel()
        self.poll()

    # ------------------------------------------------------------------------------ internals
    def _notify(self) -> None:
        if self.on_update is not None:
            self.on_update(self)

    def _overall(self, step: str | None, fraction: float) -> float:
        steps = self.status.steps
        if not steps or step not in steps:
            return self.status.fraction
        # Import takes the last 5 %.
        return 0.95 * (steps.index(step) + min(max(fraction, 0.0), 1.0)) / len(steps)

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        st = self.status
        if kind == "start":
            st.steps = list(event.get("steps", []))
            st.message = f"running {', '.join(st.steps)} on {event.get('device', '?')}"
        elif kind == "step":
            st.step = event.get("step")
            st.fraction = self._overall(st.step, event.get("fraction") or 0.0)
            st.message = f"{st.step}: {event.get('message') or event.get('status', '')}"
        elif kind == "progress":
            st.step = event.get("step")
            st.fraction = self._overall(st.step, event.get("fraction") or 0.0)
            st.message = f"{st.step}: {event.get('message', '')}".rstrip(": ")
        elif kind == "warning":
            st.warnings.append(event.get("message", ""))
        elif kind == "finished":
            self._finished(event)
        self._notify()

    def _finished(self, event: dict) -> None:
        st = self.status
        if event["state"] != DONE:
            st.state = event["state"]
            st.error = event.get("error")
            st.message = ("cancelled" if st.state == CANCELLED
                          else f"{st.state}: {(st.error or {}).get('message', '')}")
            self._cleanup()
            return
        st.message = "importing the results"
        try:
            outputs = event["result"].get("outputs", {})
            self.nodes = bridge.import_outputs(self.scene, outputs, self.reference_node, self.name,
                                               moves=self._coregistrations())
            link_supervoxel_maps(self.nodes, self.inputs)
        except Exception as e:  # the bridge removed what it had added
            st.state = "failed"
            st.error = {"kind": "import", "message": f"{type(e).__name__}: {e}",
                        "log": self.client.log_tail() if self.client else ""}
            st.message = f"failed: {st.error['message']}"
            self._cleanup()
            return
        st.state = DONE
        st.fraction = 1.0
        made = [n.GetName() for n in self.nodes.values() if n is not None]
        st.message = f"done in {event.get('seconds', 0):.0f} s: {', '.join(made) or 'no outputs'}"
        self._cleanup()

    def _coregistrations(self) -> dict:
        """{sequence: (input node, RAS matrix onto the reference)} for each sequence the run moved
        (its manifest's ``coregistration``)."""
        from brainbarriers.registration import sequence_to_reference_ras

        manifest = json.loads((self._temp / "run" / "manifest.json").read_text())
        return {sequence: (self.inputs[sequence], sequence_to_reference_ras(record))
                for sequence, record in manifest.get("coregistration", {}).items() if record["applied"]}

    def _cleanup(self, force: bool = False) -> None:
        if self._temp is None:
            return
        if self.keep_files and not force:
            return
        # A failed run keeps only its log (named in the error); the exported images always go.
        if not force and self.status.state not in (DONE, CANCELLED) and self.status.error:
            for sub in ("inputs", "run"):
                shutil.rmtree(self._temp / sub, ignore_errors=True)
            self.status.error["log_path"] = str(self._temp / "worker.log")
            return
        shutil.rmtree(self._temp, ignore_errors=True)
        self._temp = None
