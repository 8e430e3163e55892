"""Fault suite: a run killed (SIGKILL) at seeded random points, two runs into one folder, a full disk.

What must hold after each fault: a rerun gives voxel-identical outputs, no temporary is left in the
run folder, a second concurrent run is refused with a clear message, and a full disk stops the run
with one clear error and nothing half-written. The steps are cheap stand-ins plus the real CTV step
on a small crop, so the suite takes seconds. Kills run in forked children (POSIX only).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainbarriers.ctv.step import STEP as CTV_STEP
from brainbarriers.errors import InputError
from brainbarriers.io import load_volume, save_volume
from brainbarriers.pipeline import PipelineRun, Step
from brainbarriers.volume import Volume

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children")

KILL_POINTS = 10
LOCK = ".brainbarriers.lock"


def _strip(ctx):
    mask = ctx.get("t1").array > 60
    out = {"brain_mask": ctx.new_volume(mask.astype(np.uint8))}
    for s in ctx.sequences():
        out[f"{s}_brain"] = ctx.new_volume(np.where(mask, ctx.get(s).array, 0).astype(np.float32))
    return out


def _tumour(ctx):
    t2 = ctx.get("t2_brain").array
    labels = np.zeros(t2.shape, np.uint8)
    labels[t2 > np.percentile(t2[t2 > 0], 90)] = 2
    core = np.zeros(t2.shape, bool)
    c = np.array(t2.shape) // 2
    core[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 3:c[2] + 3] = True
    labels[core] = 4
    labels[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 1:c[2] + 1] = 1
    return {"tumor": ctx.new_volume(labels)}


STEPS = [
    Step("skullstrip", _strip, sequences=("t1",), optional_inputs=("t2",), outputs=("brain_mask",),
         optional_outputs=("t1_brain", "t2_brain"), labels=("brain_mask",)),
    Step("tumor", _tumour, inputs=("t2_brain",), outputs=("tumor",), labels=("tumor",)),
    CTV_STEP,
]
OPTIONS = {"ctv": {"margin_mm": 6}}


@pytest.fixture(scope="module")
def inputs(small_case, tmp_path_factory):
    """A 2 mm crop of the phantom's T1 and T2 (fast), and the same crop flipped (another input)."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    region = (slice(36, 84), slice(36, 84), slice(24, 56))
    paths = {}
    for s in ("t1", "t2"):
        v = small_case.sequences[s]
        affine = v.affine.copy()
        affine[:3, 3] = v.world_coordinates(np.array([[36, 36, 24]]))[0]
        crop = Volume(np.ascontiguousarray(v.array[region]), affine)
        save_volume(crop, folder / f"{s}.nii.gz")
        save_volume(crop.with_array(crop.array[::-1].copy()), folder / f"{s}_other.nii.gz")
        paths[s] = folder / f"{s}.nii.gz"
    return paths, {s: folder / f"{s}_other.nii.gz" for s in ("t1", "t2")}


def run(given, out, **kw):
    return PipelineRun(given, out, STEPS, device="cpu", options=OPTIONS, **kw).run()


def voxels(out: Path) -> dict[str, np.ndarray]:
    """Every volume the run folder holds, by name (the segmentation by its layers)."""
    import slicerio

    found = {p.relative_to(out).as_posix(): np.asarray(nib.load(p).dataobj)
             for p in sorted(out.rglob("*.nii.gz"))}
    found["segmentation.seg.nrrd"] = slicerio.read_segmentation(
        str(out / "segmentation.seg.nrrd"))["voxels"]
    return found


