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
    A folder, a ``.zip`` (extracted to this user's cache folder keyed by its sha256, and checked
    against the zip on every use; at most ``MAX_ZIP_FILES`` files and ``MAX_ZIP_BYTES``) or the
    name of an installed or shipped package (``name`` or ``name@version``). Verifies checksums
    unless asked not to.
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
    Copies a verified folder/zip into the user models folder under ``<name>-<version>`` (name and
    version must be plain folder names: every path a package names stays inside its folder). A URL
    is downloaded only when this is called, and then the download's sha256 must match ``sha256``
    if given, and the package's manifest checksums always. ``sha256`` with a folder is refused.
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
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path, folder_mode, inside, sha256_file

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
    def accepts_subsets(self) -> bool:
        """The model takes any non-empty subset of its inputs, an absent one fed as zeros (the
        mean after normalisation): manifest ``"absent_inputs": "zero"`` (trained with modality
        dropout)."""
        return self.manifest.get("absent_inputs") == "zero"

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
    if not manifest["weights"] or not isinstance(manifest["weights"], dict):
        raise InputError(path, "lists no weights files")
    for field in ("name", "version"):  # they name the folder a package is installed in
        _folder_name(manifest[field], field, path)
    return manifest


def _folder_name(value: object, field: str, where: Path) -> str:
    """A manifest value that becomes one folder name: no separators, no '..', no hidden name."""
    text = str(value)
    if not text or text.startswith(".") or any(c in text for c in "/\\:\0"):
        raise InputError(where, f"{field} {text!r} cannot name a folder (no '/', '\\', ':', "
                         "leading '.' or '..')")
    return text


def _package_folders(root: Path) -> list[Path]:
    """Packages in ``root``: its subfolders with a manifest, and the packages of a model set (a
    subfolder of packages, such as the barriers' ``stage1`` and ``stage2_<structure>``)."""
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):  # an install in progress, or one killed half-way
            continue
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


# A model package is a few files of at most a few hundred MB (HD-BET's five folds: 330 MB).
MAX_ZIP_FILES = 1000
MAX_ZIP_BYTES = 4 << 30


def _zip_cache_root() -> Path:
    """This user's private folder of extracted zips (in /tmp another user could plant one)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"brainbarriers-models-{uid}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != uid):
        raise InputError(root, "is not this user's folder: refusing to extract model zips there")
    return root


def _zip_members(path: Path, z: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's files, refusing names outside the package and zip bombs (sizes are the ones the
    zip declares; zipfile stops reading a member at its declared size and checks its CRC)."""
    members = [i for i in z.infolist() if not i.is_dir()]
    if len(members) > MAX_ZIP_FILES:
        raise InputError(path, f"holds {len(members)} files; a model package holds at most "
                         f"{MAX_ZIP_FILES}")
    total = sum(i.file_size for i in members)
    if total > MAX_ZIP_BYTES:
        raise InputError(path, f"expands to {total / 2**30:.1f} GiB; a model package is at most "
                         f"{MAX_ZIP_BYTES / 2**30:.0f} GiB")
    for i in members:  # zip slip
        name = Path(i.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in i.filename:
            raise InputError(path, f"zip member {i.filename!r} escapes the package folder")
    return members


def _same_as_zip(z: zipfile.ZipFile, members: list[zipfile.ZipInfo], folder: Path) -> bool:
    """``folder`` holds exactly the zip's files, byte for byte (checked on every use: the
    extraction is only a cache of the zip, which alone was checked)."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    if found != {i.filename for i in members}:
        return False
    for i in members:
        f = folder / i.filename
        if f.is_symlink() or f.stat().st_size != i.file_size:
            return False
        with z.open(i) as packed, open(f, "rb") as unpacked:
            while chunk := packed.read(1 << 20):
                if unpacked.read(len(chunk)) != chunk:
                    return False
    return True


def _cache_of(zip_path: Path) -> Path:
    return _zip_cache_root() / sha256_file(zip_path)[:32]  # content-addressed


def _extract_zip(path: Path) -> Path:
    """The zip's files in this user's cache (``<cache>/<sha256 of the zip>``), checked against
    the zip; extracted again when they differ."""
    cache = _cache_of(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = _zip_members(path, z)
            if cache.exists() and not _same_as_zip(z, members, cache):
                shutil.rmtree(cache)  # altered, or half-written by a killed process
            if not cache.exists():
                tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".extracting-"))
                try:
                    for i in members:
                        z.extract(i, tmp)
                    try:
                        tmp.rename(cache)
                    except OSError:  # another process extracted it meanwhile
                        if not _same_as_zip(z, members, cache):
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InputError(path, f"is not a valid zip file ({e})") from e
    return cache


def _package_in(folder: Path) -> Path:
    """A zip may hold the package's files at its root or inside one folder."""
    if (folder / MANIFEST).exists():
        return folder
    return next((p for p in folder.iterdir() if (p / MANIFEST).is_file()), folder)


def _is_zip(path_or_name: str | Path) -> bool:
    p = Path(path_or_name).expanduser()
    return p.is_file() and p.suffix.lower() == ".zip"


def resolve(path_or_name: str | Path) -> Path:
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        if p.suffix.lower() == ".zip":
            return _package_in(_extract_zip(p))
        if p.name == MANIFEST:
            return p.parent
        raise InputError(p, "is neither a model package folder nor a .zip of one")
    if os.sep in str(path_or_name) or str(path_or_name).endswith(".zip"):
        raise InputError(p, "does not exist")
    return _find_by_name(str(path_or_name))


# ------------------------------------------------------------------------------ loading
def verify_package(path_or_name: str | Path) -> ModelPackage:
    if _is_zip(path_or_name):
        cache = _extract_zip(Path(path_or_name).expanduser())
        try:
            return _verify_folder(_package_in(cache))
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)  # a refused package leaves no extraction
            raise
    return _verify_folder(resolve(path_or_name))


