"""Which scan backend runs: the names, what is installed, and what "auto" picks on a device.

The backends themselves are described in scan.py (loop, log, numba, triton); this module only
checks a name and resolves "auto": triton on CUDA, numba on CPU (each when installed), else loop.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "loop", "log", "numba", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def outside_forward_ad() -> bool:
    """Not inside forward-mode AD (a dual level): the compiled kernels' autograd Functions have no jvp, so
    under it their callers run a torch reference instead."""
    return torch.autograd.forward_ad._current_level < 0


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and not triton_available():
        raise ValueError(
            "scan='triton' needs the triton package (pip install triton); use scan='loop' or 'auto'"
        )
    if backend == "numba" and not numba_available():
        raise ValueError("scan='numba' needs the numba package (pip install numba); use scan='loop'")
    return backend


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA, 'numba' on CPU (when installed), else 'loop'; checks that the
    chosen kernel can run on `device`."""
    check_backend(backend)
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if triton_available() else "loop"
        return "numba" if device.type == "cpu" and numba_available() else "loop"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"scan='numba' needs CPU tensors, got {device}; use scan='triton' or 'log' on GPU")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"scan='triton' needs CUDA tensors, got {device}; use scan='loop' on CPU "
            "(or set TRITON_INTERPRET=1 before importing, to run the kernels in triton's interpreter)"
        )
    return backend
