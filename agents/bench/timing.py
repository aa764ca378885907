"""The one place timings are taken: warmup, then rounds that interleave the cases, then medians.

A shared CPU is noisy and its load drifts: cases measured one after the other would see different
machines. So every benchmark times its cases in rounds (case A, case B, ..., then again), and reports
medians over rounds (and ratios of same-round pairs where a ratio is the point).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

K = TypeVar("K")
T = TypeVar("T")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rounds(
    cases: Mapping[K, Callable[[], T]],
    rounds: int,
    warmup: int = 1,
    warmup_cases: Mapping[K, Callable[[], Any]] | None = None,
) -> dict[K, list[T]]:
    """Call every case `warmup` times untimed (first calls allocate, compile, pick kernels; a case
    may have a cheaper warmup in `warmup_cases`), then `rounds` rounds of one call per case in
    order -> each case's measurements (what its callable returned), one per round."""
    for key, case in cases.items():
        warm = (warmup_cases or {}).get(key, case)
        for _ in range(warmup):
            warm()
    measured: dict[K, list[T]] = {key: [] for key in cases}
    for _ in range(rounds):
        for key, case in cases.items():
            measured[key].append(case())
    return measured


def rate_per_s(fn: Callable[[], Any], calls: int) -> float:
    """Calls per second of `fn`, over `calls` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def medians(measured: Mapping[K, Sequence[float]]) -> dict[K, float]:
    return {key: statistics.median(values) for key, values in measured.items()}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of same-round ratios: both sides of a pair saw the same machine load."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def stats(samples: Sequence[float]) -> dict[str, Any]:
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


def budgeted_samples(
    fn: Callable[[], None], device: torch.device, repeats: int, budget_s: float, min_samples: int = 1
) -> list[float]:
    """Seconds of up to `repeats` synchronized calls of `fn`, stopping once `budget_s` is spent (after
    at least `min_samples`): a slow configuration gets fewer repeats instead of a long wait."""
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < repeats:
        start = time.perf_counter()
        fn()
        sync(device)  # the result on the host (an agent needs the action before the env can tick)
        samples.append(time.perf_counter() - start)
        if time.perf_counter() - begin >= budget_s and len(samples) >= min_samples:
            break
    return samples
