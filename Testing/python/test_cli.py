"""The command line: help for every command, bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from brainbarriers.cli.main import SUBCOMMANDS, build_parser


def brainbarriers(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "brainbarriers.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_for_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)
    for name in SUBCOMMANDS:
        result = brainbarriers(name, "--help")
        assert result.returncode == 0 and "usage: brainbarriers" in result.stdout, name


@pytest.fixture()
def good(small_case_dir):
    return {s: small_case_dir / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}


def _write(tmp_path, name, array):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


@pytest.mark.parametrize("problem, make, expect", [
    ("missing", lambda t: t / "nope.nii.gz", "does not exist"),
    ("2d", lambda t: _write(t, "flat.nii.gz", np.ones((30, 30), np.float32)), "2D"),
    ("4d", lambda t: _write(t, "four.nii.gz", np.ones((8, 8, 8, 2), np.float32)), "4D"),
    ("nan", lambda t: _write(t, "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32)), "NaN"),
    ("zero", lambda t: _write(t, "zero.nii.gz", np.zeros((8, 8, 8), np.int16)), "empty"),
    ("gzip", lambda t: (t / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage") and t / "cut.nii.gz",
     "corrupt"),
])
def test_bad_input_one_line_exit_2_folder_untouched(tmp_path, good, problem, make, expect):
    bad = make(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("from an earlier run")
    result = brainbarriers("run", "--t1", good["t1"], "--t1ce", bad, "--t2", good["t2"],
                           "--flair", good["flair"], "--out", out, "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and expect in lines[0], result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


def test_unwritable_output_folder(good):
    result = brainbarriers("run", "--t1", good["t1"], "--out", "/sys/brainbarriers-test",
                           "--steps", "skullstrip")
    assert result.returncode == 2
    assert "/sys/brainbarriers-test" in result.stderr and "not writable" in result.stderr


def test_json_progress_reports_errors_as_json(tmp_path, good):
    result = brainbarriers("run", "--t1", tmp_path / "nope.nii.gz", "--out", tmp_path / "o",
                           "--steps", "skullstrip", "--json-progress")
    assert result.returncode == 2
    event = json.loads(result.stdout.strip().splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "input" and "nope.nii.gz" in event["message"]


def test_unknown_step_and_bad_option(tmp_path, good):
    result = brainbarriers("run", "--t1", good["t1"], "--out", tmp_path / "o", "--steps", "nosuch")
    assert result.returncode == 2 and "unknown step" in result.stderr
    result = brainbarriers("run", "--t1", good["t1"], "--out", tmp_path / "o", "--set", "oops",
                           "--steps", "skullstrip")
    assert result.returncode == 2 and "STEP.KEY=VALUE" in result.stderr
    assert not (tmp_path / "o").exists()


def test_json_progress_protocol_on_a_real_run(tmp_path, good):
    """One JSON object per line: start, step/progress events with rising fractions, done."""
    result = brainbarriers("run", "--t1", good["t1"], "--t1ce", good["t1ce"], "--out",
                           tmp_path / "o", "--steps", "skullstrip", "--device", "cpu",
                           "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert events[0]["event"] == "start" and events[0]["steps"] == ["skullstrip"]
    assert events[-1]["event"] == "done"
    assert (tmp_path / "o" / "brain_mask.nii.gz").exists()
    assert events[-1]["outputs"]["brain_mask"] == str(tmp_path / "o" / "brain_mask.nii.gz")
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    statuses = [e["status"] for e in events if e["event"] == "step"]
    assert statuses == ["running", "done"]
