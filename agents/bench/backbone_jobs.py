"""The rows of `recurrl bench backbones`: what each one builds and times, and the plan of all rows.

Three levels: the minGRU gated scan alone (per scan backend), ONE recurrent layer like for like
(minGRU/minLSTM per scan against nn.LSTM/nn.GRU and their cells), and each full backbone (plus
Mamba's compiled kernels against mambapy's path, and the classic Decision Transformer re-running its
context window next to a KV-cache step and a minGRU step of the same depth).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recurrl.policies.backbones import Backbone, make_backbone

from .backbone_config import (
    CELL_LABELS,
    DT_TOKENS,
    LAYER_LABELS,
    MAMBA_SCANS,
    MIN_GRU_FAMILY,
    BenchConfig,
    resolve_auto_scan,
    scan_label,
)


def _layer_class(family: str) -> type[nn.Module]:
    """The single-recurrence layer module of minGRU/minLSTM (MinGRULayer / MinLSTMLayer)."""
    module = importlib.import_module(f"recurrl.policies.backbones.{family}")
    return getattr(module, {"mingru": "MinGRULayer", "minlstm": "MinLSTMLayer"}[family])


Maker = Callable[[], Callable[[], None]]  # builds a model, returns the function to time


@dataclass
class Job:
    """One row to measure: `make()` builds the model and returns the function to time."""

    level: str  # "scan" | "layer" | "backbone"
    kind: str  # "train" | "step" | "dt"
    method: str  # row label, e.g. "minGRU [loop]", "nn.LSTM", "transformer re-run 60 tokens"
    size: int  # T for train, B for step/dt
    make: Maker | None
    skip: str | None = None  # reason the row is not measured on this device

    @property
    def label(self) -> str:
        unit = "T" if self.kind == "train" else "B"
        return f"{self.level} {self.kind} {self.method} {unit}={self.size}"


def _train_fn(model: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    """One training step: forward over x [B, T, D] -> y [B, T, H], backward of y.sum()."""

    def run() -> None:
        model.zero_grad(set_to_none=True)
        forward(x).sum().backward()

    return run


def _inputs(batch: int, length: int | None, config: BenchConfig, device: torch.device) -> Tensor:
    shape = (batch, config.hidden_dim) if length is None else (batch, length, config.hidden_dim)
    return torch.randn(shape, device=device)


def _scan_train(scan: str, length: int, config: BenchConfig, device: torch.device) -> Maker:
    """The gated scan alone, time-major as the layers call it: kp [T, B, 2H] -> h [T, B, H], backward of a
    fixed upstream gradient, so the traffic is the kernel's own (no projection, no materialized ones)."""

    def make() -> Callable[[], None]:
        gated_scan_tm = importlib.import_module("recurrl.policies.backbones.kernels.scan").gated_scan_tm
        torch.manual_seed(config.seed)
        h = config.hidden_dim
        kp = torch.randn(length, config.batch_size, 2 * h, device=device, requires_grad=True)
        grad = torch.randn(length, config.batch_size, h, device=device)

        def run() -> None:
            kp.grad = None
            gated_scan_tm(kp, None, None, scan).backward(grad)

        return run

    return make


def _layer_train(
    family: str, scan: str | None, length: int, config: BenchConfig, device: torch.device
) -> Maker:
    def make() -> Callable[[], None]:
        torch.manual_seed(config.seed)
        d = h = config.hidden_dim
        x = _inputs(config.batch_size, length, config, device)
        if family in MIN_GRU_FAMILY:
            layer = _layer_class(family)(d, h, scan=scan).to(device)
            return _train_fn(layer, lambda x: layer(x)[0], x)  # h0 = zeros, as nn.LSTM's default
        rnn = (nn.LSTM if family == "lstm" else nn.GRU)(d, h, batch_first=True).to(device)
        return _train_fn(rnn, lambda x: rnn(x)[0], x)

    return make


