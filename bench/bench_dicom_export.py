"""Time the DICOM export on the demo case's full grid (240 x 240 x 155, 1 mm).

    python bench/bench_dicom_export.py

Builds a run folder from the demo truths (brain mask, tumour, barriers) plus the CTV, then writes the
synthetic MR series, a DICOM SEG and an RT Structure Set, printing the seconds and sizes.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path

from brainbarriers.ctv import grow_ctv
from brainbarriers.dicom import export_run
from brainbarriers.io import load_volume, save_volume


def main() -> None:
    demo = Path(str(resources.files("brainbarriers") / "data" / "demo"))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        maps = {"brain_mask": "brain_mask_truth", "tumor": "tumor_truth", "barriers": "barriers_truth"}
        volumes = {p: load_volume(demo / f"{f}.nii.gz") for p, f in maps.items()}
        volumes["ctv"] = grow_ctv(volumes["tumor"], volumes["brain_mask"], volumes["barriers"])
        for product, volume in volumes.items():
            save_volume(volume, run / f"{product}.nii.gz")
        manifest = {"reference": "t1ce", "inputs": {"t1ce": {"path": str(demo / "t1ce.nii.gz")}},
                    "outputs": {p: f"{p}.nii.gz" for p in volumes}}
        (run / "manifest.json").write_text(json.dumps(manifest))
        for fmt in ("seg", "rtstruct"):
            out = Path(tmp) / f"{fmt}.dcm"
            t0 = time.perf_counter()
            result = export_run(run, fmt, out, images_out=Path(tmp) / f"images_{fmt}")
            seconds = time.perf_counter() - t0
            print(f"{fmt:8s}: {seconds:5.1f} s (synthetic series of {len(result.series.datasets)} "
                  f"images included), {len(result.segments)} segments, "
                  f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