def _verify_folder(folder: Path) -> ModelPackage:
    manifest = _read_manifest(folder)
    for key, entry in manifest["weights"].items():
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise InputError(folder / MANIFEST, f"weights entry {key!r} needs 'file' and 'sha256'")
        f = inside(folder, entry["file"], folder / MANIFEST)
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
def _download(url: str, sha256: str | None, folder: Path) -> Path:
    import urllib.request

    dest = folder / (Path(url.split("?")[0]).name or "package.zip")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
    except OSError as e:
        raise InputError(None, f"download of {url} failed ({e})") from e
    if sha256 and h.hexdigest() != sha256.lower():
        raise InputError(None, f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}")
    return dest


def install_package(path_or_url: str | Path, sha256: str | None = None,
                    dest: str | Path | None = None) -> ModelPackage:
    """Copy a verified package into ``dest`` (the user models folder by default) as
    ``<name>-<version>``; nothing is written outside it, and nothing is left elsewhere."""
    src = str(path_or_url)
    if src.startswith(("http://", "https://")):
        download = Path(tempfile.mkdtemp(prefix="brainbarriers-download-"))
        try:
            return install_package(_download(src, sha256, download), dest=dest)
        finally:
            shutil.rmtree(download, ignore_errors=True)
    path = Path(src).expanduser()
    if sha256 and path.is_dir():
        raise InputError(path, "--sha256 checks a zip or a download; a folder's files are "
                         "checked against the sha256 in its manifest (zip it to pin it whole)")
    if sha256 and path.is_file() and sha256_file(path) != sha256.lower():
        raise InputError(path, f"sha256 differs from the expected {sha256}")
    pkg = verify_package(path)
    try:
        return _copy_package(pkg, Path(dest).expanduser() if dest else user_models_dir())
    finally:
        if _is_zip(path):  # the extraction was only needed to copy from
            shutil.rmtree(_cache_of(path), ignore_errors=True)


def _copy_package(pkg: ModelPackage, root: Path) -> ModelPackage:
    target = inside(root, f"{pkg.name}-{pkg.version}", pkg.path / MANIFEST)
    files = []
    for folder, _, names in os.walk(pkg.path):  # links to folders are not followed
        for name in names:
            rel = (Path(folder) / name).relative_to(pkg.path)
            inside(pkg.path, rel, pkg.path)  # a link to a file outside the package is refused
            files.append(rel)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".installing-"))
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pkg.path / rel, tmp / rel)
        os.chmod(tmp, folder_mode())  # mkdtemp made it 0700
        if target.exists():  # replace an earlier install of the same version
            old = Path(tempfile.mkdtemp(dir=root, prefix=".replaced-"))
            target.rename(old / "package")
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return verify_package(target)