def _layer_step(family: str, batch: int, config: BenchConfig, device: torch.device) -> Maker:
    def make() -> Callable[[], None]:
        torch.manual_seed(config.seed)
        d = h = config.hidden_dim
        x = _inputs(batch, None, config, device)
        zeros = torch.zeros(batch, h, device=device)
        if family in MIN_GRU_FAMILY:
            layer = _layer_class(family)(d, h).to(device)
            state = [zeros]

            def tick() -> None:
                state[0] = layer.step(x, state[0])

            return tick
        if family == "lstm":
            lstm_cell = nn.LSTMCell(d, h).to(device)
            hc = [(zeros, zeros.clone())]

            def tick() -> None:
                hc[0] = lstm_cell(x, hc[0])

            return tick
        gru_cell = nn.GRUCell(d, h).to(device)
        state = [zeros]

        def tick() -> None:
            state[0] = gru_cell(x, state[0])

        return tick

    return make


def _backbone(
    name: str, scan: str | None, config: BenchConfig, device: torch.device, num_layers: int = 1
) -> Backbone:
    options = {} if scan is None else {"scan": scan}
    torch.manual_seed(config.seed)
    return make_backbone(name, config.hidden_dim, config.hidden_dim, num_layers=num_layers, **options).to(
        device
    )


def _backbone_train(
    name: str, scan: str | None, length: int, config: BenchConfig, device: torch.device
) -> Maker:
    def make() -> Callable[[], None]:
        model = _backbone(name, scan, config, device)
        x = _inputs(config.batch_size, length, config, device)
        return _train_fn(model, lambda x: model(x)[0], x)

    return make


def _backbone_step(
    name: str,
    batch: int,
    config: BenchConfig,
    device: torch.device,
    num_layers: int = 1,
    scan: str | None = None,
) -> Maker:
    def make() -> Callable[[], None]:
        model = _backbone(name, scan, config, device, num_layers).eval()
        x = _inputs(batch, None, config, device)
        state = [model.initial_state(batch, device)]

        def tick() -> None:
            _, state[0] = model.step(x, state[0])

        return tick

    return make


def _dt_rerun(batch: int, config: BenchConfig, device: torch.device) -> Maker:
    """Classic DT inference: every tick, the whole 60-token window goes through `forward` again."""

    def make() -> Callable[[], None]:
        model = _backbone("transformer", None, config, device, config.dt_layers).eval()
        window = _inputs(batch, DT_TOKENS, config, device)

        def tick() -> None:
            model(window)

        return tick

    return make


def effective_scans(config: BenchConfig, device: torch.device) -> list[str]:
    """config.scans with "auto" replaced by the backend it picks here, so no backend is timed twice."""
    auto = resolve_auto_scan(device) or "auto"
    scans: list[str] = []
    for scan in config.scans:
        scan = auto if scan == "auto" else scan
        if scan not in scans:
            scans.append(scan)
    return scans


def _skip_reason(scan: str, device: torch.device) -> str | None:
    """Why a scan backend's row is not measured on this device (its kernel runs on one device type only)."""
    if scan == "triton" and device.type != "cuda":
        return "cuda only"
    if scan == "numba" and device.type != "cpu":
        return "cpu only"
    return None


def _scans_for(family: str, scans: list[str], device: torch.device) -> list[tuple[str | None, str | None]]:
    """(scan, skip reason) per row of one family; the RNN baselines have no scan option, so one row."""
    if family == "mamba":
        return [(scan, _skip_reason(scan, device)) for scan in MAMBA_SCANS]
    if family not in MIN_GRU_FAMILY:
        return [(None, None)]
    return [(scan, _skip_reason(scan, device)) for scan in scans]