def leftovers(out: Path, expected: set[str]) -> list[str]:
    """Files in the folder that a finished run does not write: temporaries, stale products."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).as_posix() not in expected)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An undisturbed run: its voxels, and the files it leaves."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(inputs[0], out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"ctv.nii.gz", "tumor.nii.gz", "t2_brain.nii.gz", "work/ctv.nii.gz", LOCK} <= files
    return voxels(out), files


class Checkpoints:
    """Counts the points of a run where a kill matters: every progress event, and every rename of
    a finished temporary into place (just before it, and just after)."""

    def __init__(self, kill_at: int | None = None):
        self.count, self.kill_at = 0, kill_at

    def tick(self) -> None:
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1

    def install(self, monkeypatch) -> None:
        real = os.replace

        def replace(src, dst):
            self.tick()
            real(src, dst)
            self.tick()

        monkeypatch.setattr(os, "replace", replace)


def killed_run(given, out, kill_at: int) -> int:
    """Run in a forked child that SIGKILLs itself at checkpoint ``kill_at``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        signal.alarm(120)
        try:
            points = Checkpoints(kill_at)
            mp = pytest.MonkeyPatch()
            points.install(mp)
            run(given, out, on_event=lambda event: points.tick())
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_sigkill_at_random_points_then_rerun_gives_the_same_voxels(inputs, reference, tmp_path,
                                                                    monkeypatch):
    expected_voxels, expected_files = reference
    points = Checkpoints()
    with monkeypatch.context() as mp:
        points.install(mp)
        run(inputs[0], tmp_path / "count", on_event=lambda event: points.tick())
    assert points.count > 30
    stale = tmp_path / "stale"
    run(inputs[1], stale)
    rng = np.random.default_rng(19)
    kills = sorted(rng.choice(points.count, size=KILL_POINTS, replace=False).tolist())
    for n, kill_at in enumerate(kills):
        out = tmp_path / f"kill{kill_at}"
        if n % 2:  # half the time the folder holds a finished run of another input
            shutil.copytree(stale, out)
        status = killed_run(inputs[0], out, kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at
        if (out / "manifest.json").exists():  # whole, as every file renamed into place
            json.loads((out / "manifest.json").read_text())
        run(inputs[0], out)
        assert not leftovers(out, expected_files), (kill_at, leftovers(out, expected_files))
        got = voxels(out)
        assert got.keys() == expected_voxels.keys(), kill_at
        for name, array in expected_voxels.items():
            np.testing.assert_array_equal(got[name], array, err_msg=f"{name} after kill {kill_at}")


def test_two_runs_into_one_folder_one_is_refused(inputs, reference, tmp_path):
    """A second process running into a busy folder is refused, naming the first; the first's
    results are whole."""
    out = tmp_path / "run"
    started, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(120)  # never outlive a stuck test
        try:
            def hold(event):
                if event.event == "step" and event.data.get("status") == "running":
                    os.write(started[1], b"x")  # inside the run, holding the folder
                    os.read(release[0], 1)  # once per step
            run(inputs[0], out, on_event=hold)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(started[1])  # so that a child dying early ends the read below
    os.close(release[0])
    try:
        assert os.read(started[0], 1) == b"x"
        with pytest.raises(InputError, match=rf"another brainbarriers run \(process {pid}\) is "
                                             "writing to this folder; wait for it"):
            run(inputs[1], out)
    finally:
        os.write(release[1], b"x" * len(STEPS))
        status = os.waitpid(pid, 0)[1]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"
    for name, array in reference[0].items():
        np.testing.assert_array_equal(voxels(out)[name], array, err_msg=name)


def full_disk(write, target_arg: int, after: int):
    """``write`` with the disk full from its ``after``-th call on: part of the file is written,
    then ENOSPC, as the kernel says; the disk stays full."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            target = Path(args[target_arg])
            target.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return write(*args, **kwargs)

    return wrapper


# (writer, how many of its writes succeed): work and final NIfTIs, the .seg.nrrd, the manifest.
DISK_FULL_POINTS = [("nibabel", 0), ("nibabel", 4), ("nibabel", 9), ("slicerio", 0),
                    ("text", 0), ("text", 2), ("text", 4)]


@pytest.mark.parametrize("writer, after", DISK_FULL_POINTS)
def test_a_full_disk_stops_the_run_with_one_error_and_nothing_half_written(
        inputs, reference, tmp_path, monkeypatch, writer, after):
    import slicerio

    out = tmp_path / "run"
    run(inputs[1], out)  # an earlier run's folder, rerun with another input on a full disk
    if writer == "nibabel":
        monkeypatch.setattr(nib, "save", full_disk(nib.save, 1, after))
    elif writer == "slicerio":
        monkeypatch.setattr(slicerio, "write_segmentation",
                            full_disk(slicerio.write_segmentation, 0, after))
    else:
        monkeypatch.setattr(Path, "write_text", full_disk(Path.write_text, 0, after))
    with pytest.raises(InputError, match="No space left on device") as e:
        run(inputs[0], out)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert not leftovers(out, reference[1]), leftovers(out, reference[1])
    # The manifest is whole and tells the truth: the earlier run untouched (the disk was full
    # before anything changed), or this run, not done.
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["status"] == "done":
        assert manifest["inputs"]["t1"]["path"] == str(inputs[1]["t1"])
        assert all((out / name).exists() for name in manifest["outputs"].values())
    else:
        assert manifest["status"] in ("running", "failed")
        assert manifest["inputs"]["t1"]["path"] == str(inputs[0]["t1"])
    for p in out.rglob("*.nii.gz"):
        load_volume(p, allow_empty=True)  # whole files only


def test_a_full_disk_leaves_no_new_folder(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(nib, "save", full_disk(nib.save, 1, 3))
    with pytest.raises(InputError, match="No space left on device"):
        run(inputs[0], tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_full_disk_is_one_line_from_the_command(inputs, tmp_path, monkeypatch, capsys):
    from brainbarriers.cli.main import main

    # Full from the first write on (the run's manifest, before the steps run).
    monkeypatch.setattr(Path, "write_text", full_disk(Path.write_text, 0, 0))
    code = main(["run", "--t1", str(inputs[0]["t1"]), "--steps", "skullstrip",
                 "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
