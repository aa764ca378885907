"""Peak memory of a step, and the RAM guard that keeps a CPU bench from being OOM-killed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .timing import sync

CPU_MEMORY_METHOD = (
    "CPU: peak of live tensor bytes allocated during the step (running sum of the CPU allocator's "
    "alloc/free events recorded by torch.autograd.profiler with profile_memory=True), on the first warmup run"
)
CUDA_MEMORY_METHOD = (
    "CUDA: torch.cuda.max_memory_allocated during the step minus the bytes allocated before it"
)


def memory_method(device: torch.device) -> str:
    return CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while `fn` runs (see CPU_/CUDA_MEMORY_METHOD)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
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


def available_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def extrapolated_ram_shortfall(peaks_by_length: dict[int, int], length: int) -> str | None:
    """A reason not to run a training step at sequence length `length` on CPU, else None.

    Running out of RAM on CPU does not raise: the kernel's OOM killer ends the process (or a
    neighbour's). So the peak measured at the longest T so far (`peaks_by_length`: T -> bytes) is
    extrapolated linearly in T (activations dominate), with 25% allocator slack, against half of
    MemAvailable.
    """
    available = available_ram_bytes()
    if not peaks_by_length or available is None:
        return None
    last = max(peaks_by_length)
    need = 1.25 * peaks_by_length[last] * length / last
    if need <= available / 2:
        return None
    return f"RAM: needs ~{need / 2**30:.0f} GiB, {available / 2**30:.0f} GiB available"
