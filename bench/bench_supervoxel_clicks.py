"""What click-to-edit saves: clicks to bring the model's tumour to Dice >= 0.95 against the expert,
with supervoxel region clicks versus a 5 mm paint brush, on real BraTS cases.

Start: the default tumour model's labels (``brats-hnfnetv2-cpu``, with its test-time flips) on a
case it did not see in training - its manifest's validation cases, each segmented by the one fold
that held it out - or ``--start FILE`` (a label map on the case's grid).
Target: the expert's whole tumour (WT, labels > 0) or tumour core (``--region TC``: 1 + 4, or 1 + 3
for the 2023 labels); the edited segment is binary.

Simulated user, greedy ("always click the region with the largest error"):

- **supervoxels**: the map and its hierarchy as the product makes them (the supervoxels step's
  cell size; the merging kept fine around the starting segment, as the Segment Editor effect does
  around the segment being edited; ``--no-focus``: the paper's merging); each click adds a region
  to the segment or removes it (Ctrl + click), at any level of the hierarchy the slider offers (``--levels``, default 300, 1000 and the finest); the
  click taken is the one that removes the most wrong voxels net (new true positives minus new false
  positives, or removed false positives minus removed true positives). If no click improves the
  segment before the target is reached, supervoxels stop and the brush finishes ("then brush").
- **brush**: each click is one dab of the Segment Editor's paint brush, 5 mm diameter, a disc in
  the axial slice (the editor's default), painting or erasing where it removes the most wrong
  voxels net.

    python bench/bench_supervoxel_clicks.py --threads 2 [--cases Brats18_2013_20_1,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SEQ = ("t1", "t1ce", "t2", "flair")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def region_clicks(seg, truth, over, lookups, target=0.95, max_clicks=2000):
    """Greedy region clicks; returns (clicks, Dice after each click, final segment)."""
    seg = seg.copy()
    maps = [lut[over] for lut in lookups]
    history = []
    while dice(seg, truth) < target and len(history) < max_clicks:
        best = (0, None)
        for m, lut in zip(maps, lookups):
            k = int(lut.max()) + 1
            fn = np.bincount(m[truth & ~seg], minlength=k)
            fp = np.bincount(m[seg & ~truth], minlength=k)
            tp = np.bincount(m[seg & truth], minlength=k)
            tn = np.bincount(m[~seg & ~truth], minlength=k)
            add, rem = fn - tn, fp - tp
            add[0] = rem[0] = 0  # outside the supervoxels
            for gain, is_add in ((add, True), (rem, False)):
                r = int(gain.argmax())
                if gain[r] > best[0]:
                    best = (int(gain[r]), (m, r, is_add))
        if best[1] is None:
            break
        m, r, is_add = best[1]
        seg = seg | (m == r) if is_add else seg & ~(m == r)
        history.append(dice(seg, truth))
    return len(history), history, seg


def brush_clicks(seg, truth, spacing, diameter_mm=5.0, target=0.95, max_clicks=20000):
    """Greedy 5 mm brush dabs (axial discs); returns (clicks, Dice history)."""
    r = diameter_mm / 2
    ri, rj = int(np.floor(r / spacing[0])), int(np.floor(r / spacing[1]))
    ii, jj = np.mgrid[-ri:ri + 1, -rj:rj + 1]
    disc = ((ii * spacing[0]) ** 2 + (jj * spacing[1]) ** 2 <= r * r).astype(np.float32)[..., None]
    # work inside the box of everything wrong or labelled, grown by the brush
    box = ndi.find_objects((seg | truth).astype(np.int8))[0]
    box = tuple(slice(max(0, s.start - 3), min(n, s.stop + 3)) for s, n in zip(box, seg.shape))
    s, t = seg[box].copy(), truth[box]

    def gains(sl):
        """Net gain of a paint dab and of an erase dab centred on each voxel of the window sl."""
        ss, tt = s[sl], t[sl]
        add = ndi.convolve((tt & ~ss).astype(np.float32) - (~tt & ~ss), disc, mode="constant")
        rem = ndi.convolve((ss & ~tt).astype(np.float32) - (ss & tt), disc, mode="constant")
        return add, rem

    add, rem = gains((slice(None),) * 3)
    history = []
    while len(history) < max_clicks and dice(s, t) < target:
        a, e = np.unravel_index(add.argmax(), add.shape), np.unravel_index(rem.argmax(), rem.shape)
        is_add = add[a] >= rem[e]
        centre, gain = (a, add[a]) if is_add else (e, rem[e])
        if gain <= 0:
            break
        i0, j0, k0 = centre
        lo_i, hi_i = max(0, i0 - ri), min(s.shape[0], i0 + ri + 1)
        lo_j, hi_j = max(0, j0 - rj), min(s.shape[1], j0 + rj + 1)
        piece = disc[ri - (i0 - lo_i):ri + (hi_i - i0), rj - (j0 - lo_j):rj + (hi_j - j0), 0] > 0
        target_sl = s[lo_i:hi_i, lo_j:hi_j, k0]
        s[lo_i:hi_i, lo_j:hi_j, k0] = (target_sl | piece) if is_add else (target_sl & ~piece)
        # only this slice, within two brush radii of the dab, has new gains
        wi = slice(max(0, i0 - 3 * ri), min(s.shape[0], i0 + 3 * ri + 1))
        wj = slice(max(0, j0 - 3 * rj), min(s.shape[1], j0 + 3 * rj + 1))
        wa, wr = gains((wi, wj, slice(k0, k0 + 1)))
        ci = slice(max(0, i0 - 2 * ri), min(s.shape[0], i0 + 2 * ri + 1))
        cj = slice(max(0, j0 - 2 * rj), min(s.shape[1], j0 + 2 * rj + 1))
        oi, oj = ci.start - wi.start, cj.start - wj.start
        add[ci, cj, k0] = wa[oi:oi + ci.stop - ci.start, oj:oj + cj.stop - cj.start, 0]
        rem[ci, cj, k0] = wr[oi:oi + ci.stop - ci.start, oj:oj + cj.stop - cj.start, 0]
        history.append(dice(s, t))
    return len(history), history


def load_case(name: str):
    import nibabel as nib

    folder = next(p for p in (DATA / "brats18" / name, DATA / "brats-gli" / name) if p.exists())
    images = {s: nib.load(folder / f"{name}_{s}.nii.gz") for s in SEQ}
    truth = np.asarray(nib.load(folder / f"{name}_seg.nii.gz").dataobj).astype(np.int16)
    return folder, images, truth


def model_labels(name: str, device: str = "cpu") -> np.ndarray:
    from brainbarriers.io import load_volume
    from brainbarriers.models import load_package
    from brainbarriers.tumor.inference import segment
    from brainbarriers.tumor.step import DEFAULT_MODEL

    folder, _, _ = load_case(name)
    vols = {s: load_volume(folder / f"{name}_{s}.nii.gz") for s in SEQ}
    mask = np.stack([v.array for v in vols.values()]).max(0) > 0
    brain = vols["t1ce"].with_array(mask.astype(np.uint8))
    package = load_package(DEFAULT_MODEL)
    # Only the fold that held the case out: the ensemble's other folds trained on it.
    folds = [f["fold"] for f in package.manifest["training"]["folds"] if name in f["val_cases"]]
    nets = [package.build_network(f"fold{folds[0]}", device)] if folds else None
    return segment(vols, brain, package, device=device, nets=nets).array


def main() -> int:
    import torch

    from brainbarriers.supervoxels.hierarchy import FOCUS_FACTOR, build_hierarchy, focus_around
    from brainbarriers.supervoxels.slic import scale_to_unit, sslic
    from brainbarriers.supervoxels.step import DEFAULT_SIZE

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None, help="comma-separated; default: the model's "
                   "validation cases")
    p.add_argument("--region", choices=("WT", "TC"), default="WT")
    p.add_argument("--levels", default="300,1000,0", help="slider levels offered (0: finest)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--start", default=None, help="a label map to start from instead of the model")
    p.add_argument("--no-focus", action="store_true", help="merge as the paper does")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="supervoxel cell size (voxels)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cases:
        names = args.cases.split(",")
    else:
        from brainbarriers.models import load_package
        from brainbarriers.tumor.step import DEFAULT_MODEL

        names = list(load_package(DEFAULT_MODEL).manifest["validation"]["cases"])
    rows = []
    for name in names:
        folder, images, truth_labels = load_case(name)
        arrays = [np.asarray(images[s].dataobj, np.float32) for s in SEQ]
        mask = np.stack(arrays).max(0) > 0
        t0 = time.perf_counter()
        if args.start:
            import nibabel as nib

            start = np.asarray(nib.load(args.start).dataobj)
        else:
            start = model_labels(name)
        t_model = time.perf_counter() - t0
        if args.region == "WT":
            truth, seg = truth_labels > 0, start > 0
        else:  # the model writes the 2021 labels (1, 2, 4); 2023 truth has 3 for enhancing
            truth = np.isin(truth_labels, (1, 3, 4) if (truth_labels == 4).any() else (1, 3))
            seg = np.isin(start, (1, 4))
        features = np.stack([scale_to_unit(x, mask) for x in arrays])
        spacing = images["t1ce"].header.get_zooms()[:3]
        with torch.inference_mode():
            over = sslic(features, mask, size=(args.size,) * 3).numpy().astype(np.int32)
        focus = None if args.no_focus else focus_around(seg, spacing)
        h = build_hierarchy(over, list(features), focus=focus, focus_factor=FOCUS_FACTOR)
        lookups = [h.lookup(regions=int(k) if int(k) > 0 else h.n) for k in args.levels.split(",")]
        n_sv, hist_sv, after = region_clicks(seg, truth, over, lookups)
        reached = bool(hist_sv and hist_sv[-1] >= 0.95) or dice(seg, truth) >= 0.95
        n_then, _ = brush_clicks(after, truth, spacing) if not reached else (0, [])
        n_brush, hist_brush = brush_clicks(seg, truth, spacing)
        row = {"case": name, "region": args.region, "dice_start": dice(seg, truth),
               "supervoxel_clicks": n_sv, "dice_after_supervoxels": hist_sv[-1] if hist_sv
               else dice(seg, truth), "supervoxels_reached": reached,
               "then_brush_clicks": n_then, "brush_clicks": n_brush,
               "dice_after_brush": hist_brush[-1] if hist_brush else dice(seg, truth),
               "seconds_model": t_model, "levels": args.levels, "size": args.size,
               "focus": not args.no_focus}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
