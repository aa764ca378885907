"""`recurrl bench`: how fast each backbone trains (scan) and acts (step) on the current device.

Three measurements, all taken side by side in one run so that ratios between them are fair:

- **train**: one training step (forward + backward of the sum of the outputs) over `[B, T, D]`
  for each T, timed with warmup, several repeats, median and IQR. Peak memory of the same step.
- **step**: per-tick `step` latency at several batch sizes, under `torch.no_grad()`, the state
  carried from tick to tick, median over many ticks.
- **dt**: what a classic Decision Transformer pays per tick: re-running its whole context window
  (20 steps x 3 tokens = 60 tokens) through the Transformer's `forward`, next to the same
  Transformer's KV-cache `step` and a minGRU `step` of the same depth.

Three levels of rows:

- **scan**: the minGRU gated scan alone (pre-activations in, h out) per backend: the kernel
  whose achieved memory bandwidth the GPU target is about (36 bytes per element fwd+bwd in fp32).
- **layer**: ONE recurrent layer, like for like: the minGRU/minLSTM layer per scan backend against
  `torch.nn.LSTM`/`torch.nn.GRU` (and `nn.LSTMCell`/`nn.GRUCell` for `step`). The targets are about these.
- **backbone**: each full backbone from `make_backbone(name, H, H, num_layers=1)`, plus scan variants
  (minGRU/minLSTM per scan backend; Mamba's compiled kernels "numba" against mambapy's path, for the
  training step and for the per-tick step).

A row that fails (import error, out of memory, a backbone that rejects the configuration) is
recorded with its error and the bench goes on. Results go to `bench.json`, `bench.md` and `bench.png`.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recurrl.agents import devices
from recurrl.policies.backbones import BACKBONES, Backbone, make_backbone

SCANS: tuple[str, ...] = ("auto", "loop", "log", "numba", "triton")
# Mamba's rows: the compiled CPU kernels against mambapy's pure-PyTorch path (the reference).
MAMBA_SCANS: tuple[str, ...] = ("numba", "mambapy")
LEVELS: tuple[str, ...] = ("scan", "layer", "backbone")
MIN_GRU_FAMILY = ("mingru", "minlstm")
# Classic Decision Transformer (Chen et al. 2021): K=20 timesteps x (return-to-go, state, action) tokens.
DT_CONTEXT_STEPS = 20
DT_TOKENS_PER_STEP = 3
# Floor traffic of a fused minGRU layer kernel in fp32: ~12 bytes/element forward + ~24 backward.
FUSED_BYTES_PER_ELEMENT = 36
# Spec HBM bandwidth (bytes/s) by device-name fragment, most specific first. Unknown devices fall
# back to a measured device-to-device copy bandwidth (said so in the output).
HBM_PEAK_BYTES_PER_S: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("L40", 0.864e12),  # L40 and L40S
    ("L4", 0.3e12),
    ("A10", 0.6e12),
    ("RTX 4090", 1.008e12),
    ("V100", 0.9e12),
)
CPU_MEMORY_METHOD = (
    "CPU: peak of live tensor bytes allocated during the step (running sum of the CPU allocator's "
    "alloc/free events recorded by torch.autograd.profiler with profile_memory=True), on the first warmup run"
)
CUDA_MEMORY_METHOD = (
    "CUDA: torch.cuda.max_memory_allocated during the step minus the bytes allocated before it"
)


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
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
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
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"threads must be positive, got {self.threads}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """Parse `--device` (agents.devices.resolve_device); the bench measures CPU and CUDA only."""
    device = devices.resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported by the bench; use 'cpu' or 'cuda'")
    return device


# --------------------------------------------------------------------------- timing and memory
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(samples: Sequence[float]) -> dict[str, Any]:
    """Median and interquartile range of timings in seconds."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median_s": statistics.median(ordered),
        "iqr_s": q3 - q1,
        "min_s": ordered[0],
        "repeats": len(ordered),
        "samples_s": [round(s, 9) for s in samples],
    }


