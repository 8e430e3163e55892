"""``brainbarriers dicom-node`` against a real PACS: Orthanc (Debian ``orthanc``) started here on free
ports with its own storage, a study made from the demo case pushed with dcmtk's ``storescu``, and the
RT Structure Set and SEG found in Orthanc through its REST API. Then the failure cases, each with its
log line and the node still running; the spool surviving a restart; the configuration's checks and
the series classification.

The node runs the ``skullstrip`` step only (the fastest real step) on a 2 mm copy of the demo case.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest

from brainbarriers.dicom.node import (
    DicomNode,
    check_steps,
    classify_series,
    load_config,
    study_key,
)
from brainbarriers.dicom.series import write_series
from brainbarriers.errors import InputError
from brainbarriers.io import load_volume
from brainbarriers.volume import Volume

pynetdicom = pytest.importorskip("pynetdicom", reason="pynetdicom not installed (extra 'dicom')")

DEMO = Path(str(resources.files("brainbarriers") / "data" / "demo"))
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def _dcmtk(name: str) -> str | None:
    """dcmtk's tool ``name`` on PATH (pynetdicom installs apps of the same names in the venv)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK) and not path.resolve().is_relative_to(
                Path(sys.prefix).resolve()):
            return str(path)
    return None


STORESCU = _dcmtk("storescu")
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DESCRIPTIONS = {"t1": "T1 MPRAGE", "t1ce": "T1 MPRAGE post Gd", "t2": "T2 TSE", "flair": "FLAIR"}
PATIENT = ("Demo^Patient", "DEMO0001")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def demo_2mm(sequence: str) -> Volume:
    volume = load_volume(DEMO / f"{sequence}.nii.gz")
    affine = volume.affine.copy()
    affine[:3, :3] *= 2
    return Volume(np.ascontiguousarray(volume.array[::2, ::2, ::2]), affine)


def make_study(folder: Path, sequences=("t1", "t1ce", "t2", "flair"), *, non_mr: bool = False) -> dict:
    """A study of the demo case at 2 mm (one series per sequence, one frame of reference), as a
    scanner would send it; optionally with a Secondary Capture (non-MR) series."""
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    info = {"study": study, "frame": frame, "series": {}, "sops": {}, "folder": folder}
    for number, sequence in enumerate(sequences, start=2):
        series = write_series(demo_2mm(sequence), folder / sequence, patient_name=PATIENT[0],
                              patient_id=PATIENT[1], study_uid=study,
                              description=DESCRIPTIONS[sequence])
        for ds in series.datasets:
            ds.FrameOfReferenceUID, ds.SeriesNumber = frame, number
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.save_as(ds.filename, enforce_file_format=True)
        info["series"][sequence] = series.datasets[0].SeriesInstanceUID
        info["sops"][sequence] = {ds.SOPInstanceUID for ds in series.datasets}
    if non_mr:
        ds = pydicom.dcmread(next((folder / sequences[0]).iterdir()))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.Modality, ds.SeriesNumber, ds.ConversionType = "OT", 99, "WSD"
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        (folder / "screenshot").mkdir()
        ds.save_as(folder / "screenshot" / "sc.dcm", enforce_file_format=True)
    return info


def storescu(folder: Path, port: int, calling: str = "STORESCU") -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-aet", calling, "-aec", "BBNODE", "+sd", "+r", "-nh",
                           "127.0.0.1", str(port), str(folder)],
                          capture_output=True, text=True, timeout=600)


def send_pynetdicom(files: list[Path], port: int, *, abort_after: int | None = None) -> None:
    """Send ``files`` with pynetdicom; with ``abort_after``, cut the association after that many."""
    ae = pynetdicom.AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
    assoc = ae.associate("127.0.0.1", port, ae_title="BBNODE")
    assert assoc.is_established
    for n, f in enumerate(files):
        if abort_after is not None and n == abort_after:
            assoc.abort()
            return
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.release()


