"""Time ``brainbarriers dicom-node`` from the last image received to the RT Structure Set stored in
a real PACS (Orthanc), and measure the idle node's memory.

    python bench/bench_dicom_node.py [--zoom 1] [--steps skullstrip] [--quiet 5]

Needs Orthanc (Debian ``orthanc``) and dcmtk's ``storescu`` (Debian ``dcmtk``). Starts Orthanc on
free ports with a temporary storage folder, then the node (the ``brainbarriers dicom-node`` command,
a separate process), pushes a study made from the demo case (T1, T1ce, T2, FLAIR; ``--zoom 2``: every
other voxel, 2 mm) with ``storescu``, and polls Orthanc's REST API until the RTSTRUCT is there.

The latency is measured from the modification time of the last image file the node wrote (the last
image received) to the moment Orthanc lists the RTSTRUCT; it includes the quiet time the node waits
(``--quiet``), the pipeline, the export of RTSTRUCT and SEG, and the C-STORE. Memory: the node
process's resident set size (psutil) after it started and before any study, and again after the
study, idle.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
import psutil
import pydicom

from brainbarriers.dicom.node import study_key
from brainbarriers.dicom.series import write_series
from brainbarriers.io import load_volume
from brainbarriers.volume import Volume

DEMO = Path(str(resources.files("brainbarriers") / "data" / "demo"))
DESCRIPTIONS = {"t1": "T1 MPRAGE", "t1ce": "T1 MPRAGE post Gd", "t2": "T2 TSE", "flair": "FLAIR"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_storescu() -> str:
    """dcmtk's storescu (pynetdicom installs an app of the same name into the environment)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = Path(folder) / "storescu"
        if path.is_file() and not path.resolve().is_relative_to(Path(sys.prefix).resolve()):
            return str(path)
    sys.exit("bench_dicom_node: dcmtk's storescu not found (apt-get install dcmtk)")


def wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"bench_dicom_node: timed out after {timeout:.0f} s waiting for {what}")


def make_study(folder: Path, zoom: int) -> str:
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for number, sequence in enumerate(DESCRIPTIONS, start=2):
        volume = load_volume(DEMO / f"{sequence}.nii.gz")
        affine = volume.affine.copy()
        affine[:3, :3] *= zoom
        volume = Volume(np.ascontiguousarray(volume.array[::zoom, ::zoom, ::zoom]), affine)
        series = write_series(volume, folder / sequence, study_uid=study,
                              description=DESCRIPTIONS[sequence])
        for ds in series.datasets:
            ds.FrameOfReferenceUID, ds.SeriesNumber = frame, number
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.save_as(ds.filename, enforce_file_format=True)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoom", type=int, default=1, help="1: the demo's 1 mm grid; 2: 2 mm")
    parser.add_argument("--steps", default="skullstrip", help="pipeline steps the node runs")
    parser.add_argument("--quiet", type=float, default=5.0, help="the node's quiet_seconds")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    orthanc_bin = next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()),
                       None)
    if orthanc_bin is None:
        sys.exit("bench_dicom_node: Orthanc not found (apt-get install orthanc)")
    storescu = dcmtk_storescu()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        http, dicom, port = free_port(), free_port(), free_port()
        (tmp / "orthanc.json").write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(tmp / "orthanc"),
            "IndexDirectory": str(tmp / "orthanc"), "HttpPort": http, "DicomPort": dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": []}))
        (tmp / "node.json").write_text(json.dumps({
            "ae_title": "BBNODE", "port": port, "bind": "127.0.0.1",
            "allowed_calling_aets": ["STORESCU"], "spool": str(tmp / "spool"),
            "quiet_seconds": args.quiet, "steps": args.steps.split(","), "device": "cpu",
            "destination": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}}))
        url = f"http://127.0.0.1:{http}"
        logs = open(tmp / "orthanc.log", "w"), open(tmp / "node.stderr", "w")
        orthanc = subprocess.Popen([orthanc_bin, str(tmp / "orthanc.json")], stdout=logs[0],
                                   stderr=logs[0])
        node = subprocess.Popen([sys.executable, "-m", "brainbarriers.cli.main", "dicom-node",
                                 "--config", str(tmp / "node.json")], stderr=logs[1])
        try:
            study = make_study(tmp / "study", args.zoom)
            images = sum(1 for _ in (tmp / "study").rglob("*.dcm"))
            node_log = tmp / "spool" / "node.log"
            wait(lambda: node_log.exists() and "listening" in node_log.read_text(), 600,
                 "the node to start")
            time.sleep(2.0)
            idle_mb = psutil.Process(node.pid).memory_info().rss / 2**20

            def orthanc_up():
                try:
                    with urllib.request.urlopen(f"{url}/system", timeout=2):
                        return True
                except OSError:
                    return False

            wait(orthanc_up, 120, "Orthanc")
            t0 = time.time()
            subprocess.run([storescu, "-aet", "STORESCU", "-aec", "BBNODE", "+sd", "+r", "-nh",
                            "127.0.0.1", str(port), str(tmp / "study")], check=True,
                           capture_output=True)
            push = time.time() - t0
            query = json.dumps({"Level": "Instance", "Query": {
                "Modality": "RTSTRUCT", "StudyInstanceUID": study}}).encode()

            def stored():
                request = urllib.request.Request(f"{url}/tools/find", data=query)
                with urllib.request.urlopen(request, timeout=10) as r:
                    return json.loads(r.read()) and time.time()

            arrived = wait(stored, args.timeout, "the RTSTRUCT in Orthanc")
            spool_images = (tmp / "spool" / "studies" / study_key(study) / "images")
            last_image = max(f.stat().st_mtime for f in spool_images.rglob("*.dcm"))
            time.sleep(2.0)
            after_mb = psutil.Process(node.pid).memory_info().rss / 2**20
            outcome = next(line for line in node_log.read_text().splitlines()
                           if f"study {study_key(study)}: " in line and ": done" in line)
        finally:
            node.terminate()
            node.wait(timeout=120)
            orthanc.terminate()
            orthanc.wait(timeout=60)
            for log in logs:
                log.close()
    print(f"study: demo case at {args.zoom} mm, 4 series, {images} images; steps {args.steps}; "
          f"{os.cpu_count()} CPU cores")
    print(f"push with storescu: {push:.1f} s")
    print(f"last image received -> RTSTRUCT stored in Orthanc: {arrived - last_image:.1f} s "
          f"(of which quiet time {args.quiet:g} s)")
    print(f"node's outcome line: {outcome.split(' ', 3)[-1]}")
    print(f"idle node memory (RSS): {idle_mb:.0f} MB before the study, {after_mb:.0f} MB after")


if __name__ == "__main__":
    main()
