"""Run a compiled kernel over the rows of a batch in parallel threads.

Mamba's kernels are independent per batch row and release the GIL (numba `nogil=True`), so the batch
is split into as many contiguous row ranges as torch has intra-op threads: the kernels use the cores
torch's own ops use, and `--threads 1` / `torch.set_num_threads(1)` keeps them serial. Plain Python
threads rather than numba's threading layer: its default (workqueue) is neither thread- nor fork-safe,
and the agents fork vector-env workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import Tensor

# Below this much work (rows x values per row) a thread hand-off (~50 us) costs more than it saves.
MIN_PARALLEL_WORK = 1 << 20

_pool: ThreadPoolExecutor | None = None


def row_chunks(batch: int, work_per_row: int) -> list[slice]:
    """Contiguous row ranges covering [0, batch): one per torch thread, one when the work is small."""
    chunks = max(1, min(torch.get_num_threads(), batch))
    if batch * work_per_row < MIN_PARALLEL_WORK:
        chunks = 1
    bounds = [batch * i // chunks for i in range(chunks + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(chunks)]


def row_calls(
    kernel: Callable[..., None], shared: tuple, per_row: list[Tensor], sums: list[Tensor], chunks: list[slice]
) -> list[Callable[[], None]]:
    """One call of the kernel per row range (for `run_parallel`): the shared arguments (tensors as numpy
    views), the per-row tensors sliced to the range, then the range's own slot of every partial sum
    (`sums` hold one slot per range along their first dim, added up by the caller)."""
    as_numpy = [t.numpy() if isinstance(t, Tensor) else t for t in shared]
    rows = [t.numpy() for t in per_row]
    slots = [t.numpy() for t in sums]
    return [
        partial(kernel, *as_numpy, *(t[r] for t in rows), *(t[i] for t in slots))
        for i, r in enumerate(chunks)
    ]


def run_parallel(calls: list[Callable[[], None]]) -> None:
    """Run the calls concurrently (the first one in this thread) and wait for all; errors propagate."""
    if len(calls) == 1:
        calls[0]()
        return
    futures = [_thread_pool().submit(call) for call in calls[1:]]
    calls[0]()
    for future in futures:
        future.result()


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="recurrl-kernel")
    return _pool


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there if one is needed."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)