def echo_ok(port: int) -> bool:
    ae = pynetdicom.AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="BBNODE")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_lines(spool: Path) -> list[str]:
    path = spool / "node.log"
    return path.read_text().splitlines() if path.exists() else []


def outcome(spool: Path, key: str) -> str | None:
    return next((line for line in log_lines(spool)
                 if f"study {key}: done" in line or f"study {key}: failed" in line
                 or f"study {key}: incomplete" in line), None)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if ORTHANC is None:
        pytest.skip("Orthanc not installed (Debian package orthanc)")
    folder = tmp_path_factory.mktemp("orthanc")
    http, dicom = free_port(), free_port()
    config = {"Name": "bb-test", "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "storage"), "HttpPort": http, "DicomPort": dicom,
              "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomCheckCalledAet": True, "Plugins": [], "HttpServerEnabled": True}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http}"

    def up():
        try:
            with urllib.request.urlopen(f"{url}/system", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 120, f"Orthanc on port {http} (log: {folder / 'orthanc.log'})")
        yield {"url": url, "port": dicom}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def rest(orthanc, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(orthanc["url"] + path, data=data),
                                timeout=30) as r:
        raw = r.read()
    return raw if path.endswith("/file") else json.loads(raw)


def node_config(folder: Path, port: int, dest_port: int, **changes) -> Path:
    config = {"ae_title": "BBNODE", "port": port, "bind": "127.0.0.1",
              "allowed_calling_aets": ["STORESCU", "TESTSCU"], "spool": "spool",
              "quiet_seconds": 2, "destination": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                                  "port": dest_port},
              "steps": ["skullstrip"], "device": "cpu",
              "required_sequences": ["t1", "t1ce", "t2", "flair"], **changes}
    config = {k: v for k, v in config.items() if v is not None}  # None: leave the key out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "node.json").write_text(json.dumps(config))
    return folder / "node.json"


