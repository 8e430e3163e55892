"""Model packages: a manifest, safetensors weights and their sha256; a registry of installed packages.

A *model package* is a folder (or a ``.zip`` of one) holding ``manifest.json`` and one or more
``.safetensors`` weights files (one per fold/member/stage). The manifest (``FORMAT`` =
``brainbarriers-model/1``) has:

- ``name``, ``version``, ``task`` (e.g. ``"tumor"``, ``"barriers-stage1"``), ``description``,
  ``licence``;
- ``architecture``: ``{"name": "hnfnetv2" | "conresnet" | "segresnet" | "hmrnet" | "dynunet" | ...,
  "params": {...}}`` (keyword arguments of the network's constructor), see ``ARCHITECTURES``;
- ``inputs``: the input sequences/products in channel order, e.g. ``["t1", "t1ce", "t2", "flair"]``;
- ``weights``: ``{key: {"file": "fold0.safetensors", "sha256": "..."}}`` (filled by
  ``write_package``); several keys = folds of an ensemble;
- anything else the task needs (``normalisation``, ``patch_size``, ``spacing_mm``, ``output`` with
  ``type`` "regions"/"labels" and the ``channels``/``label_map``, ``training``...).

API
---
``write_package(folder, manifest, state_dicts) -> Path``
    ``state_dicts`` is ``{key: state_dict}`` (or one state_dict, stored as key ``"model"``). Writes
    ``<key>.safetensors`` per key, fills ``manifest["weights"]`` with file names and sha256, writes
    ``manifest.json`` last (atomically), so a half-written package never verifies.
``load_package(path_or_name, verify=True) -> ModelPackage``
    A folder, a ``.zip`` (extracted to a cache folder keyed by its sha256) or the name of an installed
    or shipped package (``name`` or ``name@version``). Verifies checksums unless asked not to.
``verify_package(path_or_name) -> ModelPackage``
    Raises ``InputError`` naming the package and the problem: no manifest, a malformed manifest, a
    missing weights file, a wrong sha256.
``ModelPackage``
    ``.path``, ``.manifest``, ``.name``, ``.version``, ``.task``, ``.inputs``, ``.weight_keys``;
    ``.state_dict(key=None)`` (tensors on CPU); ``.build_network(key=None, device="cpu")`` builds the
    architecture from the manifest, loads the key's weights (the first key by default) and returns it
    in eval mode; ``.networks(device)`` gives one network per weights key (the ensemble);
    ``.require_inputs(available, exact=False)`` refuses a package whose inputs the caller cannot give.
``models_dirs() -> list[Path]``
    Where packages are looked up, in order: ``$BRAINBARRIERS_MODELS`` (``os.pathsep``-separated),
    ``~/.brainbarriers/models``, the packages shipped in ``brainbarriers/data/models``.
    ``user_models_dir()`` is the first writable one (where ``install`` puts packages).
``list_packages(task=None) -> list[ModelPackage]`` (not verified; ``verify_package`` for that).
``install_package(path_or_url, sha256=None, dest=None) -> ModelPackage``
    Copies a verified folder/zip into the user models folder under ``<name>-<version>``. A URL is
    downloaded only when this is called, and then the download's sha256 must match ``sha256`` if
    given, and the package's manifest checksums always.
``register_architecture(name, factory)``
    Adds a network constructor (``factory(**params) -> nn.Module``). Built-in names are imported
    lazily; a manifest can also name ``"factory": "brainbarriers.<module>:<callable>"`` (only inside
    ``brainbarriers``, so a downloaded manifest cannot import arbitrary code).
``import_monai_bundle(bundle_dir, out_folder)`` (in ``brainbarriers.models.monai_bundle``)
    Converts a downloaded MONAI Model Zoo ``brats_mri_segmentation`` bundle to a package.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path, sha256_file

FORMAT = "brainbarriers-model/1"
MANIFEST = "manifest.json"
REQUIRED_FIELDS = ("name", "version", "task", "architecture", "inputs", "weights")
ENV_MODELS = "BRAINBARRIERS_MODELS"


# ------------------------------------------------------------------------------ architectures
def _segresnet(**params):
    from monai.networks.nets import SegResNet

    return SegResNet(**params)


def _lazy(module: str, attr: str) -> Callable:
    def factory(**params):
        return getattr(importlib.import_module(module), attr)(**params)

    return factory


ARCHITECTURES: dict[str, Callable] = {
    "hnfnetv2": _lazy("brainbarriers.nets.hnfnet", "HNFNetv2"),
    "conresnet": _lazy("brainbarriers.nets.conresnet", "ConResNet"),
    "segresnet": _segresnet,
}


def register_architecture(name: str, factory: Callable) -> None:
    ARCHITECTURES[name] = factory


def _factory(arch: Mapping, where) -> Callable:
    if "factory" in arch:
        target = str(arch["factory"])
        module, _, attr = target.partition(":")
        if not module.startswith("brainbarriers.") or not attr:
            raise InputError(where, f"architecture factory {target!r} must be "
                                    "'brainbarriers.<module>:<callable>'")
        return _lazy(module, attr)
    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise InputError(where, f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def _tuples(value):
    # JSON has no tuples; MONAI and our nets accept lists mostly, but some constructors test tuple.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


# ------------------------------------------------------------------------------ the package
@dataclass
class ModelPackage:
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest["inputs"])

    @property
    def weight_keys(self) -> list[str]:
        return list(self.manifest["weights"])

    def weights_path(self, key: str | None = None) -> Path:
        key = self.weight_keys[0] if key is None else key
        if key not in self.manifest["weights"]:
            raise InputError(self.path, f"has no weights {key!r} (has {', '.join(self.weight_keys)})")
        return self.path / self.manifest["weights"][key]["file"]

    def state_dict(self, key: str | None = None) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.weights_path(key)), device="cpu")

    def build_network(self, key: str | None = None, device: str = "cpu", *, load: bool = True):
        arch = self.manifest["architecture"]
        params = {k: _tuples(v) for k, v in arch.get("params", {}).items()}
        net = _factory(arch, self.path)(**params)
        if load:
            try:
                net.load_state_dict(self.state_dict(key), strict=True)
            except RuntimeError as e:
                raise InputError(self.weights_path(key), "weights do not fit the manifest's "
                                 f"architecture: {str(e).splitlines()[0]}") from e
        return net.to(device).eval()

    def networks(self, device: str = "cpu") -> list:
        return [self.build_network(k, device) for k in self.weight_keys]

    def require_inputs(self, available: Iterable[str], exact: bool = False) -> None:
        """Refuse a package whose input list the caller cannot provide (or, if ``exact``, differs)."""
        available = list(available)
        missing = [s for s in self.inputs if s not in available]
        if missing:
            raise InputError(self.path, f"model {self.name} needs inputs {self.inputs}, of which "
                             f"{missing} are not available (available: {available})")
        if exact and sorted(self.inputs) != sorted(available):
            raise InputError(self.path, f"model {self.name} takes inputs {self.inputs}, "
                             f"incompatible with {available}")

    def describe(self) -> str:
        return (f"{self.name} {self.version} [{self.task}] {self.manifest['architecture'].get('name')}"
                f" inputs={','.join(self.inputs)} folds={len(self.weight_keys)}  {self.path}")


# ------------------------------------------------------------------------------ writing
def write_package(folder: str | Path, manifest: Mapping, state_dicts: Mapping) -> Path:
    """Write ``state_dicts`` ({key: state_dict} or one state_dict) and the manifest into ``folder``."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state_dicts and all(isinstance(v, torch.Tensor) for v in state_dicts.values()):
        state_dicts = {"model": state_dicts}
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT)
    for name in ("name", "version", "task", "architecture", "inputs"):
        if name not in manifest:
            raise ValueError(f"manifest lacks {name!r}")
    weights = {}
    for key, sd in state_dicts.items():
        # Clone: safetensors refuses aliased tensors (e.g. DynUNet's shared heads).
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
        filename = f"{key}.safetensors"
        with atomic_path(folder / filename) as tmp:
            save_file(tensors, str(tmp), metadata={"package": str(manifest["name"]), "key": key})
        weights[key] = {"file": filename, "sha256": sha256_file(folder / filename)}
    manifest["weights"] = weights
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return folder


