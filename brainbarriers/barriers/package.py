"""Barriers model sets, stored as packages of the shared format (``brainbarriers.models``).

A *model set* is a folder holding a ``stage1`` package (the DynUNet localiser) and
``stage2_<structure key>`` packages (one HMRNet each; any subset of the six structures). Each is an
ordinary ``brainbarriers.models`` package: ``manifest.json`` (``architecture`` names the network's
factory and its parameters, ``inputs`` the sequences in channel order, ``task``
``barriers-stage1`` / ``barriers-stage2``) and its safetensors weights with their sha256. The
manifest's ``config`` holds what inference needs besides the network: ``spacing_mm``, and for
stage 2 ``label``, ``structure``, ``margin`` (voxels around the coarse box), ``reach`` (how near
the coarse mask stage 2 may label; absent or null: anywhere in the box) and ``patch`` (sliding
window), and ``training`` notes how the weights were made.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..models import MANIFEST, load_package
from ..models import write_package as write_model_package

FACTORIES = {
    "dynunet": "brainbarriers.nets.localiser:make_localiser",
    "hmrnet": "brainbarriers.nets.hmrnet:HMRNet",
}


def write_package(folder: str | Path, net: torch.nn.Module, architecture: str, config: dict,
                  notes: dict | None = None, name: str | None = None, version: str = "1",
                  half: bool = False) -> Path:
    """One network of a model set; ``config`` is the trainer's (``net`` params, ``sequences``...).

    ``half`` stores the weights as float16 (half the size; loading casts them back to float32).
    """
    folder = Path(folder)
    stage = int(config["stage"])
    extra = {k: v for k, v in config.items() if k not in ("net", "sequences")}
    manifest = {
        "name": name or f"barriers-{folder.parent.name}-{folder.name}",
        "version": version,
        "task": f"barriers-stage{stage}",
        "description": (notes or {}).get("description", f"barriers stage {stage} ({architecture})"),
        "licence": "same as brainbarriers",
        "architecture": {"name": architecture, "factory": FACTORIES[architecture], "params": config["net"]},
        "inputs": list(config["sequences"]),
        "normalisation": "z-score inside the brain mask, per sequence",
        "config": extra,
        "training": notes or {},
    }
    state = net.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        manifest["weights_dtype"] = "float16"
    return write_model_package(folder, manifest, state)


def load_network(folder: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(network in eval mode, manifest) of one package; its checksums are verified."""
    pkg = load_package(folder)
    if not pkg.task.startswith("barriers-stage"):
        raise InputError(pkg.path, f"is a {pkg.task!r} model, not a barriers model")
    arch = pkg.manifest["architecture"]
    if arch.get("name") == "hmrnet" and "fusion" not in arch.get("params", {}):
        # Written before HMRNet had fusion blocks: the layout those weights were trained with.
        arch.setdefault("params", {})["fusion"] = "concat"
    return pkg.build_network(device=device), pkg.manifest


def load_model_set(folder: str | Path, device: str = "cpu") -> dict:
    """{"stage1": (net, manifest), "stage2": {label: (net, manifest)}} from a model-set folder."""
    from . import STRUCTURES

    folder = Path(folder)
    if not (folder / "stage1" / MANIFEST).exists():
        raise InputError(folder, "is not a barriers model set (no stage1/manifest.json)")
    out = {"stage1": load_network(folder / "stage1", device), "stage2": {}, "folder": str(folder)}
    for label, s in STRUCTURES.items():
        if (folder / f"stage2_{s.key}" / MANIFEST).exists():
            out["stage2"][label] = load_network(folder / f"stage2_{s.key}", device)
    return out