@pytest.fixture(scope="module")
def node(orthanc, tmp_path_factory):
    if STORESCU is None:
        pytest.skip("storescu not installed (Debian package dcmtk)")
    folder = tmp_path_factory.mktemp("node")
    port = free_port()
    config = node_config(folder, port, orthanc["port"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stderr = open(folder / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "brainbarriers.cli.main", "dicom-node",
                             "--config", str(config)], stderr=stderr, env=env)
    spool = folder / "spool"
    try:
        wait_for(lambda: any("listening as BBNODE" in line for line in log_lines(spool))
                 or proc.poll() is not None, 300, "the node to listen")
        assert proc.poll() is None, (folder / "stderr.log").read_text()
        yield {"proc": proc, "port": port, "spool": spool, "folder": folder}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        stderr.close()


def _job_process(node_pid: int) -> psutil.Process | None:
    """The node's running job (a child process), if any."""
    for child in psutil.Process(node_pid).children():
        try:
            if "brainbarriers.dicom.job" in " ".join(child.cmdline()):
                return child
        except psutil.Error:  # a child that has just ended
            pass
    return None


def test_a_study_pushed_with_storescu_comes_back_to_orthanc_as_rtstruct_and_seg(
        node, orthanc, tmp_path):
    spool, port = node["spool"], node["port"]
    first = make_study(tmp_path / "first", non_mr=True)
    second = make_study(tmp_path / "second", ("t1", "t1ce", "t2"))  # no FLAIR
    result = storescu(first["folder"], port)
    assert result.returncode == 0, result.stderr
    key1, key2 = study_key(first["study"]), study_key(second["study"])

    # A second study arrives while the first one runs: it is received, queued, and handled after.
    # The first study's job is paused meanwhile, so the test holds however fast the machine is.
    state = node["spool"] / "studies" / key1 / "state.json"
    job = wait_for(lambda: _job_process(node["proc"].pid), 120, "the first study's job to start")
    job.suspend()
    try:
        result = storescu(second["folder"], port)
        assert result.returncode == 0, result.stderr
        assert json.loads(state.read_text())["status"] == "running", "sent during the run"
        wait_for(lambda: any(f"study {key2}: queued behind" in line for line in log_lines(spool)),
                 60, "the second study to be queued behind the first")
    finally:
        job.resume()
    done = wait_for(lambda: outcome(spool, key1), 600, f"the outcome of study {key1}")
    failed = wait_for(lambda: outcome(spool, key2), 120, f"the outcome of study {key2}")
    lines = log_lines(spool)
    assert f"study {key1}: done" in done, done
    assert "sent RTSTRUCT + SEG to ORTHANC@127.0.0.1" in done
    assert "series 99 ignored (modality OT, not MR or CT)" in done, done
    assert "t1ce=series 3" in done and "flair=series 5" in done, done
    queued = next(line for line in lines if f"study {key2}: queued behind" in line)
    assert lines.index(queued) < lines.index(done) < lines.index(failed)
    assert f"study {key2}: failed: no FLAIR series (found: t1, t1ce, t2" in failed, failed
    # One outcome line per study, and no patient identifier (or study UID) anywhere in the log.
    assert sum(f"study {key1}: done" in line for line in lines) == 1
    text = "\n".join(lines)
    for secret in (*PATIENT, "Demo", first["study"], second["study"]):
        assert secret not in text

    # In Orthanc: the RTSTRUCT and SEG refer to the right study, series, frame and images.
    found = {}
    for modality, sop_class in (("RTSTRUCT", RTSTRUCT_STORAGE), ("SEG", SEG_STORAGE)):
        hits = rest(orthanc, "/tools/find", {"Level": "Instance", "Query": {
            "Modality": modality, "StudyInstanceUID": first["study"]}})
        assert len(hits) == 1, (modality, hits)
        ds = pydicom.dcmread(__import__("io").BytesIO(rest(orthanc, f"/instances/{hits[0]}/file")))
        assert ds.SOPClassUID == sop_class and ds.StudyInstanceUID == first["study"]
        assert (ds.PatientName, ds.PatientID) == PATIENT
        found[modality] = ds
    rs = found["RTSTRUCT"]
    frame_ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame_ref.FrameOfReferenceUID == first["frame"] == rs.FrameOfReferenceUID
    series_ref = frame_ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == first["series"]["t1ce"]  # the reference sequence
    assert {c.ReferencedSOPInstanceUID for c in series_ref.ContourImageSequence} == \
        first["sops"]["t1ce"]
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert names == ["Brain"]
    contours = rs.ROIContourSequence[0].ContourSequence
    assert len(contours) > 20 and all(c.ContourImageSequence[0].ReferencedSOPInstanceUID
                                      in first["sops"]["t1ce"] for c in contours)
    seg = found["SEG"]
    assert seg.FrameOfReferenceUID == first["frame"]
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == first["series"]["t1ce"]
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence} == \
        first["sops"]["t1ce"]
    # The second study (refused) sent nothing; the node still runs.
    assert rest(orthanc, "/tools/find", {"Level": "Instance", "Query": {
        "StudyInstanceUID": second["study"], "Modality": "RTSTRUCT"}}) == []
    assert node["proc"].poll() is None and echo_ok(port)


