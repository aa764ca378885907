"""What `recurrl bench backbones` measures: its config, the names of its rows, and the device check."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from recurrl.agents import devices
from recurrl.policies.backbones import BACKBONES

SCANS: tuple[str, ...] = ("auto", "loop", "log", "numba", "triton")
# Mamba's rows: the compiled CPU kernels against mambapy's pure-PyTorch path (the reference).
MAMBA_SCANS: tuple[str, ...] = ("numba", "mambapy")
LEVELS: tuple[str, ...] = ("scan", "layer", "backbone")
MIN_GRU_FAMILY = ("mingru", "minlstm")
# Classic Decision Transformer (Chen et al. 2021): K=20 timesteps x (return-to-go, state, action) tokens.
DT_CONTEXT_STEPS = 20
DT_TOKENS_PER_STEP = 3
DT_TOKENS = DT_CONTEXT_STEPS * DT_TOKENS_PER_STEP
LAYER_LABELS = {"mingru": "minGRU", "minlstm": "minLSTM", "lstm": "nn.LSTM", "gru": "nn.GRU"}
CELL_LABELS = {"mingru": "minGRU", "minlstm": "minLSTM", "lstm": "nn.LSTMCell", "gru": "nn.GRUCell"}


@dataclass
class BenchConfig:
    """What to measure. Defaults are the full benchmark from the issue; `quick()` is a small subset."""

    device: str = "cpu"
    seq_lens: tuple[int, ...] = (64, 256, 1024, 4096)  # T for the training step
    batch_size: int = 64  # B for the training step
    step_batch_sizes: tuple[int, ...] = (1, 16, 256)  # B for per-tick step latency
    hidden_dim: int = 128  # H (the input width D is the same)
    backbones: tuple[str, ...] = tuple(BACKBONES)
    scans: tuple[str, ...] = SCANS  # scan backends for the minGRU/minLSTM rows
    levels: tuple[str, ...] = LEVELS
    repeats: int = 7  # timed training steps per configuration (fewer when over the time budget)
    warmup: int = 2  # untimed training steps first (the first one also measures memory)
    ticks: int = 200  # timed step ticks per configuration (fewer when over the time budget)
    budget_s: float = 3.0  # time budget per configuration; slow ones stop early, after >= 1 repeat
    dt_layers: int = 3  # depth of the Decision-Transformer comparison (classic DT has 3 layers)
    num_threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    memory: bool = True  # measure peak memory of the training step
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A small subset that finishes in well under a minute on a CPU."""
        values: dict[str, Any] = dict(
            seq_lens=(64, 256), step_batch_sizes=(1, 16), repeats=3, warmup=1, ticks=20, budget_s=0.3
        )
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the bad value and what to use instead."""
        unknown = [name for name in self.backbones if name not in BACKBONES]
        if unknown:
            raise ValueError(f"unknown backbone(s) {unknown}; valid names: {', '.join(sorted(BACKBONES))}")
        if not self.backbones:
            raise ValueError(
                "no backbones to benchmark; pass at least one of " + ", ".join(sorted(BACKBONES))
            )
        bad_scans = [scan for scan in self.scans if scan not in SCANS]
        if bad_scans:
            raise ValueError(f"unknown scan backend(s) {bad_scans}; valid: {', '.join(SCANS)}")
        bad_levels = [level for level in self.levels if level not in LEVELS]
        if bad_levels or not self.levels:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(self.levels)}")
        for name, values in (("seq_lens", self.seq_lens), ("step_batch_sizes", self.step_batch_sizes)):
            if not values or any(int(v) != v or v <= 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {list(values)}")
        for name in ("batch_size", "hidden_dim", "repeats", "warmup", "ticks", "dt_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ValueError(f"num_threads must be positive, got {self.num_threads}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """Parse `--device` (agents.devices.resolve_device); the bench measures CPU and CUDA only."""
    device = devices.resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported by the bench; use 'cpu' or 'cuda'")
    return device


def resolve_auto_scan(device: torch.device) -> str | None:
    """The backend scan="auto" picks on this device (None if the scan module cannot be imported)."""
    try:
        return importlib.import_module("recurrl.policies.backbones.kernels.scan_backends").resolve_backend(
            "auto", device
        )
    except Exception:
        return None


def scan_label(family: str, scan: str) -> str:
    return f"{LAYER_LABELS[family]} [{scan}]"
