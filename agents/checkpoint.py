"""Checkpoints: weights in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory:
    model.safetensors     model weights
    train.safetensors     optional: optimizer tensors and torch RNG state (for exact --resume)
    meta.json             kind, config, statistics, step, ... plus sha256 of each tensor file
The directory is written under a temporary name and renamed into place, and `meta.json` is written
last, so a crash never leaves a half checkpoint under a real name; the hashes catch later corruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

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
    """Write a checkpoint directory atomically at `path` (replacing an older one there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        files = {"model.safetensors": model_tensors}
        if train_tensors is not None:
            files["train.safetensors"] = train_tensors
        hashes = {}
        for name, tensors in files.items():
            save_file({k: _standalone(v) for k, v in tensors.items()}, str(tmp / name))
            hashes[name] = _sha256(tmp / name)
        full_meta = {**meta, "format_version": FORMAT_VERSION, "files": hashes}
        _write_text_synced(tmp / META, json.dumps(full_meta, indent=2, sort_keys=True, default=_json_default))
        # Swap: move the old one aside first (rename over a non-empty directory is not allowed).
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(
    path: str | Path, with_train_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
    """Read and verify a checkpoint: (model tensors, meta, train tensors or None)."""
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a recurrl checkpoint (no {META}); pass a checkpoint directory such as "
            "runs/<name>/checkpoints/last"
        )
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / META} is corrupt: {error}") from error
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
    try:
        model = load_file(str(path / "model.safetensors"))
        train = None
        if with_train_state and "train.safetensors" in meta.get("files", {}):
            train = load_file(str(path / "train.safetensors"))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read tensors: {error}") from error
    return model, meta, train


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


# ----------------------------------------------------------------------------- helpers
def resumable_summary_writer(run_dir: str | Path, step: int, **kwargs: Any) -> SummaryWriter:
    """A TensorBoard writer for a run that starts, or resumes from a checkpoint, at `step`.

    On resume, TensorBoard drops the events a killed run logged after its last checkpoint, so the
    resumed run replaces them instead of drawing a second line. Events at the checkpoint's own step
    were logged before it was saved and stay, hence step + 1.
    """
    from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

    return SummaryWriter(str(run_dir), purge_step=step + 1 if step > 0 else None, **kwargs)


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


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file and rename (results files, pointers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_text_synced(tmp, json.dumps(data, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


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