def test_failure_cases_each_get_a_log_line_and_the_node_keeps_running(node, tmp_path):
    spool, port = node["spool"], node["port"]
    # An unknown calling AE title: the association is rejected, nothing stored.
    study = make_study(tmp_path / "intruder", ("t1",))
    result = storescu(study["folder"], port, calling="INTRUDER")
    assert result.returncode != 0
    wait_for(lambda: any("calling AE 'INTRUDER'" in line and "rejected" in line
                         for line in log_lines(spool)), 60, "the rejection's log line")
    assert not (spool / "studies" / study_key(study["study"])).exists()

    # A transfer cut half-way: kept, marked, never run as it is.
    cut = make_study(tmp_path / "cut", ("t1",))
    files = sorted((cut["folder"] / "t1").iterdir())
    send_pynetdicom(files, port, abort_after=len(files) // 2)
    key = study_key(cut["study"])
    line = wait_for(lambda: outcome(spool, key), 120, "the cut study's outcome")
    assert f"study {key}: incomplete: its transfer was cut" in line, line
    assert any(f"study {key}: transfer cut" in x and f"after {len(files) // 2} image(s)" in x
               for x in log_lines(spool))

    # A study with no MR series at all (a lone Secondary Capture).
    other = make_study(tmp_path / "other", ("t1",), non_mr=True)
    shutil.rmtree(other["folder"] / "t1")
    assert storescu(other["folder"], port).returncode == 0
    line = wait_for(lambda: outcome(spool, study_key(other["study"])), 120, "the non-MR outcome")
    assert "failed: no T1, T1CE, T2, FLAIR series (found: none; series 99 ignored (modality OT" in line

    assert node["proc"].poll() is None and echo_ok(port)


def test_received_images_survive_a_restart(tmp_path):
    """Stopped while a study is still arriving, the node finds it again and processes it."""
    port = free_port()
    config = load_config(node_config(tmp_path, port, free_port(), quiet_seconds=3600,
                                     required_sequences=["t1", "t2"], steps=None))
    study = make_study(tmp_path / "study", ("t1",))
    files = sorted((study["folder"] / "t1").iterdir())
    first = DicomNode(config, poll_seconds=0.1)
    first.start()
    try:
        send_pynetdicom(files, port)
    finally:
        first.stop()
    key = study_key(study["study"])
    state = json.loads((config.spool / "studies" / key / "state.json").read_text())
    assert state["status"] == "receiving"
    assert len(list((config.spool / "studies" / key / "images").rglob("*.dcm"))) == len(files)
    # A job that was running when the node stopped is queued again.
    (config.spool / "studies" / "0123456789abcdef").mkdir()
    (config.spool / "studies" / "0123456789abcdef" / "state.json").write_text(
        json.dumps({"status": "running"}))
    config.quiet_seconds = 0.2
    second = DicomNode(config, poll_seconds=0.1)
    second.start()
    try:
        line = wait_for(lambda: outcome(config.spool, key), 20, "the outcome after restart")
        requeued = wait_for(lambda: outcome(config.spool, "0123456789abcdef"), 20, "re-queued job")
    finally:
        second.stop()
    assert "failed: no T2 series (found: t1; t1=series 2)" in line, line
    assert "2 study job(s) pending" in "\n".join(log_lines(config.spool))
    assert "study 0123456789abcdef: re-queued" in "\n".join(log_lines(config.spool))
    assert "failed" in requeued


def test_config_errors_name_the_file_and_the_key(tmp_path):
    good = json.loads(node_config(tmp_path, 11112, 4242).read_text())
    path = tmp_path / "bad.json"
    for change, match in (({"port": 0}, "port must be a port number"),
                          ({"ae_title": "A" * 17}, "ae_title must be an AE title"),
                          ({"allowed_calling_aets": []}, "allowed_calling_aets must be"),
                          ({"colour": 1}, "unknown key"),
                          ({"series_rules": [{"description": "(", "sequence": "t1"}]},
                           r"series_rules\[0\].description is not a regular expression"),
                          ({"destination": {"host": "x"}}, "destination must be")):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(InputError, match=match) as info:
            load_config(path)
        assert str(path) in str(info.value)
    path.write_text(json.dumps({**good, "steps": ["skullstrip", "nonsense"]}))
    with pytest.raises(InputError, match="steps: unknown step.*nonsense") as info:
        check_steps(load_config(path))  # in a child process: the node never loads the networks
    assert str(path) in str(info.value)
    path.write_text("{")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_config(path)
    config = load_config(tmp_path / "node.json")
    assert config.spool == tmp_path / "spool" and config.destination.port == 4242


def test_series_classification_from_attributes_and_site_rules(tmp_path):
    from pydicom.dataset import Dataset

    def series(**tags):
        ds = Dataset()
        ds.Modality = "MR"
        for k, v in tags.items():
            setattr(ds, k, v)
        return ds

    assert classify_series(series(SeriesDescription="Ax FLAIR"))[0] == "flair"
    assert classify_series(series(SeriesDescription="sag T1 MPRAGE +C"))[0] == "t1ce"
    assert classify_series(series(SeriesDescription="t1_mprage_sag"))[0] == "t1"
    assert classify_series(series(ProtocolName="t2_tse_tra"))[0] == "t2"
    # From the timing attributes when the description says nothing.
    assert classify_series(series(RepetitionTime=9000, EchoTime=90, InversionTime=2500))[0] == "flair"
    assert classify_series(series(RepetitionTime=500, EchoTime=12))[0] == "t1"
    assert classify_series(series(RepetitionTime=500, EchoTime=12, ContrastBolusAgent="Gd"))[0] == "t1ce"
    assert classify_series(series(RepetitionTime=5000, EchoTime=100))[0] == "t2"
    assert classify_series(series(SeriesDescription="DWI b1000"))[0] is None
    ct = series(SeriesDescription="Head")
    ct.Modality = "CT"
    assert classify_series(ct)[0] == "ct"
    # A site's rules (regular expressions on SeriesDescription) come first.
    good = json.loads(node_config(tmp_path, 11112, 4242).read_text())
    good["series_rules"] = [{"description": "^KM_", "sequence": "t1ce"},
                            {"description": "localizer", "sequence": "ignore"}]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(good))
    rules = load_config(path).series_rules
    assert classify_series(series(SeriesDescription="KM_3D_T2_like"), rules)[0] == "t1ce"
    sequence, why = classify_series(series(SeriesDescription="T1 localizer"), rules)
    assert sequence is None and "site rule" in why