def _peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while `fn` runs (see CPU_/CUDA_MEMORY_METHOD)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    # torch.autograd.profiler rather than torch.profiler: the same allocator events, without
    # torch.profiler's first-use import of torch._dynamo (seconds).
    from torch.autograd.profiler import profile

    # Kineto logs two lines per profiler start/stop at its default level; 6 keeps the progress bar readable.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(use_cpu=True, profile_memory=True) as prof:
        fn()
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def time_training_step(
    fn: Callable[[], None], device: torch.device, config: BenchConfig, measure_memory: bool = True
) -> dict[str, Any]:
    """Warm up (the first run also measures memory), then time up to `repeats` runs within `budget_s`."""
    result: dict[str, Any] = {}
    begin = time.perf_counter()
    if measure_memory and config.memory:
        result["peak_mem_bytes"] = _peak_memory(fn, device)
    else:
        fn()
        _sync(device)
    first = time.perf_counter() - begin
    # More warmup only while it is cheap: a slow configuration spends its budget on timed runs.
    spent = first
    for _ in range(config.warmup - 1):
        if spent > config.budget_s / 2:
            break
        start = time.perf_counter()
        fn()
        _sync(device)
        spent += time.perf_counter() - start
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < config.repeats:
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
        if time.perf_counter() - begin >= config.budget_s:
            break
    result.update(_stats(samples))
    return result


def time_ticks(tick: Callable[[], None], device: torch.device, config: BenchConfig) -> dict[str, Any]:
    """Per-tick latency: a few warmup ticks, then up to `ticks` timed ticks within `budget_s`."""
    with torch.no_grad():
        for _ in range(3):
            tick()
        _sync(device)
        samples: list[float] = []
        begin = time.perf_counter()
        while len(samples) < config.ticks:
            start = time.perf_counter()
            tick()
            _sync(device)  # an agent needs the action on the host before the env can tick
            samples.append(time.perf_counter() - start)
            if time.perf_counter() - begin >= config.budget_s and len(samples) >= min(5, config.ticks):
                break
    return _stats(samples)


# --------------------------------------------------------------------------- what is measured
def _layer_class(family: str) -> type[nn.Module]:
    """The single-recurrence layer module of minGRU/minLSTM (MinGRULayer / MinLSTMLayer)."""
    module = importlib.import_module(f"recurrl.policies.backbones.{family}")
    return getattr(module, {"mingru": "MinGRULayer", "minlstm": "MinLSTMLayer"}[family])


LAYER_LABELS = {"mingru": "minGRU", "minlstm": "minLSTM", "lstm": "nn.LSTM", "gru": "nn.GRU"}
CELL_LABELS = {"mingru": "minGRU", "minlstm": "minLSTM", "lstm": "nn.LSTMCell", "gru": "nn.GRUCell"}


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
        window = _inputs(batch, DT_CONTEXT_STEPS * DT_TOKENS_PER_STEP, config, device)

        def tick() -> None:
            model(window)

        return tick

    return make


def _scan_label(family: str, scan: str) -> str:
    return f"{LAYER_LABELS[family]} [{scan}]"


def resolve_auto_scan(device: torch.device) -> str | None:
    """The backend scan="auto" picks on this device (None if the scan module cannot be imported)."""
    try:
        return importlib.import_module("recurrl.policies.backbones.kernels.scan").resolve_backend("auto", device)
    except Exception:
        return None


def effective_scans(config: BenchConfig, device: torch.device) -> list[str]:
    """config.scans with "auto" replaced by the backend it picks here, so no backend is timed twice."""
    auto = resolve_auto_scan(device) or "auto"
    scans: list[str] = []
    for scan in config.scans:
        scan = auto if scan == "auto" else scan
        if scan not in scans:
            scans.append(scan)
    return scans


