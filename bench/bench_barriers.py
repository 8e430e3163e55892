"""Time and peak memory per case of the barriers step's stages (CPU; CUDA too when available).

    python bench/bench_barriers.py [--threads N] [--atlas-only] [--modes atlas_template_demo_1mm,...]

Each measurement runs in a fresh process so its peak resident memory (ru_maxrss) is its own:
- atlas stage on the shipped demo case (1 mm, 240x240x155), as it was (``anatomy=template``: the
  SRI24 template's cerebellum and ventricles) and as it is (``anatomy=multiatlas``: plus the three
  OASIS atlases, label fusion and the CSF model), side by side; then on a generated case (2 mm);
  ``--threads`` sets SimpleITK's threads too (2 for the 2-core budget of the barrier step);
- two-stage demo models (stage-1 DynUNet + six stage-2 HMRNets) on a generated 2 mm case, and its
  stage 1 alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
mode, device = sys.argv[1], sys.argv[3]
from brainbarriers.barriers.phantom import make_barrier_case
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(sys.argv[2]))
if mode.startswith("atlas_") and "demo_1mm" in mode:
    from brainbarriers.demo import demo_case_folder
    from brainbarriers.io import load_volume
    f = demo_case_folder()
    image, mask = load_volume(f / "t1.nii.gz"), load_volume(f / "brain_mask_truth.nii.gz")
else:
    case = make_barrier_case(9001)
    image, mask = case.sequences["t1"], case.truths["brain_mask"]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
if mode.startswith("atlas"):
    from brainbarriers.barriers.atlas import atlas_barriers
    atlas_barriers(image, mask, anatomy="template" if "template" in mode else "multiatlas")
else:
    from brainbarriers.barriers.infer import two_stage
    from brainbarriers.barriers.package import load_model_set
    from brainbarriers.barriers.step import demo_models_folder
    models = load_model_set(demo_models_folder(), device)
    two_stage(models, {s: case.sequences[s] for s in ("t1ce", "t2")}, mask.array > 0, device,
              refine=mode.startswith("two_stage"))
    if device == "cuda":
        torch.cuda.synchronize()
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
print(json.dumps({"mode": mode, "device": device, "seconds": round(seconds, 2), "cpu_s": round(cpu, 1),
                  "peak_rss_mb": round(peak / 1024, 1), "rss_before_mb": round(base / 1024, 1),
                  "gpu_peak_mb": gpu, "shape": list(image.shape)}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--atlas-only", action="store_true", help="only the atlas stage, template vs multi-atlas")
    p.add_argument("--modes", default=None, help="comma-separated measurements to run (default: all)")
    args = p.parse_args()
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    modes = ["atlas_template_demo_1mm", "atlas_multiatlas_demo_1mm", "atlas_phantom_2mm"]
    if not args.atlas_only:
        modes += ["stage1_only_phantom_2mm", "two_stage_phantom_2mm"]
    if args.modes:
        modes = args.modes.split(",")
    for mode in modes:
        for device in devices if not mode.startswith("atlas") else ["cpu"]:
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.threads), device],
                                 capture_output=True, text=True)
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
            print(json.loads(line) if line.startswith("{") else line, flush=True)


if __name__ == "__main__":
    main()
