"""The ``tumor`` pipeline step: BraTS labels (1 necrotic core, 2 oedema, 4 enhancing) from the four
skull-stripped sequences and the brain mask, and, when the model ran more than one network pass
(test-time flips, several folds), ``tumor_uncertainty``: where those passes disagree (0..1), so that
review starts where the model doubts. ``tumor_probability`` (the passes' mean whole-tumour
probability, before any post-processing) stays in the run's work folder: the supervoxels step keeps
its regions fine where it is not negligible.

Options (``--set tumor.KEY=VALUE``):
- ``model``: a model package folder, zip or installed name (default: the shipped
  ``brats-hnfnetv2-cpu``, trained on real BraTS cases; ``demo-hnfnetv2-phantom`` is the
  phantom-trained demo package). When sequences are missing, a package that does not take a
  subset of its inputs hands over to the package its manifest names for exactly those sequences
  (``subset_models``) or else for any subset (``subset_model``, trained with modality dropout), and
  the step says so;
- ``tta`` (true): test-time augmentation with the 7 flips plus the identity (shared out among the
  package's folds, so an ensemble costs what one network with TTA costs); ``tta_flips`` (8): how
  many of the eight flip variants to run (fewer is faster);
- ``small_et_ml`` (the package's value, else 0.2): an enhancing region below this volume becomes
  necrosis;
- ``min_component_ml`` (the package's value, else 0): tumour components smaller than this, other
  than the largest, are removed;
- ``focus_core_ml`` (the package's value, else 0): only the main tumour is kept - the largest
  component and other foci with at least this much tumour core (ml); 0 keeps every component,
  ``inf`` the largest only. Each component cleared is named in a warning (volume, centre in RAS);
- ``overlap`` (0.4): sliding-window overlap (``inference.DEFAULT_OVERLAP``);
- ``refine_supervoxels`` (false): snap the labels to merged supervoxels
  (``brainbarriers.supervoxels.snap.snap_to_supervoxels``), computed here from the sequences given
  with the supervoxel step's defaults (that step runs after this one: its merging follows the
  tumour); ``supervoxel_fraction`` (0.5) is the fraction of a supervoxel that must be labelled to
  keep it. Off by default: it does not help the real model (README).
"""

from __future__ import annotations

from ..errors import InputError
from ..models import load_package
from ..pipeline.core import Step, StepContext, option_flag
from ..volume import Volume

DEFAULT_MODEL = "brats-hnfnetv2-cpu"
# The model's input names -> the skull-stripped products of the skullstrip step.
PRODUCT_OF = {"t1": "t1_brain", "t1ce": "t1ce_brain", "t2": "t2_brain", "flair": "flair_brain"}
SEQUENCES = ("t1", "t1ce", "t2", "flair")
OPTIONS = ("model", "tta", "tta_flips", "small_et_ml", "min_component_ml", "focus_core_ml",
           "overlap", "refine_supervoxels", "supervoxel_fraction")


def subset_caveats(used: list[str]) -> list[str]:
    """What the given sequences cannot show, in words for the manifest, the CLI and the panel."""
    caveats = []
    if "t1ce" not in used:
        caveats.append("without T1ce, enhancing tumour and necrotic core (TC, ET) are unreliable: "
                       "use the whole tumour only")
    if not {"t2", "flair"} & set(used):
        caveats.append("without FLAIR or T2, the oedema and so the whole tumour (WT) are "
                       "unreliable")
    return caveats


def subset_model_for(package, used: list[str]) -> str | None:
    """The model a four-sequence package's manifest names for the sequences given: the one trained
    for exactly these (``subset_models``, keyed "t1+flair" in the package's input order), else the
    one trained for any subset (``subset_model``)."""
    return (package.manifest.get("subset_models", {}).get("+".join(used))
            or package.manifest.get("subset_model"))


