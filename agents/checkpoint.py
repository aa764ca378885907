"""Checkpoints: weights in safetensors, everything else in JSON, safe to kill at any instant.

A checkpoint is a directory:
    model.safetensors     model weights
    train.safetensors     optional: optimizer tensors and torch RNG state (for exact --resume)
    meta.json             kind, config, statistics, step, ... plus sha256 of each tensor file
It is written under a hidden temporary name (`.NAME.tmp-*`), `meta.json` last, and then swapped in with
two renames (the old version steps aside as `.NAME.old-*` first: a directory cannot be renamed over a
non-empty one). A kill at any instant therefore leaves at least one complete version on disk, and
`recover_checkpoint` (run before every save and when a run resumes) puts the newest complete one in
place and deletes the rest. Every change this module makes on disk goes through the five functions
under "disk operations", so tests can fail each of them in turn.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated or made for another model."""


def save_checkpoint(
    path: str | Path,
    model_tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory at `path`, replacing an older one there (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(path)  # an earlier save that failed half way: its leftovers go first
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    files = {"model.safetensors": model_tensors}
    if train_tensors is not None:
        files["train.safetensors"] = train_tensors
    hashes = {}
    for name, tensors in files.items():
        _write_tensors({k: _standalone(v) for k, v in tensors.items()}, tmp / name)
        hashes[name] = _sha256(tmp / name)
    full_meta = {**meta, "format_version": FORMAT_VERSION, "files": hashes}
    _write_text(tmp / META, json.dumps(full_meta, indent=2, sort_keys=True, default=_json_default))
    _swap_in(tmp, path)
    return path


def copy_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Copy the checkpoint at `source` to `path` (replacing what is there) as safely as a save."""
    source, path = Path(source), Path(path)
    read_meta(source)  # only a complete checkpoint is copied
    recover_checkpoint(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    for file in sorted(source.iterdir(), key=lambda f: f.name == META):  # meta.json last
        _copy_file(file, tmp / file.name)
    _swap_in(tmp, path)
    return path


def load_checkpoint(
    path: str | Path, with_train_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
    """Read and verify a checkpoint: (model tensors, meta, train tensors or None)."""
    path = Path(path)
    meta = read_meta(path)
    try:
        model = load_file(str(path / "model.safetensors"))
        train = None
        if with_train_state and "train.safetensors" in meta.get("files", {}):
            train = load_file(str(path / "train.safetensors"))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read tensors: {error}") from error
    return model, meta, train


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json, after checking that it is complete (every file there, checksums match)."""
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a recurrl checkpoint (no {META}); pass a checkpoint directory such as "
            "runs/<name>/checkpoints/last"
        )
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path / META} is corrupt: {error}") from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META} is corrupt: it holds a {type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for name, digest in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing; the checkpoint is incomplete")
        if _sha256(file) != digest:
            raise CheckpointError(f"{path}: {name} is corrupt or truncated (checksum mismatch)")
    return meta


def recover_checkpoint(path: str | Path) -> None:
    """Put the newest complete version of checkpoint `path` in place, from it and the leftovers of
    interrupted saves (`.NAME.tmp-*`, `.NAME.old-*`), and delete those leftovers.

    Newest means the highest meta["step"]; on a tie `path` itself stays. Without leftovers this reads
    nothing. Itself safe to kill: it only renames a complete version into place and deletes others.
    """
    path = Path(path)
    leftovers = sorted(path.parent.glob(f".{path.name}.tmp-*")) + sorted(
        path.parent.glob(f".{path.name}.old-*")
    )
    if not leftovers:
        return
    newest, newest_step = None, -1
    for candidate in [path, *leftovers]:
        step = _complete_step(candidate)
        if step is not None and step > newest_step:
            newest, newest_step = candidate, step
    if newest is not None and newest != path:
        _swap_in(newest, path)
    for leftover in leftovers:
        if leftover.exists():
            _remove_tree(leftover)


def _complete_step(path: Path) -> int | None:
    """The step of a complete checkpoint at `path` (-1 when it has none), or None if it is not one."""
    if not path.is_dir():
        return None
    try:
        return int(read_meta(path).get("step", -1))
    except (CheckpointError, TypeError, ValueError):
        return None


def _swap_in(new: Path, path: Path) -> None:
    """Rename directory `new` to `path`. Between the two renames only hidden names hold the checkpoint;
    recover_checkpoint finds it there."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
        _rename(path, old)
    _rename(new, path)
    _fsync_dir(path.parent)
    if old is not None:
        _remove_tree(old)


def load_weights_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load weights, turning shape/key mismatches into a clear 'made for another model' error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if extra:
            details.append(f"unexpected {extra[:5]}")
        if wrong:
            details.append(
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise CheckpointError(
            f"{where}: checkpoint was made for another model configuration ({'; '.join(details)})"
        )
    module.load_state_dict(tensors)


# ----------------------------------------------------------------------------- optimizer & RNG
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        plain_state[str(param_id)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{param_id}/{key}"] = value
            else:
                plain_state[str(param_id)][key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain_state}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict[str, Any]
) -> None:
    optimizer.load_state_dict(saved_optimizer_state(tensors, plain))


def saved_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `optimizer_state`: an optimizer state dict."""
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, param_id, key = name.split("/", 2)
            state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch, NumPy and Python RNG states, for resuming a run exactly."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    version, internal, gauss = random.getstate()
    plain = {"numpy": np.random.get_state(legacy=False), "python": [version, list(internal), gauss]}
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    np.random.set_state(plain["numpy"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- JSON files
def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file and a rename (results files, configs): a kill leaves the
    old file or the new one, and at worst a `.NAME.tmp-*` leftover (remove_leftover_files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    _write_text(tmp, json.dumps(data, indent=2, sort_keys=True, default=_json_default))
    _rename(tmp, path)


def remove_leftover_files(folder: str | Path) -> None:
    """Delete the `.NAME.tmp-*` files that interrupted `write_json_atomic` calls left in `folder`."""
    for leftover in Path(folder).glob(".*.tmp-*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- disk operations
# Every change on disk above goes through these five (tests/test_crash_safety.py fails each in turn).
def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path))
    _fsync_file(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_file(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    _fsync_file(target)


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- helpers
def _fsync_file(path: Path) -> None:
    """Flush a file to the disk before it is renamed into place (else a power cut can leave it empty)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor with storage of its own. safetensors refuses tensors that share storage,
    as views into one flat buffer do (agents/flat_params.py); those are copied."""
    out = tensor.detach().contiguous().cpu()
    return out if out.untyped_storage().nbytes() == out.nbytes else out.clone()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