def test_results_not_sent_are_kept_and_sent_again(tmp_path):
    """The destination down: the result stays 'unsent' and is sent once it answers (any SCP)."""
    from brainbarriers.dicom.rtstruct import write_rtstruct
    from brainbarriers.labels import SEGMENTS_BY_OUTPUT

    volume = Volume(np.arange(8 * 8 * 6, dtype=np.float32).reshape(8, 8, 6), np.eye(4))
    series = write_series(volume, tmp_path / "images")
    mask = np.zeros(volume.shape, bool)
    mask[2:6, 2:6, 1:5] = True
    key = "00000000deadbeef"
    out = tmp_path / "spool" / "studies" / key / "out"
    out.mkdir(parents=True)
    write_rtstruct(out / "rtstruct.dcm", series, [("brain_mask", SEGMENTS_BY_OUTPUT["brain_mask"][1],
                                                   mask)], volume.affine)
    (out.parent / "state.json").write_text(json.dumps({"status": "unsent", "updated": 0}))
    dest = free_port()
    config = load_config(node_config(tmp_path, free_port(), dest, steps=None, retry_seconds=0.5,
                                     send=["rtstruct"]))
    received = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    node = DicomNode(config, poll_seconds=0.1)
    node.start()
    try:
        wait_for(lambda: any(f"study {key}: still not sent: no association with the destination "
                             f"ORTHANC@127.0.0.1:{dest}" in line for line in log_lines(config.spool)),
                 60, "the failed send's log line")
        assert node.status()[key] == "unsent"
        ae = pynetdicom.AE(ae_title="ORTHANC")
        ae.add_supported_context(RTSTRUCT_STORAGE)
        server = ae.start_server(("127.0.0.1", dest), block=False,
                                 evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])
        try:
            line = wait_for(lambda: outcome(config.spool, key), 60, "the resend")
        finally:
            server.shutdown()
    finally:
        node.stop()
    assert "done: sent RTSTRUCT to ORTHANC" in line and "sent again" in line, line
    assert received == [pydicom.dcmread(out / "rtstruct.dcm").SOPInstanceUID]