def _scan_jobs(config: BenchConfig, device: torch.device, scans: list[str]) -> list[Job]:
    """minGRU's recurrence alone: scan.gated_scan_tm on pre-activations [T, B, 2H], per backend and T."""
    jobs: list[Job] = []
    for scan in [s for s in scans if s != "auto"]:
        skip = _skip_reason(scan, device)
        for length in config.seq_lens:
            make = _scan_train(scan, length, config, device)
            jobs.append(Job("scan", "train", f"gated scan [{scan}]", length, make, skip))
    return jobs


def _layer_jobs(config: BenchConfig, device: torch.device, scans: list[str]) -> list[Job]:
    """One recurrent layer like for like: training per (family, scan, T), then one step per (family, B)."""
    families = [name for name in ("mingru", "minlstm", "lstm", "gru") if name in config.backbones]
    jobs: list[Job] = []
    for family in families:
        for scan, skip in _scans_for(family, scans, device):
            method = LAYER_LABELS[family] if scan is None else scan_label(family, scan)
            for length in config.seq_lens:
                make = _layer_train(family, scan, length, config, device)
                jobs.append(Job("layer", "train", method, length, make, skip))
    for family in families:
        for batch in config.step_batch_sizes:
            make = _layer_step(family, batch, config, device)
            jobs.append(Job("layer", "step", CELL_LABELS[family], batch, make))
    return jobs


def _dt_jobs(config: BenchConfig, device: torch.device) -> list[Job]:
    """The classic Decision Transformer's window re-run next to a KV-cache step and a minGRU step of the
    same depth, per B (interleaved per B, so the three rows of one batch size sit together)."""
    layers = config.dt_layers
    jobs: list[Job] = []
    for batch in config.step_batch_sizes:
        rerun = _dt_rerun(batch, config, device)
        jobs.append(Job("backbone", "dt", f"transformer re-run {DT_TOKENS} tokens ({layers}L)", batch, rerun))
        kv_step = _backbone_step("transformer", batch, config, device, layers)
        jobs.append(Job("backbone", "dt", f"transformer KV-cache step ({layers}L)", batch, kv_step))
        if "mingru" in config.backbones:
            mingru_step = _backbone_step("mingru", batch, config, device, layers)
            jobs.append(Job("backbone", "dt", f"mingru step ({layers}L)", batch, mingru_step))
    return jobs


def _backbone_jobs(config: BenchConfig, device: torch.device, scans: list[str]) -> list[Job]:
    """Each full backbone: training per (backbone, scan, T), one step per (backbone, B), then Mamba's
    eager mambapy step and the Decision Transformer comparison when those backbones are asked for."""
    jobs: list[Job] = []
    for name in config.backbones:
        for scan, skip in _scans_for(name, scans, device):
            method = name if scan is None else f"{name} [{scan}]"
            for length in config.seq_lens:
                make = _backbone_train(name, scan, length, config, device)
                jobs.append(Job("backbone", "train", method, length, make, skip))
    for name in config.backbones:
        for batch in config.step_batch_sizes:
            jobs.append(Job("backbone", "step", name, batch, _backbone_step(name, batch, config, device)))
    if "mamba" in config.backbones:
        # The eager step on mambapy's path, next to the default one (compiled on CPU).
        for batch in config.step_batch_sizes:
            make = _backbone_step("mamba", batch, config, device, scan="mambapy")
            jobs.append(Job("backbone", "step", "mamba [mambapy]", batch, make))
    if "transformer" in config.backbones:
        jobs.extend(_dt_jobs(config, device))
    return jobs


def plan(config: BenchConfig, device: torch.device) -> list[Job]:
    """Every row the configuration asks for, in the order they are measured and shown."""
    scans = effective_scans(config, device)
    jobs: list[Job] = []
    if "scan" in config.levels and "mingru" in config.backbones:
        jobs.extend(_scan_jobs(config, device, scans))
    if "layer" in config.levels:
        jobs.extend(_layer_jobs(config, device, scans))
    if "backbone" in config.levels:
        jobs.extend(_backbone_jobs(config, device, scans))
    return jobs
