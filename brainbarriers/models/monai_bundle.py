"""Import the MONAI Model Zoo ``brats_mri_segmentation`` bundle (a folder the user downloaded).

The bundle's layout: ``configs/metadata.json`` (the data format: input channels, output channels),
``configs/inference.json`` (``network_def``: MONAI ``SegResNet`` and its arguments; the inferer's
``roi_size``), ``models/model.pt`` (a state dict), optionally ``LICENSE`` and ``docs/``. The bundle's
network takes the four sequences as channels (T1c, T1, T2, FLAIR in the published bundle) and gives
sigmoid region channels TC, WT, ET, z-scored over the non-zero voxels per channel
(``NormalizeIntensityd(nonzero=True, channel_wise=True)``) at 1 mm. The importer reads these from
the bundle's own files where they are stated, falling back to the published values, and writes a
model package whose manifest records them, so our pipeline feeds the network as the bundle does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from . import ModelPackage, load_package, write_package

DEFAULT_INPUTS = ["t1ce", "t1", "t2", "flair"]
DEFAULT_OUTPUTS = ["TC", "WT", "ET"]
DEFAULT_NET = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
               "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
SEGRESNET_ARGS = {"spatial_dims", "init_filters", "in_channels", "out_channels", "dropout_prob",
                  "act", "norm", "norm_name", "num_groups", "use_conv_final", "blocks_down",
                  "blocks_up", "upsample_mode"}


def _sequence_name(text: str) -> str | None:
    t = re.sub(r"[^a-z0-9]", "", text.lower())
    for key, name in (("flair", "flair"), ("t2f", "flair"), ("t1ce", "t1ce"), ("t1c", "t1ce"),
                      ("t1gd", "t1ce"), ("t1contrast", "t1ce"), ("t1n", "t1"), ("t2w", "t2"),
                      ("t1", "t1"), ("t2", "t2")):
        if t.startswith(key) or key in t:
            return name
    return None


def _region_name(text: str) -> str | None:
    t = text.lower()
    if "core" in t or t.strip() == "tc":
        return "TC"
    if "whole" in t or t.strip() == "wt":
        return "WT"
    if "enhanc" in t or t.strip() == "et":
        return "ET"
    return None


def _channel_defs(section: dict) -> list[str] | None:
    defs = section.get("channel_def")
    if not isinstance(defs, dict) or not defs:
        return None
    return [str(defs[k]) for k in sorted(defs, key=lambda k: int(k))]


def _find_roi(obj) -> list[int] | None:
    if isinstance(obj, dict):
        if "roi_size" in obj and isinstance(obj["roi_size"], list):
            return [int(v) for v in obj["roi_size"]]
        for v in obj.values():
            roi = _find_roi(v)
            if roi:
                return roi
    elif isinstance(obj, list):
        for v in obj:
            roi = _find_roi(v)
            if roi:
                return roi
    return None


def import_monai_bundle(bundle_dir: str | Path, out_folder: str | Path) -> ModelPackage:
    import torch

    bundle = Path(bundle_dir)
    meta_path = bundle / "configs" / "metadata.json"
    inf_path = bundle / "configs" / "inference.json"
    weights_path = bundle / "models" / "model.pt"
    for p in (meta_path, inf_path, weights_path):
        if not p.is_file():
            raise InputError(p, "is missing: not a MONAI bundle folder (configs/metadata.json, "
                                "configs/inference.json, models/model.pt expected)")
    try:
        meta = json.loads(meta_path.read_text())
        inference = json.loads(inf_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(meta_path.parent, f"holds invalid JSON ({e})") from e
    net_def = dict(inference.get("network_def", {}))
    target = str(net_def.pop("_target_", "SegResNet"))
    if not target.split(".")[-1] == "SegResNet":
        raise InputError(inf_path, f"network_def is {target}, only SegResNet bundles are supported")
    params = dict(DEFAULT_NET)
    params.update({k: v for k, v in net_def.items() if k in SEGRESNET_ARGS})
    fmt = meta.get("network_data_format", {})
    in_defs = _channel_defs(fmt.get("inputs", {}).get("image", {}))
    inputs = [_sequence_name(d) for d in in_defs] if in_defs else list(DEFAULT_INPUTS)
    if None in inputs or len(set(inputs)) != len(inputs) or len(inputs) != params["in_channels"]:
        raise InputError(meta_path, f"input channels {in_defs} do not name the four sequences")
    out_defs = _channel_defs(fmt.get("outputs", {}).get("pred", {}))
    outputs = [_region_name(d) for d in out_defs] if out_defs else list(DEFAULT_OUTPUTS)
    if sorted(o or "" for o in outputs) != ["ET", "TC", "WT"]:
        raise InputError(meta_path, f"output channels {out_defs} are not TC/WT/ET")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    from monai.networks.nets import SegResNet

    net = SegResNet(spatial_dims=3, **{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in params.items() if k != "spatial_dims"})
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(weights_path, f"does not fit the bundle's network_def: "
                                       f"{str(e).splitlines()[0]}") from e
    licence = (bundle / "LICENSE").read_text()[:200] if (bundle / "LICENSE").is_file() else \
        "see the MONAI bundle's LICENSE"
    manifest = {
        "name": "monai-" + str(meta.get("name", "brats_mri_segmentation")).lower().replace(" ", "-")
                .replace("(", "").replace(")", ""),
        "version": str(meta.get("version", "0")),
        "task": "tumor",
        "description": f"Imported from the MONAI bundle at {bundle.resolve()}: "
                       f"{meta.get('description', '')}",
        "licence": licence.strip().splitlines()[0] if licence.strip() else "unknown",
        "architecture": {"name": "segresnet", "params": params},
        "inputs": inputs,
        "normalisation": {"kind": "nonzero-zscore"},
        "spacing_mm": [1.0, 1.0, 1.0],
        "patch_size": _find_roi(inference) or [240, 240, 160],
        "output": {"type": "regions", "channels": outputs},
        "postprocess": {"small_et_ml": 0.0},
        "source": {"kind": "monai-bundle", "monai_version": meta.get("monai_version")},
    }
    write_package(out_folder, manifest, {"model": net.state_dict()})
    return load_package(out_folder)
