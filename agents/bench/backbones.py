"""`recurrl bench backbones`: how fast each backbone trains (scan) and acts (step) on this device.

Three measurements, all taken side by side in one run so that ratios between them are fair:

- **train**: one training step (forward + backward of the sum of the outputs) over `[B, T, D]`
  for each T, timed with warmup, several repeats, median and IQR. Peak memory of the same step.
- **step**: per-tick `step` latency at several batch sizes, under `torch.no_grad()`, the state
  carried from tick to tick, median over many ticks.
- **dt**: what a classic Decision Transformer pays per tick: re-running its whole context window
  (20 steps x 3 tokens = 60 tokens) through the Transformer's `forward`, next to the same
  Transformer's KV-cache `step` and a minGRU `step` of the same depth.

The rows (scan alone, one layer, whole backbone) are planned in backbone_jobs.py; the targets they
are checked against are data in targets.py. A row that fails (import error, out of memory, a
backbone that rejects the configuration) is recorded with its error and the bench goes on. Results
go to `bench.json`, `bench.md` and `bench.png`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .backbone_config import BenchConfig, resolve_auto_scan, resolve_device
from .backbone_jobs import Job, plan
from .hardware import add_bandwidth, metadata, peak_bandwidth
from .memory import extrapolated_ram_shortfall, memory_method, peak_memory
from .plot import plot_backbones
from .report import backbones_markdown, write_json
from .targets import targets
from .timing import budgeted_samples, stats, sync


def time_training_step(
    fn: Callable[[], None], device: torch.device, config: BenchConfig, measure_memory: bool = True
) -> dict[str, Any]:
    """Warm up (the first run also measures memory), then time up to `repeats` runs within `budget_s`."""
    result: dict[str, Any] = {}
    begin = time.perf_counter()
    if measure_memory and config.memory:
        result["peak_mem_bytes"] = peak_memory(fn, device)
    else:
        fn()
        sync(device)
    # More warmup only while it is cheap: a slow configuration spends its budget on timed runs.
    spent = time.perf_counter() - begin
    for _ in range(config.warmup - 1):
        if spent > config.budget_s / 2:
            break
        start = time.perf_counter()
        fn()
        sync(device)
        spent += time.perf_counter() - start
    result.update(stats(budgeted_samples(fn, device, config.repeats, config.budget_s)))
    return result


def time_ticks(tick: Callable[[], None], device: torch.device, config: BenchConfig) -> dict[str, Any]:
    """Per-tick latency: a few warmup ticks, then up to `ticks` timed ticks within `budget_s`."""
    with torch.no_grad():
        for _ in range(3):
            tick()
        sync(device)
        samples = budgeted_samples(tick, device, config.ticks, config.budget_s, min(5, config.ticks))
    return stats(samples)


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
                row["mem_method"] = memory_method(device)
        else:
            row.update(time_ticks(fn, device, config))
    except Exception as error:  # a broken or missing backbone must not stop the other rows
        row["error"] = _error_text(error)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def memory_guard(job: Job, rows: list[dict], device: torch.device) -> str | None:
    """On CPU, a reason to skip a training row whose memory would not fit in RAM, else None
    (extrapolated from the same row's peaks at shorter T: memory.extrapolated_ram_shortfall)."""
    if device.type != "cpu" or job.kind != "train" or job.skip:
        return None
    peaks = {
        r["T"]: r["peak_mem_bytes"]
        for r in rows
        if (r["level"], r["kind"], r["method"]) == (job.level, job.kind, job.method)
        and r.get("peak_mem_bytes")
    }
    return extrapolated_ram_shortfall(peaks, job.size)


def _measure_all(jobs: list[Job], config: BenchConfig, device: torch.device, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="recurrl bench backbones", unit="row", disable=not progress) as bar:
        for job in jobs:
            bar.set_postfix_str(job.label, refresh=True)
            too_big = memory_guard(job, rows, device)
            if too_big:
                job = dataclasses.replace(job, skip=too_big)
            rows.append(measure(job, config, device))
            bar.update(1)
    return rows


def run_bench(
    config: BenchConfig, out_dir: str | Path = "results/bench", progress: bool = True
) -> dict[str, Any]:
    """Measure everything `config` asks for; write bench.json, bench.md, bench.png under out_dir."""
    config.validate()
    device = resolve_device(config.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        rows = _measure_all(plan(config, device), config, device, progress)
        meta = metadata(device)  # records the thread count the rows ran with
    finally:
        torch.set_num_threads(threads_before)  # the bench is callable from Python: leave torch as it was
    meta["auto_scan"] = resolve_auto_scan(device)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    if device.type == "cuda":
        peak, source = peak_bandwidth(device)
        meta["peak_bandwidth_gb_s"] = peak / 1e9
        meta["peak_bandwidth_source"] = source
        add_bandwidth(rows, config.hidden_dim, peak)
    result = {
        "meta": meta,
        "config": dataclasses.asdict(config),
        "rows": rows,
        "targets": targets(rows, config, device),
    }
    write_json(out / "bench.json", result)
    text = backbones_markdown(result)
    (out / "bench.md").write_text(text)
    plot_backbones(result, out / "bench.png")
    result["markdown"] = text
    return result
