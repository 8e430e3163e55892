#!/bin/bash
# Train the default tumour model's four folds on one GPU, all at once, from prepared cases.
#
#   bash scripts/train_tumor_gpu.sh prepare   # here, beside ../shared/data: runs/gpu (about 24 MB)
#   bash scripts/train_tumor_gpu.sh train     # on the GPU machine, with runs/gpu copied there
#
# `prepare` writes the 16 shared BraTS cases pre-processed for the CPU configuration (train tumor
# --prepare), the demo case at the model's 2 mm (timed there without SimpleITK) and, for a machine
# without them, Python 3.12 wheels of monai and nibabel in .whl/. `train` first runs the four
# folds at once for P iterations to measure the rate, sizes the run to BUDGET seconds, trains,
# writes each fold's weights (fold<k>.pt: the finished checkpoint without the optimiser state) and
# logs to OUT, and times the four-fold ensemble on the demo case. Back here, put fold<k>.pt in
# OUT2/checkpoints/fold<k>/last.pt and run `brainbarriers train tumor --data ../shared/data/brats18
# ../shared/data/brats-gli --out OUT2 --config cpu --folds 4 --fold 0,1,2,3 --iterations N` to
# package the folds with their validation on the original cases.
set -u
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}; BUDGET=${BUDGET:-420}; P=${P:-60}; W=${W:-4}; OUT=${OUT:-runs/gpu/out}
NMIN=${NMIN:-100}; FOLDS=${FOLDS:-0 1 2 3}; CONFIGS=${CONFIGS:-default,phantom}; TTA=${TTA:-both}

if [ "${1:-}" = prepare ]; then
  brainbarriers train tumor --data ../shared/data/brats18 ../shared/data/brats-gli --out runs/gpu \
    --config cpu --prepare || exit 1
  python3 - <<'EOF' || exit 1
from pathlib import Path

import numpy as np

from brainbarriers.demo import demo_case_folder
from brainbarriers.io import load_volume, save_volume
from brainbarriers.tumor.inference import onto, work_grid

f = demo_case_folder()
mask = load_volume(f / "brain_mask_truth.nii.gz")
grid = work_grid(mask.grid, [2.0] * 3)
out = Path("runs/gpu/demo2mm/Demo2mm")
out.mkdir(parents=True, exist_ok=True)
brain = onto(mask, grid, label=True).array > 0
for s in ("t1", "t1ce", "t2", "flair"):
    v = load_volume(f / f"{s}.nii.gz")
    v = onto(v.with_array((v.array * (mask.array > 0)).astype(np.float32)), grid)
    save_volume(v.with_array(v.array * brain), out / f"Demo2mm_{s}.nii.gz")
save_volume(onto(load_volume(f / "tumor_truth.nii.gz"), grid, label=True), out / "Demo2mm_seg.nii.gz")
EOF
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2
  exit $?
fi
[ "${1:-}" = train ] || { echo "usage: $0 prepare|train" >&2; exit 2; }

mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
exec > >(tee -a "$OUT/train.log") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, numpy, monai, nibabel; print('torch', torch.__version__, 'numpy', numpy.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" || exit 4
BB="python3 -m brainbarriers.cli.main train tumor --data runs/gpu/prepared --config cpu --folds 4 --val-every 0 --device $DEVICE --workers $W --name brats-hnfnetv2-cpu --save-every 1000"
T=${TMPDIR:-/tmp}/tumor-gpu
rm -rf "$T"
# 1. Probe: the folds at once for P iterations; the steady rate sizes the real run.
# (Wait for the named processes: a plain 'wait' would also wait for the tee above.)
pids=
for k in $FOLDS; do
  $BB --out "$T/probe-$k" --fold $k --iterations $P > "$T-probe-$k.log" 2>&1 & pids="$pids $!"
done
wait $pids
RATE=$(python3 -c "
import json
r = []
for k in [int(k) for k in '$FOLDS'.split()]:
    log = [json.loads(line) for line in open(f'$T/probe-{k}/checkpoints/fold{k}/log.jsonl')]
    a = len(log) // 3
    r.append((log[-1]['s'] - log[a]['s']) / (len(log) - 1 - a))
print(max(r))") || { cat "$T-probe-0.log"; exit 5; }
N=$(python3 -c "print(max($NMIN, int($BUDGET / $RATE / 100) * 100))")
echo "probe: $RATE s/it with the folds at once -> $N iterations each"; date -u
# 2. The folds at once.
pids=
for k in $FOLDS; do
  $BB --out "$T/run-$k" --fold $k --iterations $N > "$T-run-$k.log" 2>&1 & pids="$pids $!"
done
wait $pids
date -u
for k in $FOLDS; do
  cat "$T-run-$k.log"
  cp "$T/run-$k/checkpoints/fold$k/log.jsonl" "$OUT/log-fold$k.jsonl"
  python3 -c "
import torch
s = torch.load('$T/run-$k/checkpoints/fold$k/last.pt', weights_only=True)
torch.save({k: s[k] for k in ('model', 'iteration', 'wall_s')}, '$OUT/fold$k.pt')" || exit 6
  mkdir -p "$T/all/checkpoints/fold$k"; cp "$OUT/fold$k.pt" "$T/all/checkpoints/fold$k/last.pt"
done
# 3. The folds as one package, timed on the demo case at 2 mm.
$BB --out "$T/all" --fold "${FOLDS// /,}" --iterations $N | tail -n 2
python3 bench/bench_tumor.py --device $DEVICE --case runs/gpu/demo2mm --configs $CONFIGS \
  --tta $TTA --threads 4 --package "$T/all/package" | tee "$OUT/bench.txt"
date -u
