"""Would a per-case intensity model fix the tumour model's whole-tumour size errors? (Tried, not
shipped: README, Tumour models.)

For each of the default package's cross-validation cases, segmented by the fold that did not see
it (no flips): the whole tumour's probability is combined with a per-case likelihood ratio of
(FLAIR, T2) intensities, learnt from the case itself - "tumour" where the model is sure (p > 0.9),
"not tumour" where it is sure it is not (p < 0.1) within ``shell`` mm of its tumour (2-D
histograms, 40 bins over z-scores -3..7, smoothed by one bin) - as
``logit(p) + weight * log-ratio``, optionally smoothed (Gaussian, ``sigma`` voxels), kept within
``reach`` mm of the model's tumour; then the main-tumour rule, as the step does. WT Dice per
setting, against the model's own labels.

    python bench/tumor_intensity_refinement.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tumor_validation import held_out_by, held_out_cases  # noqa: E402

BINS, LOW, HIGH = 40, -3.0, 7.0
SETTINGS = list(itertools.product((15, 30), (0.3, 0.6, 1.0), (5, 10), (0.0, 1.0)))


def log_ratio(features, probability, brain, shell_mm):
    """Per voxel: log p(intensities | tumour) - log p(intensities | not tumour), and the distance
    (voxels) to the model's tumour."""
    distance = ndi.distance_transform_edt(~(probability > 0.5))
    sure = (probability > 0.9) & brain
    unsure = (probability < 0.1) & brain & (distance <= shell_mm)
    index = np.ravel_multi_index([np.clip(((f - LOW) / (HIGH - LOW) * BINS).astype(int), 0, BINS - 1)
                                  for f in features], (BINS,) * len(features))
    hist = [ndi.gaussian_filter(np.bincount(index[m], minlength=BINS ** len(features)).reshape(
        (BINS,) * len(features)).astype(float), 1.0) + 1e-3 for m in (sure, unsure)]
    ratio = np.log(hist[0] / hist[0].sum()) - np.log(hist[1] / hist[1].sum())
    return ratio.ravel()[index], distance


def main() -> int:
    from brainbarriers.metrics import dice
    from brainbarriers.models import load_package
    from brainbarriers.tumor.inference import keep_main_tumour, segment_with_uncertainty
    from brainbarriers.tumor.preprocess import normalise
    from brainbarriers.tumor.step import DEFAULT_MODEL
    from brainbarriers.tumor.train import find_cases, load_case_volumes

    torch.set_num_threads(2)
    package = load_package(DEFAULT_MODEL)
    rows = []
    for folder in held_out_cases(package):
        case = find_cases(folder)[0]
        vols, mask, truth = load_case_volumes(case)
        nets = [package.build_network(held_out_by(package, case["id"]))]
        result = segment_with_uncertainty(vols, mask, package, tta=False, nets=nets)
        brain, p = mask.array > 0, result.probability.array
        core = np.isin(result.labels.array, (1, 4))
        whole_truth = np.isin(truth.array, (1, 2, 4))
        features = [normalise(vols[s].array, brain) for s in ("flair", "t2")]
        row = {"model": dice(result.labels.array > 0, whole_truth)}
        ratios = {}
        for shell, weight, reach, sigma in SETTINGS:
            if shell not in ratios:
                ratios[shell] = log_ratio(features, p, brain, shell)
            ratio, distance = ratios[shell]
            q = np.clip(p, 1e-4, 1 - 1e-4)
            logit = np.log(q / (1 - q)) + weight * ratio
            if sigma:
                logit = ndi.gaussian_filter(logit, sigma)
            whole = ((logit > 0) & brain & (distance <= reach)) | core
            labels = np.where(core, 1, np.where(whole, 2, 0)).astype(np.uint8)
            kept, _ = keep_main_tumour(labels, mask.voxel_volume_ml, 1.0)
            row[(shell, weight, reach, sigma)] = dice(kept > 0, whole_truth)
        rows.append(row)
        best = max(SETTINGS, key=lambda k: row[k])
        print(f"{case['id']:<24} model WT {row['model']:.3f}, best setting {best}: {row[best]:.3f}",
              flush=True)
    print(f"\nmean WT over {len(rows)} cases: the model {np.mean([r['model'] for r in rows]):.3f}")
    for k in SETTINGS:
        worse = sum(r[k] < r["model"] - 1e-3 for r in rows)
        print(f"shell {k[0]} mm, weight {k[1]}, reach {k[2]} mm, sigma {k[3]}: "
              f"{np.mean([r[k] for r in rows]):.3f} (lower on {worse} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