def plan(config: BenchConfig, device: torch.device) -> list[Job]:
    """Every row the configuration asks for, in the order they are measured and shown."""
    jobs: list[Job] = []
    scans = effective_scans(config, device)

    def skip_reason(scan: str) -> str | None:
        if scan == "triton" and device.type != "cuda":
            return "cuda only"
        if scan == "numba" and device.type != "cpu":
            return "cpu only"
        return None

    def scans_for(family: str) -> list[tuple[str | None, str | None]]:
        # (scan, skip reason); the RNN baselines have no scan option.
        if family == "mamba":
            return [(scan, skip_reason(scan)) for scan in MAMBA_SCANS]
        if family not in MIN_GRU_FAMILY:
            return [(None, None)]
        return [(scan, skip_reason(scan)) for scan in scans]

    families = [name for name in ("mingru", "minlstm", "lstm", "gru") if name in config.backbones]
    if "scan" in config.levels and "mingru" in config.backbones:
        # minGRU's recurrence alone: scan.gated_scan_tm on pre-activations [T, B, 2H].
        for scan in [s for s in scans if s != "auto"]:
            skip = skip_reason(scan)
            for length in config.seq_lens:
                jobs.append(
                    Job(
                        "scan",
                        "train",
                        f"gated scan [{scan}]",
                        length,
                        _scan_train(scan, length, config, device),
                        skip,
                    )
                )
    if "layer" in config.levels:
        for family in families:
            for scan, skip in scans_for(family):
                method = LAYER_LABELS[family] if scan is None else _scan_label(family, scan)
                for length in config.seq_lens:
                    make = _layer_train(family, scan, length, config, device)
                    jobs.append(Job("layer", "train", method, length, make, skip))
        for family in families:
            for batch in config.step_batch_sizes:
                jobs.append(
                    Job(
                        "layer",
                        "step",
                        CELL_LABELS[family],
                        batch,
                        _layer_step(family, batch, config, device),
                    )
                )
    if "backbone" in config.levels:
        for name in config.backbones:
            for scan, skip in scans_for(name):
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
            tokens = DT_CONTEXT_STEPS * DT_TOKENS_PER_STEP
            layers = config.dt_layers
            for batch in config.step_batch_sizes:
                jobs.append(
                    Job(
                        "backbone",
                        "dt",
                        f"transformer re-run {tokens} tokens ({layers}L)",
                        batch,
                        _dt_rerun(batch, config, device),
                    )
                )
                jobs.append(
                    Job(
                        "backbone",
                        "dt",
                        f"transformer KV-cache step ({layers}L)",
                        batch,
                        _backbone_step("transformer", batch, config, device, layers),
                    )
                )
                if "mingru" in config.backbones:
                    jobs.append(
                        Job(
                            "backbone",
                            "dt",
                            f"mingru step ({layers}L)",
                            batch,
                            _backbone_step("mingru", batch, config, device, layers),
                        )
                    )
    return jobs