def run(ctx: StepContext) -> dict[str, Volume]:
    from .inference import (
        DEFAULT_OVERLAP,
        FLIPS,
        network_passes,
        secondary_foci,
        segment_with_uncertainty,
    )

    opts = ctx.options
    package = load_package(opts.get("model", DEFAULT_MODEL))
    unknown = [s for s in package.inputs if s not in PRODUCT_OF]
    if unknown:
        raise InputError(package.path, f"model {package.name} takes inputs {package.inputs}; "
                         f"{unknown} are not sequences the tumor step has ({list(SEQUENCES)})")
    if package.task != "tumor":
        raise InputError(package.path, f"model {package.name} is a {package.task!r} model, "
                         "not a tumor model")
    used = [s for s in package.inputs if ctx.has(PRODUCT_OF[s])]
    missing = [s for s in package.inputs if s not in used]
    substitute = None
    if missing and not package.accepts_subsets:
        substitute = subset_model_for(package, used)
    if substitute:
        chosen = load_package(substitute)
        trained_for = ("any subset of the sequences" if substitute == package.manifest.get(
            "subset_model") else " + ".join(used))
        ctx.warn(f"{', '.join(missing)} not given: tumour model {chosen.name} (trained for "
                 f"{trained_for}) runs instead of {package.name}")
        package = chosen
        used = [s for s in package.inputs if ctx.has(PRODUCT_OF[s])]
        missing = [s for s in package.inputs if s not in used]
    if missing and not package.accepts_subsets:
        raise InputError(None, f"model {package.name} needs the sequence(s) {missing}, which were "
                         "not given (or not skull-stripped); it does not accept a subset of its "
                         "inputs")
    if not used:
        raise InputError(None, f"model {package.name} takes {package.inputs}; none was given")
    if missing:
        ctx.warn(f"tumour model {package.name} ran on {', '.join(used)} only ("
                 f"{', '.join(missing)} absent, fed as zeros)")
    for caveat in subset_caveats(used):
        ctx.warn(caveat)
    images = {s: ctx.get(PRODUCT_OF[s]) for s in used}
    ctx.progress(0.0, f"tumour segmentation with {package.name} {package.version} on {ctx.device}")
    tta = option_flag(opts.get("tta", True), "tumor", "tta")
    try:
        flips = int(opts.get("tta_flips", len(FLIPS)))
    except ValueError:
        raise InputError(None, f"tumor.tta_flips={opts['tta_flips']!r}: give a number from 1 to "
                         f"{len(FLIPS)}") from None
    try:
        overlap = float(opts.get("overlap", DEFAULT_OVERLAP))
    except (TypeError, ValueError):  # not a number (JSON null, a list, a word)
        overlap = -1.0
    if not 0 <= overlap < 1:
        raise InputError(None, f"tumor.overlap={opts['overlap']!r}: give a fraction from 0 to "
                         "below 1 (how much neighbouring windows share)")
    result = segment_with_uncertainty(
        images, ctx.get("brain_mask"), package, tta=tta, device=ctx.device,
        small_et_ml=_ml_option(opts, "small_et_ml"),
        min_component_ml=_ml_option(opts, "min_component_ml"),
        focus_core_ml=_ml_option(opts, "focus_core_ml"),
        overlap=overlap, flips=flips,
        progress=lambda f, m: ctx.progress(0.95 * f, m))
    labels = result.labels
    for message in component_warnings(result.cleared, labels, kept=False):
        ctx.warn(message)
    if option_flag(opts.get("refine_supervoxels", False), "tumor", "refine_supervoxels"):
        from ..supervoxels.snap import snap_to_supervoxels
        from ..supervoxels.step import compute_supervoxels

        ctx.progress(0.95, "snapping the labels to merged supervoxels")
        brain = ctx.get("brain_mask").array > 0
        _, merged, _ = compute_supervoxels([images[s].array for s in used], brain,
                                           device=ctx.device)
        snapped = snap_to_supervoxels(labels.array, merged,
                                      float(opts.get("supervoxel_fraction", 0.5)))
        labels = labels.with_array(snapped.astype("uint8"))
    for message in component_warnings(secondary_foci(labels.array, labels.voxel_volume_ml), labels,
                                      kept=True):
        ctx.warn(message)
    if not labels.array.any():
        ctx.warn(f"tumour model {package.name} found no tumour: the tumour label map is empty "
                 "(check the inputs, or delineate by hand)")
    if "demo" in package.name:
        ctx.warn(f"tumour model {package.name} is a demo model trained on synthetic phantoms; "
                 "clinical use needs weights trained on real data")
    ctx.progress(1.0, "tumour labels done")
    out = {"tumor": ctx.new_volume(labels.array),
           "tumor_probability": ctx.new_volume(result.probability.array)}
    if len(network_passes(len(package.weight_keys), tta, flips)) > 1:
        out["tumor_uncertainty"] = ctx.new_volume(result.uncertainty.array)
    return out


def _ml_option(opts: dict, key: str) -> float | None:
    """A volume option in ml (None: the package's value)."""
    if opts.get(key) is None:
        return None
    try:
        value = float(opts[key])
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InputError(None, f"tumor.{key}={opts[key]!r}: give a volume in ml (0 or more)")
    return value


#: A component at least this large is named in a warning of its own; smaller specks (a few voxels)
#: are counted together in one, so the reviewer's list shows what is worth a look.
NAMED_COMPONENT_ML = 0.1


def component_warnings(components: list[dict], labels: Volume, *, kept: bool) -> list[str]:
    """The run's warnings for tumour components apart from the main tumour (largest first): those
    ``keep_main_tumour`` cleared, or (``kept``) the foci it kept for their core - on the 16 real
    cross-validation cases, all unifocal, the one focus kept was a false positive."""
    named = [c for c in components if c["ml"] >= NAMED_COMPONENT_ML]
    specks = [c for c in components if c["ml"] < NAMED_COMPONENT_ML]
    messages = []
    for c in named:
        r, a, s = labels.world_coordinates([c["centre"]])[0]
        where = f"centred at RAS ({r:.0f}, {a:.0f}, {s:.0f}) mm"
        size = f"{c['ml']:.1f} ml ({c['core_ml']:.1f} ml of core)"
        messages.append(
            f"a second tumour focus of {size} apart from the main tumour was kept, {where}: a "
            "multifocal tumour, or a false positive: check it" if kept else
            f"a tumour component of {size} away from the main tumour was cleared as a likely false "
            f"positive, {where}: check it (tumor.focus_core_ml=0 keeps it)")
    if specks:
        total = sum(c["ml"] for c in specks) * 1000
        messages.append(
            f"{len(specks)} tumour component(s) under {NAMED_COMPONENT_ML:g} ml each ({total:.0f} mm3 "
            "in all) apart from the main tumour " + (
                "were kept" if kept else "were cleared too (tumor.focus_core_ml=0 keeps them)"))
    return messages


STEP = Step(
    name="tumor",
    run=run,
    sequences_any=SEQUENCES,  # the model says whether it takes a subset (accepts_subsets)
    inputs=("brain_mask",),
    optional_inputs=("t1_brain", "t1ce_brain", "t2_brain", "flair_brain"),
    outputs=("tumor", "tumor_probability"),
    optional_outputs=("tumor_uncertainty",),
    labels=("tumor",),
    version="3",
    description="tumour sub-regions (BraTS 1/2/4) by HNF-Netv2 / ConResNet / SegResNet packages",
    options=OPTIONS,
)
