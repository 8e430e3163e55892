"""Per-structure Dice of the barrier stages: on real labelled heads, and on held-out generated cases.

    python bench/barriers_accuracy.py --oasis [--data ../shared/data/oasis-miccai2012] [--subjects 1000 ...]
    python bench/barriers_accuracy.py --oasis --methods multiatlas --brain-mask skullstrip
    python bench/barriers_accuracy.py [--models FOLDER] [--seeds 9001 9002 9003] [--no-atlas]

``--oasis``: the real OASIS heads with manual Neuromorphometrics labels (structure definitions in
``brainbarriers.barriers.multiatlas``), the atlas stage's methods side by side (``--methods``):
``template-raw`` (the SRI24 template's labels as registered), ``template`` (the template's
cerebellum, its ventricles re-drawn from the image's CSF, the falx and tentorium moved onto its CSF
lines), ``multiatlas`` (the default; leave-one-out: each head is segmented with atlases made
from the *other* heads only, never with itself, and with a ventricle classifier trained on the other
heads only, each seen through the one atlas that is neither itself nor the head segmented) and
``multiatlas-csf`` (the same without the classifier: the CSF model's ventricles). The heads are
skull-stripped; the brain is their non-zero voxels, or with ``--brain-mask skullstrip`` the
skullstrip step's mask of them (deepbet, as ``brainbarriers run`` does). Prints, per head and method, Dice of the cerebellum and ventricles, the
ventricle volumes (predicted / true, ml), the falx's and tentorium's position (share of the
interface covered / share of the sheet on its interface, ``barriers.position``), the wall and CPU
seconds of the whole atlas stage, then the means.

Without ``--oasis``: generated cases ``barriers.phantom.make_barrier_case(seed)`` at 2 mm (the demo
models were trained on seeds 1000-1011, so 9000+ are unseen): stage 1 alone, two-stage, and the
atlas stage; the last column is the mean over the six structures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OASIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasis-miccai2012"


def oasis(data: Path, subjects: list[str], methods: list[str], brain_mask: str = "nonzero") -> None:
    from brainbarriers.barriers import ventricles
    from brainbarriers.barriers.atlas import atlas_barriers
    from brainbarriers.barriers.multiatlas import (
        CEREBELLUM,
        CONVENTION,
        VENTRICLES,
        make_atlas,
        structures_from_neuromorphometrics,
    )
    from brainbarriers.barriers.position import barrier_position
    from brainbarriers.io import load_volume
    from brainbarriers.metrics import dice
    from brainbarriers.skullstrip.core import brain_mask as skullstrip

    heads = {s: (load_volume(data / s / f"{s}_SS.nii.gz"), load_volume(data / s / f"{s}_glm.nii.gz"))
             for s in subjects}
    atlases = {s: make_atlas(s, *heads[s]) for s in subjects}
    print(f"structures: {CONVENTION}")
    print(f"{'head':>6} {'method':>12} {'cerebellum':>10} {'ventricles':>10} {'vent ml':>13} "
          f"{'falx':>11} {'tentorium':>11} {'wall s':>7} {'cpu s':>7}  atlases")
    rows: dict[str, list[list[float]]] = {}
    for s in subjects:
        t1, labels = heads[s]
        truth = structures_from_neuromorphometrics(labels.array)
        brain = (skullstrip(t1).mask if brain_mask == "skullstrip"
                 else t1.with_array((t1.array > 0).astype(np.uint8)))
        others = tuple(atlases[o] for o in subjects if o != s)
        ml = float(np.prod(t1.spacing)) / 1000
        for method in methods:
            classifier = None  # trained before the clock starts: the stage ships it trained
            if method == "multiatlas":
                classifier = ventricles.train(
                    [pair for o in others for pair in ventricles.examples(
                        *heads[o.name], tuple(a for a in others if a is not o))])
            w0, c0 = time.perf_counter(), time.process_time()
            if method == "template-raw":
                pred, _ = atlas_barriers(t1, brain, anatomy="template", csf_ventricles=False,
                                         csf_sheets=False)
            elif method == "template":
                pred, _ = atlas_barriers(t1, brain, anatomy="template")
            else:
                pred, _ = atlas_barriers(t1, brain, anatomy="multiatlas", atlases=others,
                                         ventricle_classifier=classifier)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            cb, ve = dice(pred == CEREBELLUM, truth == CEREBELLUM), dice(pred == VENTRICLES, truth == VENTRICLES)
            pos = barrier_position(t1.with_array(pred), labels)
            shares = [pos[k][m] for k in ("falx", "tentorium")
                      for m in ("interface_covered", "sheet_on_interface")]
            rows.setdefault(method, []).append([cb, ve, *shares, wall, cpu])
            vols = f"{(pred == VENTRICLES).sum() * ml:5.1f} / {(truth == VENTRICLES).sum() * ml:5.1f}"
            used = "SRI24" if method.startswith("template") else "+".join(a.name for a in others)
            print(f"{s:>6} {method:>12} {cb:10.3f} {ve:10.3f} {vols:>13} {_pair(shares[:2])} "
                  f"{_pair(shares[2:])} {wall:7.1f} {cpu:7.1f}  {used}", flush=True)
    for method, r in rows.items():
        m = np.mean(r, axis=0)
        print(f"{'mean':>6} {method:>12} {m[0]:10.3f} {m[1]:10.3f} {'':>13} {_pair(m[2:4])} "
              f"{_pair(m[4:6])} {m[6]:7.1f} {m[7]:7.1f}")


def _pair(shares) -> str:
    return f"{shares[0]:.3f}/{shares[1]:.3f}"


def phantoms(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from brainbarriers.barriers import STRUCTURES
    from brainbarriers.barriers.infer import two_stage
    from brainbarriers.barriers.package import load_model_set
    from brainbarriers.barriers.phantom import make_barrier_case
    from brainbarriers.barriers.step import demo_models_folder
    from brainbarriers.metrics import dice

    models = load_model_set(args.models or demo_models_folder())
    keys = [s.key for s in STRUCTURES.values()]
    print(f"{'case':>6} {'method':>10} " + " ".join(f"{k[:10]:>10}" for k in keys) + f" {'mean':>6} {'s':>5}")
    rows: dict[str, list[list[float]]] = {}
    for seed in args.seeds:
        case = make_barrier_case(seed)
        truth = case.truths["barriers"].array
        brain = case.truths["brain_mask"].array > 0
        t0 = time.perf_counter()
        fine, coarse, _ = two_stage(models, {s: case.sequences[s] for s in models["stage1"][1]["inputs"]}, brain)
        results = {"stage1": (coarse, None), "two-stage": (fine, time.perf_counter() - t0)}
        if not args.no_atlas:
            from brainbarriers.barriers.atlas import atlas_barriers

            t0 = time.perf_counter()
            labels, _ = atlas_barriers(case.sequences["t1"], case.truths["brain_mask"])
            results["atlas"] = (labels, time.perf_counter() - t0)
        for method, (labels, seconds) in results.items():
            scores = [dice(labels == v, truth == v) for v in STRUCTURES]
            rows.setdefault(method, []).append(scores)
            took = f"{seconds:5.1f}" if seconds is not None else "    -"
            print(f"{seed:>6} {method:>10} " + " ".join(f"{d:10.3f}" for d in scores)
                  + f" {np.mean(scores):6.3f} {took}", flush=True)
    for method, scores in rows.items():
        m = np.mean(scores, axis=0)
        print(f"{'mean':>6} {method:>10} " + " ".join(f"{d:10.3f}" for d in m) + f" {np.mean(m):6.3f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--oasis", action="store_true", help="real labelled heads, template vs multi-atlas")
    p.add_argument("--data", default=str(OASIS))
    p.add_argument("--subjects", nargs="+", default=["1000", "1001", "1002"])
    p.add_argument("--methods", default="template-raw,template,multiatlas",
                   help="--oasis: which of template-raw, template, multiatlas, multiatlas-csf to run")
    p.add_argument("--brain-mask", choices=("nonzero", "skullstrip"), default="nonzero",
                   help="--oasis: the heads' non-zero voxels or the skullstrip step's mask")
    p.add_argument("--models", default=None, help="model-set folder (default: the shipped demo set)")
    p.add_argument("--seeds", type=int, nargs="+", default=[9001, 9002, 9003])
    p.add_argument("--no-atlas", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.oasis:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
        if len(args.subjects) < 2:
            p.error("--oasis needs at least two subjects (each is segmented with the others as atlases)")
        oasis(Path(args.data), args.subjects, args.methods.split(","), args.brain_mask)
    else:
        phantoms(args)


if __name__ == "__main__":
    main()