def _error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def measure(job: Job, config: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Run one job; failures become an `error` field instead of an exception."""
    row: dict[str, Any] = {"level": job.level, "kind": job.kind, "method": job.method}
    row["T" if job.kind == "train" else "B"] = job.size
    if job.kind == "train":
        row["B"] = config.batch_size
    if job.skip:
        row["skipped"] = job.skip
        return row
    try:
        assert job.make is not None
        fn = job.make()
        if job.kind == "train":
            row.update(time_training_step(fn, device, config))
            if config.memory:
                row["mem_method"] = CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD
        else:
            row.update(time_ticks(fn, device, config))
    except Exception as error:  # a broken or missing backbone must not stop the other rows
        row["error"] = _error_text(error)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def available_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def memory_guard(job: Job, rows: list[dict], device: torch.device) -> str | None:
    """On CPU, a reason to skip a training row whose memory would not fit, else None.

    Running out of RAM on CPU does not raise: the kernel's OOM killer ends the process (or a
    neighbour's). So the peak measured at the longest T so far for the same row is extrapolated
    linearly in T (activations dominate), with 25% allocator slack, against half of MemAvailable.
    """
    if device.type != "cpu" or job.kind != "train" or job.skip:
        return None
    previous = [
        r for r in rows
        if (r["level"], r["kind"], r["method"]) == (job.level, job.kind, job.method) and r.get("peak_mem_bytes")
    ]  # fmt: skip
    available = available_ram_bytes()
    if not previous or available is None:
        return None
    last = max(previous, key=lambda r: r["T"])
    need = 1.25 * last["peak_mem_bytes"] * job.size / last["T"]
    if need <= available / 2:
        return None
    return f"RAM: needs ~{need / 2**30:.0f} GiB, {available / 2**30:.0f} GiB available"


# --------------------------------------------------------------------------- device facts
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def measured_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), median of 5: a practical HBM ceiling."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    samples = []
    for _ in range(6):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        samples.append(time.perf_counter() - start)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 256 * 2**20 * 4 / statistics.median(samples[1:])


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """(bytes/s, where the figure comes from) for the HBM-bandwidth target."""
    name = torch.cuda.get_device_name(device)
    for fragment, value in HBM_PEAK_BYTES_PER_S:
        if fragment.lower() in name.lower():
            return value, f"spec sheet for {fragment}"
    return measured_copy_bandwidth(device), "measured device-to-device copy (spec unknown for this device)"


def metadata(config: BenchConfig, device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "memory_method": CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD,
    }
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
        meta["cudnn"] = torch.backends.cudnn.version()
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        meta["tf32_cudnn"] = torch.backends.cudnn.allow_tf32  # cuDNN LSTM/GRU use TF32 when this is True
    return meta


# --------------------------------------------------------------------------- derived figures
def _find(rows: list[dict], level: str, kind: str, method: str, size_key: str, size: int) -> dict | None:
    for row in rows:
        if (row["level"], row["kind"], row["method"], row.get(size_key)) == (level, kind, method, size):
            return row if "median_s" in row else None
    return None


def add_bandwidth(rows: list[dict], config: BenchConfig, peak: float | None) -> None:
    """Achieved bandwidth of the minGRU rows: 36 B/element (fp32 fwd+bwd floor) * B*T*H / median time.

    For "gated scan" rows that is the kernel's own traffic; "minGRU" layer rows also run the input
    projection, so their figure is a lower bound on the scan's share.
    """
    for row in rows:
        if (
            row["kind"] != "train"
            or "median_s" not in row
            or not row["method"].startswith(("gated scan [", "minGRU ["))
        ):
            continue
        moved = FUSED_BYTES_PER_ELEMENT * row["B"] * row["T"] * config.hidden_dim
        row["bandwidth_gb_s"] = moved / row["median_s"] / 1e9
        if peak:
            row["bandwidth_fraction"] = moved / row["median_s"] / peak


def _check(name: str, value: float | None, op: str, target: float, detail: str) -> dict[str, Any]:
    if value is None or not math.isfinite(value):
        return {
            "check": name,
            "value": None,
            "op": op,
            "target": target,
            "result": "not measured",
            "detail": detail,
        }
    ok = value <= target if op == "<=" else value >= target
    return {
        "check": name,
        "value": value,
        "op": op,
        "target": target,
        "result": "PASS" if ok else "FAIL",
        "detail": detail,
    }


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return a["median_s"] / b["median_s"] if a and b else None


def targets(rows: list[dict], config: BenchConfig, device: torch.device, peak: float | None) -> list[dict]:
    """The issue's targets, from medians measured side by side in this run."""
    checks: list[dict[str, Any]] = []
    layers = config.dt_layers
    if device.type == "cpu":
        lstm = _find(rows, "layer", "train", "nn.LSTM", "T", 1024)
        auto = resolve_auto_scan(device) or "auto"
        mingru = _find(rows, "layer", "train", _scan_label("mingru", auto), "T", 1024)
        label = f"minGRU [{auto}] (what scan='auto' picks)"
        if mingru is None:  # not measured: the fastest scan that was
            candidates = [
                _find(rows, "layer", "train", _scan_label("mingru", s), "T", 1024) for s in config.scans
            ]
            measured = [c for c in candidates if c]
            mingru = min(measured, key=lambda r: r["median_s"]) if measured else None
            label = mingru["method"] if mingru else label
        checks.append(
            _check(
                f"{label} / nn.LSTM train step, T=1024",
                _ratio(mingru, lstm),
                "<=",
                0.7,
                f"one layer, B={config.batch_size}, H={config.hidden_dim}",
            )
        )
        step = _find(rows, "layer", "step", "minGRU", "B", 1)
        cell = _find(rows, "layer", "step", "nn.LSTMCell", "B", 1)
        checks.append(
            _check(
                "minGRU step / nn.LSTMCell step, B=1", _ratio(step, cell), "<=", 1.2, "one layer, per tick"
            )
        )
        tokens = DT_CONTEXT_STEPS * DT_TOKENS_PER_STEP
        rerun = _find(rows, "backbone", "dt", f"transformer re-run {tokens} tokens ({layers}L)", "B", 1)
        # "a minGRU step" as in the step target above: one minGRU layer's step (the reading) ...
        checks.append(
            _check(
                f"DT {tokens}-token re-run ({layers}L) / minGRU layer step, B=1",
                _ratio(rerun, step),
                ">=",
                10.0,
                "per tick",
            )
        )
        # ... and the stricter like-for-like: a minGRU backbone as deep as the DT (blocks with MLPs too).
        mingru_step = _find(rows, "backbone", "dt", f"mingru step ({layers}L)", "B", 1)
        checks.append(
            _check(
                f"DT {tokens}-token re-run / minGRU backbone step, B=1",
                _ratio(rerun, mingru_step),
                ">=",
                10.0,
                f"both {layers} layers (stricter), per tick",
            )
        )
        checks += mamba_targets(rows, config)
    else:
        length = 4096 if 4096 in config.seq_lens else max(config.seq_lens)
        kernel = _find(rows, "scan", "train", "gated scan [triton]", "T", length)
        fraction = kernel.get("bandwidth_fraction") if kernel else None
        checks.append(
            _check(
                f"gated scan [triton] bandwidth / HBM peak, T={length}",
                fraction,
                ">=",
                0.6,
                "kernel alone, 36 B/element fp32 fwd+bwd",
            )
        )
        fused = _find(rows, "layer", "train", "minGRU [triton]", "T", length)
        lstm = _find(rows, "layer", "train", "nn.LSTM", "T", length)
        log = _find(rows, "layer", "train", "minGRU [log]", "T", length)
        checks.append(
            _check(
                f"cuDNN nn.LSTM / minGRU [triton] train step, T={length}",
                _ratio(lstm, fused),
                ">=",
                10.0,
                "one layer each",
            )
        )
        checks.append(
            _check(
                f"minGRU [log] / minGRU [triton] train step, T={length}",
                _ratio(log, fused),
                ">=",
                3.0,
                "one layer each, eager log-space scan",
            )
        )
        log_kernel = _find(rows, "scan", "train", "gated scan [log]", "T", length)
        checks.append(
            _check(
                f"gated scan [log] / gated scan [triton], T={length}",
                _ratio(log_kernel, kernel),
                ">=",
                3.0,
                "scan alone",
            )
        )
    return checks


def mamba_targets(rows: list[dict], config: BenchConfig) -> list[dict]:
    """Issue 20's CPU targets for Mamba's compiled kernels, backbone against backbone (1 layer)."""
    checks = []
    detail = f"1-layer backbones, B={config.batch_size}, H={config.hidden_dim}"
    compiled = {t: _find(rows, "backbone", "train", "mamba [numba]", "T", t) for t in (256, 1024)}
    for length in (256, 1024):
        reference = _find(rows, "backbone", "train", "mamba [mambapy]", "T", length)
        ratio = _ratio(reference, compiled[length])
        checks.append(
            _check(f"mamba [mambapy] / mamba [numba] train step, T={length}", ratio, ">=", 5.0, detail)
        )
    lstm = _find(rows, "backbone", "train", "lstm", "T", 256)
    ratio = _ratio(compiled[256], lstm)
    checks.append(_check("mamba [numba] / lstm train step, T=256", ratio, "<=", 3.0, detail))
    for batch in (1, 16):
        step = _find(rows, "backbone", "step", "mamba", "B", batch)
        lstm_step = _find(rows, "backbone", "step", "lstm", "B", batch)
        ratio = _ratio(step, lstm_step)
        checks.append(
            _check(f"mamba step / lstm step, B={batch}", ratio, "<=", 2.0, "1-layer backbones, per tick")
        )
    return checks


# --------------------------------------------------------------------------- reports
def _fmt_time(seconds: float, unit: str) -> str:
    value = seconds * {"ms": 1e3, "us": 1e6}[unit]
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _cell(row: dict | None, unit: str) -> str:
    if row is None:
        return ""
    if "skipped" in row:
        return "cuda only" if row["skipped"] == "cuda only" else "skipped"
    if "error" in row:
        return "error"
    text = _fmt_time(row["median_s"], unit)
    return text + ("*" if row["repeats"] < 3 else "")


def _table(rows: list[dict], kinds: tuple[str, ...], size_key: str, sizes: Sequence[int], value) -> list[str]:
    methods: list[tuple[str, str]] = []
    for row in rows:
        key = (row["level"], row["method"])
        if row["kind"] in kinds and key not in methods:
            methods.append(key)
    lines = [
        "| level | method | " + " | ".join(f"{size_key}={s}" for s in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for level, method in methods:
        cells = []
        for size in sizes:
            match = [
                r
                for r in rows
                if r["kind"] in kinds and (r["level"], r["method"], r.get(size_key)) == (level, method, size)
            ]
            cells.append(value(match[0] if match else None))
        lines.append(f"| {level} | {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    meta, config, rows = result["meta"], result["config"], result["rows"]
    b, h = config["batch_size"], config["hidden_dim"]
    lines = [
        "# recurrl bench",
        "",
        f"Device: **{meta['device_name']}** ({meta['device']}), torch {meta['torch']}, {meta['threads']} threads, "
        f"{meta['dtype']}, {meta['date']}.",
        "Medians of repeated runs measured side by side in this run (IQR and raw samples in bench.json); "
        "`*` = fewer than 3 timed repeats (a slow configuration hit its time budget).",
        "",
        f"## Training step (forward + backward), ms, B={b}, H={h}",
        "",
        *_table(rows, ("train",), "T", config["seq_lens"], lambda r: _cell(r, "ms")),
    ]
    if config["memory"]:

        def mem(row: dict | None) -> str:
            if row is None or "peak_mem_bytes" not in row:
                return _cell(row, "ms") if row is not None and "median_s" not in row else ""
            return f"{row['peak_mem_bytes'] / 2**20:.1f}"

        lines += [
            "",
            f"## Peak memory of the training step, MiB ({meta['memory_method']})",
            "",
            *_table(rows, ("train",), "T", config["seq_lens"], mem),
        ]
    lines += [
        "",
        "## Per-tick step latency, us (no_grad, state carried; dt rows: classic Decision-Transformer inference)",
        "",
        *_table(rows, ("step", "dt"), "B", config["step_batch_sizes"], lambda r: _cell(r, "us")),
    ]
    bandwidth_rows = [r for r in rows if "bandwidth_gb_s" in r]
    if meta["device"].startswith("cuda") and bandwidth_rows:
        source = meta.get("peak_bandwidth_source", "")
        lines += [
            "",
            f"## Achieved bandwidth of minGRU training, 36 B/element / time, GB/s (% of peak; layer rows "
            f"include the input projection) "
            f"(peak {meta.get('peak_bandwidth_gb_s', 0):.0f} GB/s, {source})",
            "",
            *_table(
                bandwidth_rows,
                ("train",),
                "T",
                config["seq_lens"],
                lambda r: (
                    f"{r['bandwidth_gb_s']:.0f} ({100 * r.get('bandwidth_fraction', 0):.0f}%)" if r else ""
                ),
            ),
        ]
    lines += ["", "## Targets", "", "| check | value | target | result |", "|---|---:|---|---|"]
    for check in result["targets"]:
        value = "-" if check["value"] is None else f"{check['value']:.2f}"
        lines.append(
            f"| {check['check']} ({check['detail']}) | {value} | {check['op']} {check['target']:g} | "
            f"{check['result']} |"
        )
    skipped = [r for r in rows if "skipped" in r and r["skipped"] != "cuda only"]
    if skipped:
        lines += ["", "## Skipped", ""]
        for row in skipped:
            lines.append(f"- {row['level']} {row['kind']} {row['method']} T={row.get('T')}: {row['skipped']}")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Errors", ""]
        seen: set[tuple[str, str, str]] = set()
        for row in errors:
            key = (row["level"], row["method"], row["error"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {row['level']} {row['kind']} {row['method']}: `{row['error']}`")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: training time vs T per method (log-log). Right: per-tick step latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "median_s" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 8))
    train_methods: list[tuple[str, str]] = []
    for row in rows:
        if row["kind"] == "train" and (row["level"], row["method"]) not in train_methods:
            train_methods.append((row["level"], row["method"]))
    colors = plt.get_cmap("tab20").colors
    styles = {"scan": ":^", "layer": "-o", "backbone": "--s"}
    for index, (level, method) in enumerate(train_methods):
        points = sorted(
            (r["T"], r["median_s"] * 1e3)
            for r in rows
            if r["kind"] == "train" and (r["level"], r["method"]) == (level, method)
        )
        left.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            styles[level],
            color=colors[index % len(colors)],
            label=f"{level}: {method}",
            markersize=4,
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("sequence length T")
    left.set_ylabel("training step (fwd+bwd), ms")
    b, h = result["config"]["batch_size"], result["config"]["hidden_dim"]
    left.set_title(f"Training step, B={b}, H={h} (dotted: scan alone, solid: one layer, dashed: backbone)")
    left.grid(True, which="both", alpha=0.3)
    if train_methods:
        left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))

    step_methods: list[tuple[str, str]] = []
    for row in rows:
        if row["kind"] in ("step", "dt") and (row["level"], row["method"]) not in step_methods:
            step_methods.append((row["level"], row["method"]))
    sizes = result["config"]["step_batch_sizes"]
    width = 0.8 / max(1, len(sizes))
    for i, size in enumerate(sizes):
        heights = []
        for level, method in step_methods:
            match = [
                r
                for r in rows
                if r["kind"] in ("step", "dt") and (r["level"], r["method"], r["B"]) == (level, method, size)
            ]
            heights.append(match[0]["median_s"] * 1e6 if match else float("nan"))
        right.bar([j + i * width for j in range(len(step_methods))], heights, width, label=f"B={size}")
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(step_methods))])
    right.set_xticklabels(
        [f"{lvl[0].upper()}: {m}" for lvl, m in step_methods], rotation=60, ha="right", fontsize=7
    )
    right.set_yscale("log")
    right.set_ylabel("per-tick latency, us")
    right.set_title("Per-tick step latency (L: one layer/cell, B: backbone)")
    right.grid(True, axis="y", which="both", alpha=0.3)
    if step_methods:
        right.legend(fontsize=8)
    fig.suptitle(f"recurrl bench on {result['meta']['device_name']} (torch {result['meta']['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point
def run_bench(
    config: BenchConfig, out_dir: str | Path = "results/bench", progress: bool = True
) -> dict[str, Any]:
    """Measure everything `config` asks for; write bench.json, bench.md, bench.png under out_dir."""
    config.validate()
    device = resolve_device(config.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    jobs = plan(config, device)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with tqdm(total=len(jobs), desc="recurrl bench", unit="row", disable=not progress) as bar:
            for job in jobs:
                bar.set_postfix_str(job.label, refresh=True)
                too_big = memory_guard(job, rows, device)
                if too_big:
                    job = dataclasses.replace(job, skip=too_big)
                rows.append(measure(job, config, device))
                bar.update(1)
        meta = metadata(config, device)  # records the thread count the rows ran with
    finally:
        torch.set_num_threads(threads_before)  # the bench is callable from Python: leave torch as it was
    meta["auto_scan"] = resolve_auto_scan(device)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    peak = None
    if device.type == "cuda":
        peak, source = peak_bandwidth(device)
        meta["peak_bandwidth_gb_s"] = peak / 1e9
        meta["peak_bandwidth_source"] = source
        add_bandwidth(rows, config, peak)
    result = {
        "meta": meta,
        "config": dataclasses.asdict(config),
        "rows": rows,
        "targets": targets(rows, config, device, peak),
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "bench.md").write_text(text)
    plot(result, out / "bench.png")
    result["markdown"] = text
    return result