# ------------------------------------------------------------------------------ finding
def shipped_models_dir() -> Path:
    return Path(str(resources.files("brainbarriers") / "data" / "models"))


def models_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_MODELS, "").split(os.pathsep) if p]
    dirs.append(Path("~/.brainbarriers/models").expanduser())
    dirs.append(shipped_models_dir())
    return dirs


def user_models_dir() -> Path:
    env = [p for p in os.environ.get(ENV_MODELS, "").split(os.pathsep) if p]
    return Path(env[0]).expanduser() if env else Path("~/.brainbarriers/models").expanduser()


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(folder, f"is not a model package (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise InputError(path, "must hold a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise InputError(path, f"lacks the field(s) {', '.join(missing)}")
    if not manifest["weights"]:
        raise InputError(path, "lists no weights files")
    return manifest


def _package_folders(root: Path) -> list[Path]:
    """Packages in ``root``: its subfolders with a manifest, and the packages of a model set (a
    subfolder of packages, such as the barriers' ``stage1`` and ``stage2_<structure>``)."""
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if (p / MANIFEST).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(q for q in p.iterdir() if (q / MANIFEST).is_file())
    return found


def list_packages(task: str | None = None) -> list[ModelPackage]:
    packages, seen = [], set()
    for root in models_dirs():
        for folder in _package_folders(root):
            try:
                pkg = ModelPackage(folder, _read_manifest(folder))
            except InputError:
                continue
            if (pkg.name, pkg.version) in seen or (task and pkg.task != task):
                continue
            seen.add((pkg.name, pkg.version))
            packages.append(pkg)
    return packages


def _version_key(version: str):
    return tuple(int(p) if p.isdigit() else p for p in version.replace("-", ".").split("."))


def _find_by_name(name: str) -> Path:
    wanted, _, version = name.partition("@")
    candidates = []
    for root in models_dirs():
        for folder in _package_folders(root):
            try:
                m = _read_manifest(folder)
            except InputError:
                continue
            if m["name"] == wanted and (not version or str(m["version"]) == version):
                candidates.append((folder, str(m["version"])))
    if not candidates:
        where = ", ".join(str(d) for d in models_dirs())
        raise InputError(None, f"no model package named {name!r} (looked in {where}; "
                               "see `brainbarriers models list`)")
    # Highest version wins; among equals the earlier folder in models_dirs() order.
    best = max(candidates, key=lambda c: _version_key(c[1]))[1]
    return next(f for f, v in candidates if v == best)


def _extract_zip(path: Path) -> Path:
    digest = sha256_file(path)[:16]
    cache = Path(tempfile.gettempdir()) / "brainbarriers-models" / digest
    if (cache / MANIFEST).is_file():
        return cache
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for n in names:  # refuse absolute or parent paths (zip slip)
                if n.startswith("/") or ".." in Path(n).parts:
                    raise InputError(path, f"zip member {n!r} escapes the package folder")
            tmp = Path(tempfile.mkdtemp(dir=cache.parent if cache.parent.exists()
                                        else _mk(cache.parent)))
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        raise InputError(path, f"is not a valid zip file ({e})") from e
    # A zip may hold the files at its root or inside one folder.
    root = tmp if (tmp / MANIFEST).exists() else next(
        (p for p in tmp.iterdir() if (p / MANIFEST).is_file()), tmp)
    if cache.exists():
        shutil.rmtree(cache)
    root.rename(cache)
    return cache


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve(path_or_name: str | Path) -> Path:
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        if p.suffix.lower() == ".zip":
            return _extract_zip(p)
        if p.name == MANIFEST:
            return p.parent
        raise InputError(p, "is neither a model package folder nor a .zip of one")
    if os.sep in str(path_or_name) or str(path_or_name).endswith(".zip"):
        raise InputError(p, "does not exist")
    return _find_by_name(str(path_or_name))


# ------------------------------------------------------------------------------ loading
def verify_package(path_or_name: str | Path) -> ModelPackage:
    folder = resolve(path_or_name)
    manifest = _read_manifest(folder)
    for key, entry in manifest["weights"].items():
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise InputError(folder / MANIFEST, f"weights entry {key!r} needs 'file' and 'sha256'")
        f = folder / entry["file"]
        if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
            raise InputError(folder / MANIFEST, f"weights file {entry['file']!r} is outside the package")
        if not f.is_file():
            raise InputError(f, f"is missing from model package {manifest['name']}")
        actual = sha256_file(f)
        if actual != entry["sha256"]:
            raise InputError(f, f"checksum mismatch (manifest sha256 {entry['sha256'][:12]}..., "
                                f"file {actual[:12]}...): the package is corrupt or was altered; "
                                "refusing to load it")
    return ModelPackage(folder, manifest)


def load_package(path_or_name: str | Path, verify: bool = True) -> ModelPackage:
    if verify:
        return verify_package(path_or_name)
    folder = resolve(path_or_name)
    return ModelPackage(folder, _read_manifest(folder))


# ------------------------------------------------------------------------------ installing
def _download(url: str, sha256: str | None) -> Path:
    import urllib.request

    dest = Path(tempfile.mkdtemp()) / (Path(url.split("?")[0]).name or "package.zip")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
    except OSError as e:
        raise InputError(None, f"download of {url} failed ({e})") from e
    if sha256 and h.hexdigest() != sha256.lower():
        dest.unlink()
        raise InputError(None, f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}")
    return dest


def install_package(path_or_url: str | Path, sha256: str | None = None,
                    dest: str | Path | None = None) -> ModelPackage:
    src = str(path_or_url)
    if src.startswith(("http://", "https://")):
        path: Path = _download(src, sha256)
    else:
        path = Path(src).expanduser()
        if sha256 and path.is_file() and sha256_file(path) != sha256.lower():
            raise InputError(path, f"sha256 differs from the expected {sha256}")
    pkg = verify_package(path)
    root = Path(dest) if dest else user_models_dir()
    target = root / f"{pkg.name}-{pkg.version}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".installing-"))
    files = [MANIFEST] + [e["file"] for e in pkg.manifest["weights"].values()]
    files += [str(p.relative_to(pkg.path)) for p in pkg.path.rglob("*")
              if p.is_file() and str(p.relative_to(pkg.path)) not in files]
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pkg.path / rel, tmp / rel)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return verify_package(target)
