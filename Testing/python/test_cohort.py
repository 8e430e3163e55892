"""`brainbarriers cohort`: case discovery (BraTS, BIDS, CSV) on tiny synthetic folders, and real
2-worker Dask LocalClusters (processes, 1 thread each) on small phantom cases with cheap stand-in
steps: a broken case is a row while the others finish, the table's figures are right, a rerun
skips finished cases, and a worker SIGKILLed mid-case has its case retried."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from cohort_standins import STEPS, marker_case, tumour_rule

from brainbarriers.cohort import ClusterSpec, find_cohort, run_cohort
from brainbarriers.cohort.runner import finished_row, local_cluster_size
from brainbarriers.errors import InputError
from brainbarriers.io import save_volume

SEQS = ("t1", "t1ce", "t2", "flair")


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


# ------------------------------------------------------------------------------------ discovery
def test_brats_layouts_2018_2021_2023(tmp_path):
    touch(tmp_path / "HGG" / "Brats18_2013_2_1",
          *(f"Brats18_2013_2_1_{s}.nii.gz" for s in (*SEQS, "seg")))
    touch(tmp_path / "BraTS2021_00000", *(f"BraTS2021_00000_{s}.nii.gz" for s in SEQS))
    touch(tmp_path / "val" / "BraTS-GLI-00001-000",
          *(f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg")))
    # A case lacking its FLAIR is kept: its row will say which step needs it.
    touch(tmp_path / "BraTS2021_00002", *(f"BraTS2021_00002_{s}.nii.gz" for s in SEQS[:3]))
    cases = {c.id: c for c in find_cohort(tmp_path)}
    assert sorted(cases) == ["BraTS-GLI-00001-000", "BraTS2021_00000", "BraTS2021_00002",
                             "Brats18_2013_2_1"]
    old, new = cases["Brats18_2013_2_1"], cases["BraTS-GLI-00001-000"]
    assert old.layout == "brats2021" and new.layout == "brats2023"
    assert Path(old.inputs["t1ce"]).name == "Brats18_2013_2_1_t1ce.nii.gz"
    assert Path(old.truth).name == "Brats18_2013_2_1_seg.nii.gz"
    assert Path(new.inputs["t1ce"]).name == "BraTS-GLI-00001-000-t1c.nii.gz"
    assert Path(new.inputs["flair"]).name == "BraTS-GLI-00001-000-t2f.nii.gz"
    assert Path(new.truth).name == "BraTS-GLI-00001-000-seg.nii.gz"
    assert cases["BraTS2021_00000"].truth is None
    assert sorted(cases["BraTS2021_00002"].inputs) == ["t1", "t1ce", "t2"]


def test_bids_with_sessions_contrast_and_truth(tmp_path):
    touch(tmp_path / "sub-01" / "anat", "sub-01_T1w.nii.gz", "sub-01_ce-gadolinium_T1w.nii.gz",
          "sub-01_T2w.nii.gz", "sub-01_FLAIR.nii.gz", "sub-01_dseg.nii.gz", "sub-01_T1w.json")
    touch(tmp_path / "sub-02" / "ses-pre" / "anat", "sub-02_ses-pre_T1w.nii.gz",
          "sub-02_ses-pre_ce-gadolinium_T1w.nii.gz", "sub-02_ses-pre_FLAIR.nii.gz")
    touch(tmp_path / "sub-02" / "ses-post" / "anat", "sub-02_ses-post_run-1_T2w.nii.gz",
          "sub-02_ses-post_run-2_T2w.nii.gz", "sub-02_ses-post_T1w.nii")
    (tmp_path / "dataset_description.json").write_text("{}")
    cases = {c.id: c for c in find_cohort(tmp_path)}
    assert sorted(cases) == ["sub-01", "sub-02_ses-post", "sub-02_ses-pre"]
    one = cases["sub-01"]
    assert {k: Path(v).name for k, v in one.inputs.items()} == {
        "t1": "sub-01_T1w.nii.gz", "t1ce": "sub-01_ce-gadolinium_T1w.nii.gz",
        "t2": "sub-01_T2w.nii.gz", "flair": "sub-01_FLAIR.nii.gz"}
    assert Path(one.truth).name == "sub-01_dseg.nii.gz" and not one.problems
    assert sorted(cases["sub-02_ses-pre"].inputs) == ["flair", "t1", "t1ce"]
    post = cases["sub-02_ses-post"]
    assert "t2" not in post.inputs and "2 t2 files" in post.problems[0]  # two runs: not a guess


def test_csv_relative_paths_and_errors(tmp_path):
    (tmp_path / "a").mkdir()
    table = tmp_path / "cases.csv"
    table.write_text("ID,t1,t1ce,t2,flair,seg\n"
                     f"p1,a/t1.nii.gz,a/t1ce.nii.gz,,{tmp_path}/f.nii.gz,a/seg.nii.gz\n"
                     "p2,b/t1.nii.gz,,,,\n")
    cases = {c.id: c for c in find_cohort(table)}
    assert cases["p1"].inputs == {"t1": str(tmp_path / "a/t1.nii.gz"),
                                  "t1ce": str(tmp_path / "a/t1ce.nii.gz"),
                                  "flair": str(tmp_path / "f.nii.gz")}
    assert cases["p1"].truth == str(tmp_path / "a/seg.nii.gz") and cases["p2"].truth is None
    table.write_text("id,t1\nx,a.nii.gz\nx,b.nii.gz\n")
    with pytest.raises(InputError, match="more than once: x"):
        find_cohort(table)
    table.write_text("id,t1\n../up,a.nii.gz\n")
    with pytest.raises(InputError, match="unusable as folder names"):
        find_cohort(table)
    table.write_text("name,t1\nx,a.nii.gz\n")
    with pytest.raises(InputError, match="needs an id column"):
        find_cohort(table)
    with pytest.raises(InputError, match="holds no cases"):
        find_cohort(tmp_path / "a")


# ------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two phantom cases at 4 mm in BraTS 2021 names (truths: the stand-in's own rule, so Dice 1,
    and that rule shifted), and a third whose T1 is not an image."""
    from brainbarriers.phantom import make_case

    data = tmp_path_factory.mktemp("cohort_data")
    for i, shift in ((1, 0), (2, 3)):
        case = make_case(seed=i, zoom=4)
        folder = data / f"BraTS2021_0000{i}"
        folder.mkdir()
        for s in SEQS:
            save_volume(case.sequences[s], folder / f"BraTS2021_0000{i}_{s}.nii.gz")
        t2 = case.sequences["t2"]
        truth = np.roll(tumour_rule(t2.array), shift, axis=0)
        save_volume(t2.with_array(truth), folder / f"BraTS2021_0000{i}_seg.nii.gz", np.uint8)
    shutil.copytree(data / "BraTS2021_00001", data / "BraTS2021_00003")
    for path in (data / "BraTS2021_00003").iterdir():
        path.rename(path.with_name(path.name.replace("00001", "00003")))
    (data / "BraTS2021_00003" / "BraTS2021_00003_t1.nii.gz").write_bytes(b"not an image")
    return data


