"""Targets as data: each is a check name, the measured value it reads, an operator and a threshold.

A value is usually the ratio of two rows' medians measured side by side in the same run (`Ratio`),
or one field of one row (`Field`, e.g. a kernel's fraction of HBM bandwidth). `check(rows)` turns a
target into the reported record: {"check", "value", "op", "target", "result", "detail"}, where
result is PASS, FAIL, or "not measured" when a row it needs is missing or failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .backbone_config import DT_TOKENS, BenchConfig, resolve_auto_scan, scan_label


@dataclass(frozen=True)
class RowKey:
    """One measured row: level, kind and method, at one T (train rows) or B (step rows)."""

    level: str
    kind: str
    method: str
    size: int

    @property
    def size_key(self) -> str:
        return "T" if self.kind == "train" else "B"

    def find(self, rows: list[dict]) -> dict | None:
        """The row, if it was measured (a skipped or failed row has no median)."""
        for row in rows:
            key = (row["level"], row["kind"], row["method"], row.get(self.size_key))
            if key == (self.level, self.kind, self.method, self.size):
                return row if "median_s" in row else None
        return None


@dataclass(frozen=True)
class Ratio:
    """numerator's median time / denominator's."""

    numerator: RowKey
    denominator: RowKey

    def value(self, rows: list[dict]) -> float | None:
        a, b = self.numerator.find(rows), self.denominator.find(rows)
        return a["median_s"] / b["median_s"] if a and b else None


@dataclass(frozen=True)
class Field:
    """One derived field of one row (e.g. "bandwidth_fraction")."""

    row: RowKey
    field: str

    def value(self, rows: list[dict]) -> float | None:
        row = self.row.find(rows)
        return row.get(self.field) if row else None


@dataclass(frozen=True)
class Target:
    check: str
    measure: Ratio | Field
    op: str  # "<=" or ">="
    threshold: float
    detail: str

    def passes(self, value: float) -> bool:
        return value <= self.threshold if self.op == "<=" else value >= self.threshold

    def evaluate(self, rows: list[dict]) -> dict[str, Any]:
        value = self.measure.value(rows)
        if value is None or not math.isfinite(value):
            value, result = None, "not measured"
        else:
            result = "PASS" if self.passes(value) else "FAIL"
        return {
            "check": self.check,
            "value": value,
            "op": self.op,
            "target": self.threshold,
            "result": result,
            "detail": self.detail,
        }


def layer_train(method: str, length: int) -> RowKey:
    return RowKey("layer", "train", method, length)


def _auto_mingru_train(rows: list[dict], config: BenchConfig, device: torch.device) -> tuple[RowKey, str]:
    """minGRU's layer row at T=1024 for what scan='auto' picks; if that was not measured, the
    fastest scan that was (its label then names the scan)."""
    auto = resolve_auto_scan(device) or "auto"
    key = layer_train(scan_label("mingru", auto), 1024)
    if key.find(rows) is not None:
        return key, f"minGRU [{auto}] (what scan='auto' picks)"
    measured = [
        (row, candidate)
        for candidate in (layer_train(scan_label("mingru", s), 1024) for s in config.scans)
        if (row := candidate.find(rows))
    ]
    if not measured:
        return key, f"minGRU [{auto}] (what scan='auto' picks)"
    _, fastest = min(measured, key=lambda pair: pair[0]["median_s"])
    return fastest, fastest.method


def cpu_targets(rows: list[dict], config: BenchConfig, device: torch.device) -> list[Target]:
    """The issue's CPU targets: minGRU against nn.LSTM, and the classic DT's re-run per tick."""
    layers, detail = config.dt_layers, f"one layer, B={config.batch_size}, H={config.hidden_dim}"
    mingru, label = _auto_mingru_train(rows, config, device)
    layer_step = RowKey("layer", "step", "minGRU", 1)
    rerun = RowKey("backbone", "dt", f"transformer re-run {DT_TOKENS} tokens ({layers}L)", 1)
    return [
        Target(
            f"{label} / nn.LSTM train step, T=1024",
            Ratio(mingru, layer_train("nn.LSTM", 1024)),
            "<=",
            0.7,
            detail,
        ),
        Target(
            "minGRU step / nn.LSTMCell step, B=1",
            Ratio(layer_step, RowKey("layer", "step", "nn.LSTMCell", 1)),
            "<=",
            1.2,
            "one layer, per tick",
        ),
        # "a minGRU step" as in the step target above: one minGRU layer's step (the reading) ...
        Target(
            f"DT {DT_TOKENS}-token re-run ({layers}L) / minGRU layer step, B=1",
            Ratio(rerun, layer_step),
            ">=",
            10.0,
            "per tick",
        ),
        # ... and the stricter like-for-like: a minGRU backbone as deep as the DT (blocks with MLPs too).
        Target(
            f"DT {DT_TOKENS}-token re-run / minGRU backbone step, B=1",
            Ratio(rerun, RowKey("backbone", "dt", f"mingru step ({layers}L)", 1)),
            ">=",
            10.0,
            f"both {layers} layers (stricter), per tick",
        ),
        *mamba_targets(config),
    ]


def mamba_targets(config: BenchConfig) -> list[Target]:
    """Issue 20's CPU targets for Mamba's compiled kernels, backbone against backbone (1 layer)."""
    detail = f"1-layer backbones, B={config.batch_size}, H={config.hidden_dim}"

    def train(method: str, length: int) -> RowKey:
        return RowKey("backbone", "train", method, length)

    checks = [
        Target(
            f"mamba [mambapy] / mamba [numba] train step, T={length}",
            Ratio(train("mamba [mambapy]", length), train("mamba [numba]", length)),
            ">=",
            5.0,
            detail,
        )
        for length in (256, 1024)
    ]
    checks.append(
        Target(
            "mamba [numba] / lstm train step, T=256",
            Ratio(train("mamba [numba]", 256), train("lstm", 256)),
            "<=",
            3.0,
            detail,
        )
    )
    for batch in (1, 16):
        step = Ratio(RowKey("backbone", "step", "mamba", batch), RowKey("backbone", "step", "lstm", batch))
        checks.append(
            Target(f"mamba step / lstm step, B={batch}", step, "<=", 2.0, "1-layer backbones, per tick")
        )
    return checks


def gpu_targets(config: BenchConfig) -> list[Target]:
    """The issue's GPU targets, at the longest T measured (4096 when it was)."""
    length = 4096 if 4096 in config.seq_lens else max(config.seq_lens)
    kernel = RowKey("scan", "train", "gated scan [triton]", length)
    fused = layer_train("minGRU [triton]", length)
    return [
        Target(
            f"gated scan [triton] bandwidth / HBM peak, T={length}",
            Field(kernel, "bandwidth_fraction"),
            ">=",
            0.6,
            "kernel alone, 36 B/element fp32 fwd+bwd",
        ),
        Target(
            f"cuDNN nn.LSTM / minGRU [triton] train step, T={length}",
            Ratio(layer_train("nn.LSTM", length), fused),
            ">=",
            10.0,
            "one layer each",
        ),
        Target(
            f"minGRU [log] / minGRU [triton] train step, T={length}",
            Ratio(layer_train("minGRU [log]", length), fused),
            ">=",
            3.0,
            "one layer each, eager log-space scan",
        ),
        Target(
            f"gated scan [log] / gated scan [triton], T={length}",
            Ratio(RowKey("scan", "train", "gated scan [log]", length), kernel),
            ">=",
            3.0,
            "scan alone",
        ),
    ]


def targets(rows: list[dict], config: BenchConfig, device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets for this device, from medians measured side by side in this run."""
    chosen = cpu_targets(rows, config, device) if device.type == "cpu" else gpu_targets(config)
    return [target.evaluate(rows) for target in chosen]