def two_workers() -> ClusterSpec:
    return ClusterSpec(workers=2, threads_per_worker=1, memory_limit="1GB")


def test_cohort_on_two_workers_broken_case_table_and_rerun(cohort, tmp_path):
    out = tmp_path / "out"
    cases = find_cohort(cohort)
    events = []
    # --gpu: the network steps (the stand-in tumour step among them) take turns, even on CPU.
    options = {"tumor": {"log": str(tmp_path / "tumor_times")}}
    spec = two_workers()
    spec.gpu = True
    result = run_cohort(cases, out, STEPS, options=options, device="cpu", cluster=spec,
                        on_event=events.append)
    (a0, a1), (b0, b1) = sorted(tuple(map(float, line.split()))
                                for line in (tmp_path / "tumor_times").read_text().splitlines())
    assert a1 <= b0  # one after the other, though two workers ran the two cases
    rows = {r["case"]: r for r in result.rows}
    assert [rows[c]["status"] for c in sorted(rows)] == ["done", "done", "failed"]
    assert result.counts == {"done": 2, "failed": 1}
    broken = rows["BraTS2021_00003"]
    assert broken["error"].startswith("input:") and "BraTS2021_00003_t1.nii.gz" in broken["error"]

    good = rows["BraTS2021_00001"]
    assert good["dice_WT"] == 1.0 and good["hd95_WT"] == 0.0 and good["dice_ET"] == 1.0
    assert 0.0 < rows["BraTS2021_00002"]["dice_WT"] < 1.0  # its truth is shifted by 3 voxels
    t2 = (cohort / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz")
    from brainbarriers.io import load_volume

    vol = load_volume(t2)
    voxel_ml = float(np.prod(vol.spacing)) / 1000
    labels = tumour_rule(vol.array)
    assert good["ml_WT"] == pytest.approx(np.count_nonzero(labels) * voxel_ml, abs=1e-3)
    enhancing = np.count_nonzero(labels == 4) * voxel_ml
    assert good["ml_enhancing_tumor"] == pytest.approx(enhancing, abs=1e-3)
    assert good["ml_brain"] == pytest.approx(np.count_nonzero(load_volume(
        cohort / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz").array > 0) * voxel_ml, abs=1e-3)
    assert good["n_warnings"] == 1 and "stand-in tumour step" in good["warnings"]
    assert good["seconds_tumor"] >= 0 and good["seconds"] > 0
    assert good["worker"].startswith("tcp://")
    # Two processes ran the cases, each case in its own normal run folder.
    manifest = json.loads((out / "BraTS2021_00001" / "manifest.json").read_text())
    assert manifest["status"] == "done" and (out / "BraTS2021_00001" / "tumor.nii.gz").exists()
    assert [e["case"] for e in events if e["event"] == "case"].count("BraTS2021_00002") == 1
    # The workers' step events reach the client (before the case's end: one stream, in order).
    steps = [(e["case"], e["step"], e["status"]) for e in events if e["event"] == "step"]
    assert ("BraTS2021_00001", "tumor", "running") in steps
    assert ("BraTS2021_00002", "tumor", "done") in steps
    assert {"event": "warning", "case": "BraTS2021_00001", "step": "tumor",
            "message": "stand-in tumour step"}.items() <= next(
        e for e in events if e["event"] == "warning" and e["case"] == "BraTS2021_00001").items()

    with (out / "cohort.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["case"], r["status"]) for r in table] == [
        ("BraTS2021_00001", "done"), ("BraTS2021_00002", "done"), ("BraTS2021_00003", "failed")]
    import pyarrow.parquet as pq

    parquet = pq.read_table(out / "cohort.parquet").to_pydict()
    assert parquet["status"] == ["done", "done", "failed"] and parquet["dice_WT"][0] == 1.0

    page = (out / "cohort.html").read_text()
    assert "Failed cases" in page and "BraTS2021_00003_t1.nii.gz" in page
    assert "<h2>Dice</h2><img src='data:image/png;base64," in page and "<h2>Volume (ml)</h2>" in page
    worst = page[page.index("Worst cases (lowest whole-tumour Dice)"):]
    assert worst.index("BraTS2021_00002") < worst.index("BraTS2021_00001")  # the shifted truth

    # Rerun: the finished cases are not run again (their run folders untouched); the broken
    # case is tried again and fails again.
    stamp = (out / "BraTS2021_00001" / "manifest.json").stat().st_mtime_ns
    again = run_cohort(cases, out, STEPS, options=options, device="cpu", cluster=two_workers())
    rows = {r["case"]: r for r in again.rows}
    assert not rows["BraTS2021_00001"]["ran"] and not rows["BraTS2021_00002"]["ran"]
    assert rows["BraTS2021_00001"]["dice_WT"] == 1.0
    assert rows["BraTS2021_00003"]["ran"] and rows["BraTS2021_00003"]["status"] == "failed"
    assert (out / "BraTS2021_00001" / "manifest.json").stat().st_mtime_ns == stamp

    # Other options, or a changed input, make a finished case due again.
    case = next(c for c in cases if c.id == "BraTS2021_00001")
    assert finished_row(case, out, STEPS, options) is not None
    assert finished_row(case, out, STEPS, {}) is None
    assert finished_row(case, out, STEPS[:1], options) is None
    os.utime(case.inputs["t2"])
    assert finished_row(case, out, STEPS, options) is None


@pytest.mark.skipif(not hasattr(os, "kill") or os.name == "nt", reason="SIGKILL")
def test_worker_killed_mid_case_is_retried(cohort, tmp_path):
    listing = tmp_path / "cases.csv"  # the CSV layout, naming the two good cases
    with listing.open("w") as f:
        f.write("id,t1,t2\n")
        for i in (1, 2):
            folder = cohort / f"BraTS2021_0000{i}"
            f.write(f"c{i},{folder}/BraTS2021_0000{i}_t1.nii.gz,{folder}/BraTS2021_0000{i}_t2.nii.gz\n")
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    result = run_cohort(find_cohort(listing), out, STEPS, device="cpu", cluster=two_workers(),
                        options={"tumor": {"kill_once": str(marker)}})
    pid, killed_case = marker_case(marker)
    assert killed_case in ("c1", "c2")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that worker process is gone
    rows = {r["case"]: r for r in result.rows}
    assert rows["c1"]["status"] == rows["c2"]["status"] == "done", rows
    manifest = json.loads((out / killed_case / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert not [p for p in (out / killed_case).rglob("*") if ".part" in p.name]

    # Without retries the same kill is the case's failed row, and the other case still finishes.
    marker.unlink()
    spec = two_workers()
    spec.retries = 0
    result = run_cohort(find_cohort(listing), tmp_path / "out0", STEPS, device="cpu",
                        cluster=spec, options={"tumor": {"kill_once": str(marker)}})
    _, killed_case = marker_case(marker)
    rows = {r["case"]: r for r in result.rows}
    assert rows[killed_case]["status"] == "failed" and "worker died" in rows[killed_case]["error"]
    other = ({"c1", "c2"} - {killed_case}).pop()
    assert rows[other]["status"] == "done"


def test_command_json_progress_exit_codes_and_rerun(cohort, tmp_path, capsys, monkeypatch):
    """The command end to end on a 1-worker LocalCluster (the stand-in steps in place of the
    registry's, which need minutes): JSON lines on stdout, exit 1 when a case failed, a rerun
    that starts no cluster, exit 2 for a bad option before anything runs."""
    import brainbarriers.pipeline
    from brainbarriers.cli.main import main

    monkeypatch.setattr(brainbarriers.pipeline, "plan", lambda names: STEPS)
    out = tmp_path / "out"
    args = ["cohort", str(cohort), "--out", str(out), "--device", "cpu", "--workers", "1",
            "--json-progress"]
    assert main(args) == 1  # the broken case failed
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "start", "cases": 3, "to_run": 3, "out": str(out)}
    assert events[-1]["event"] == "done" and events[-1]["counts"] == {"done": 2, "failed": 1}
    finished = {e["case"]: e["status"] for e in events if e["event"] == "case"}
    assert finished == {"BraTS2021_00001": "done", "BraTS2021_00002": "done",
                        "BraTS2021_00003": "failed"}
    with (out / "cohort.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done", "done", "failed"]

    # Rerun over a CSV naming the two good cases' same files: nothing to run, exit 0.
    listing = tmp_path / "good.csv"
    listing.write_text("id,t1,t1ce,t2,flair\n" + "".join(
        f"{c}," + ",".join(str(cohort / c / f"{c}_{s}.nii.gz") for s in SEQS) + "\n"
        for c in ("BraTS2021_00001", "BraTS2021_00002")))
    assert main(["cohort", str(listing), *args[2:]]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["to_run"] == 0
    assert {"event": "case", "case": "BraTS2021_00001", "status": "done", "skipped": True} in events
    with (out / "cohort.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done", "done"]

    assert main([*args, "--set", "tumor=1"]) == 2
    assert "expected STEP.KEY=VALUE" in capsys.readouterr().err


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child")
def test_ctrl_c_cancels_cleanly_and_a_rerun_picks_up(cohort, tmp_path):
    import subprocess
    import sys
    import time

    from cohort_standins import __file__ as standins

    script = tmp_path / "cohort.py"
    script.write_text(
        "import sys\n"
        "from cohort_standins import STEPS\n"
        "from brainbarriers.cohort import ClusterSpec, find_cohort, run_cohort\n"
        "from brainbarriers.errors import Cancelled\n"
        "if __name__ == '__main__':  # spawned workers import this module again\n"
        "    try:\n"
        "        run_cohort(find_cohort(sys.argv[1]), sys.argv[2], STEPS, device='cpu',\n"
        "                   cluster=ClusterSpec(workers=1, memory_limit='1GB'),\n"
        "                   options={'tumor': {'hold': sys.argv[3]}})\n"
        "    except Cancelled:\n"
        "        sys.exit(130)\n")
    out, hold = tmp_path / "out", tmp_path / "hold"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(standins).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    # As from a terminal: SIGINT at its default (a process started with it ignored - which this
    # pytest process may pass on, seen in the full suite - keeps ignoring it, and Ctrl-C does nothing).
    child = subprocess.Popen([sys.executable, str(script), str(cohort), str(out), str(hold)],
                             env=env, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not (hold.exists() and hold.read_text()) and time.time() < deadline:
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.2)
        pid, held = marker_case(hold)
        child.send_signal(2)  # SIGINT: what Ctrl-C sends
        # Generous: the cancel grace (CANCEL_GRACE_S) plus closing the cluster, on a loaded machine.
        assert child.wait(timeout=90) == 130, child.stderr.read()
    finally:
        child.kill()
    deadline = time.time() + 30
    while time.time() < deadline:  # the cluster is closed: its worker process is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker {pid} still runs after the cancel")
    with (out / "cohort.csv").open() as f:
        table = {r["case"]: r["status"] for r in csv.DictReader(f)}
    assert table[held] == "cancelled" and len(table) == 3
    # The held case stopped at a safe point and says so; the queued good case never started.
    assert json.loads((out / held / "manifest.json").read_text())["status"] == "cancelled"
    queued = ({"BraTS2021_00001", "BraTS2021_00002"} - {held}).pop()
    assert table[queued] == "cancelled" and not (out / queued).exists()

    # The rerun (the hold is spent) finishes what the cancelled run did not.
    result = run_cohort(find_cohort(cohort), out, STEPS, device="cpu", cluster=two_workers(),
                        options={"tumor": {"hold": str(hold)}})
    assert result.counts == {"done": 2, "failed": 1}
    assert json.loads((out / held / "manifest.json").read_text())["status"] == "done"
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def test_progress_bar_shows_each_running_cases_step(capsys):
    from brainbarriers.cli.cohort import CohortProgress

    bar = CohortProgress(3)
    bar({"event": "start", "cases": 3, "to_run": 3, "out": "x"})
    bar({"event": "step", "case": "a", "step": "tumor", "status": "running"})
    bar({"event": "step", "case": "b", "step": "skullstrip", "status": "running"})
    assert bar._bar.postfix == "a:tumor b:skullstrip"
    bar({"event": "case", "case": "a", "status": "done", "error": ""})
    bar({"event": "case", "case": "c", "status": "failed", "error": "input: bad"})
    assert bar._bar.n == 2 and bar._bar.postfix == "b:skullstrip"
    bar({"event": "step", "case": "a", "step": "ctv", "status": "running"})  # late, from a worker
    assert bar._bar.postfix == "b:skullstrip"
    bar({"event": "done", "counts": {"done": 1, "failed": 1}, "table": "t.csv", "report": "r"})
    err = capsys.readouterr().err
    assert "c: failed input: bad" in err and "1 done, 1 failed; table: t.csv" in err


def test_local_cluster_size_from_cores_memory_and_cases(monkeypatch):
    import psutil

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"total": 24 * 2**30}))
    assert local_cluster_size(100, ClusterSpec()) == (6, 1, 2)  # memory: 4 GB a case
    assert local_cluster_size(3, ClusterSpec()) == (3, 1, 5)  # no more workers than cases
    assert local_cluster_size(100, ClusterSpec(workers=2, threads_per_worker=2)) == (2, 2, 4)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"total": 2**30}))
    assert local_cluster_size(100, ClusterSpec()) == (1, 1, 16)
