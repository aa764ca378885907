"""The gradient sum of data-parallel CPU ranks on one machine, through shared memory instead of gloo.

On one machine gloo still sends the gradients over TCP through the loopback device, and on a CPU each
all-reduce pays ~2-4 ms of thread wake-ups and socket round trips, whatever its size (measured on the
2-core host, docs/decision.md), which is most of what data parallelism costs there. Here every rank
copies its gradients into its own slot of one shared-memory file, raises a flag, waits for the others'
flags and adds the slots up itself, in rank order, so every rank gets the same bits. Collective
libraries do the same on one host (oneCCL's and DeepSpeed's CPU shared-memory all-reduce); none
installs from PyPI for this torch.

The protocol needs no locks: each flag has one writer (its rank) and only grows (the round number);
x86's memory order (stores seen in program order, loads not reordered with older loads) makes a flag
that reads as round r mean that rank's data for round r is there. Other CPUs fall back to gloo. A rank
reuses its slot only after every rank has raised its "read" flag for the round before. Gradients
larger than a slot go in chunks, so the file is world_size x 4 MiB. The few numbers the ranks add up
after each step (the loss, the stop flag) take the same way, in float64.

Waiting spins (yielding the core) and looks at the peers: a peer that exited or a wait beyond the run's
collective timeout raises SharedSumError, which Distributed.collective reports as it does a failed gloo
collective.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .distributed import Distributed

SHM_ENV = "RECURRL_DIST_SHM"  # 0: the gradients go through gloo even on one machine
SLOT_BYTES = 4 << 20  # per rank
FLAG_BYTES = 4096  # the flags' page, ahead of the slots
LIVENESS_EVERY_S = 0.05  # how often a waiting rank checks that its peers still run


def shared_sum_possible(dist: Distributed) -> bool:
    """Whether the ranks can sum through shared memory: CPU tensors, gloo, every rank on this machine,
    Linux on x86 (the memory order the protocol relies on), and not switched off."""
    return (
        dist.enabled
        and dist.device.type == "cpu"
        and dist.backend == "gloo"
        and dist.local_world_size == dist.world_size
        and platform.system() == "Linux"
        and platform.machine().lower() in ("x86_64", "amd64")
        and os.environ.get(SHM_ENV, "1") != "0"
    )


class SharedSumError(RuntimeError):
    """A peer exited or did not answer in time (Distributed.collective says which collective)."""


class SharedSum:
    """In-place sums over the ranks of one machine of float32 or float64 tensors (every rank calls
    `sum_` with the same shapes in the same order)."""

    def __init__(self, dist: Distributed, timeout_s: float, slot_bytes: int = SLOT_BYTES) -> None:
        self.dist, self.timeout_s = dist, timeout_s
        world = dist.world_size
        size = FLAG_BYTES + world * slot_bytes
        self.path = path = dist.from_main(lambda: _create(size), "creating the shared-memory buffer")
        try:
            mapped = np.memmap(path, dtype=np.uint8, mode="r+", shape=(size,))
            pids = dist.all_gather(os.getpid(), "attaching the shared-memory buffer")
        finally:
            # Once every rank has it mapped, the name goes: a killed run leaves nothing behind in /dev/shm.
            if dist.is_main:
                Path(path).unlink(missing_ok=True)
        self.peers = [pid for rank, pid in enumerate(pids) if rank != dist.rank]
        # The two round counters per rank: the round whose data it wrote, and the round it summed.
        self.ready = np.frombuffer(mapped, dtype=np.int64, count=world)
        self.read = np.frombuffer(mapped, dtype=np.int64, count=world, offset=world * 8)
        slots = np.frombuffer(mapped, dtype=np.uint8, offset=FLAG_BYTES, count=world * slot_bytes)
        self.slots = torch.from_numpy(slots).view(world, slot_bytes)  # [world, slot_bytes], viewed per dtype
        self.round = 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (float32 or float64, contiguous) replaced by its sum over the ranks; returned."""
        if tensor.dtype not in (torch.float32, torch.float64) or not tensor.is_contiguous():
            raise ValueError(f"SharedSum sums contiguous float32/float64 tensors, got {tensor.dtype}")
        slots = self.slots.view(tensor.dtype)  # [world, slot_bytes / itemsize]
        flat, per_slot = tensor.view(-1), slots.shape[1]
        for start in range(0, flat.numel(), per_slot):
            self._sum_chunk(flat[start : start + per_slot], slots)
        return tensor

    def _sum_chunk(self, chunk: torch.Tensor, slots: torch.Tensor) -> None:
        self.round += 1
        n, rank = chunk.numel(), self.dist.rank
        self._wait_for(self.read, self.round - 1)  # everyone has summed the slots of the round before
        slots[rank, :n].copy_(chunk)
        self.ready[rank] = self.round  # after the copy: the others read the flag, then the data
        self._wait_for(self.ready, self.round)
        torch.sum(slots[:, :n], dim=0, out=chunk)  # rank order on every rank: the same bits
        self.read[rank] = self.round

    def _wait_for(self, flags: np.ndarray, value: int) -> None:
        if flags.min() >= value:
            return
        start = checked = time.monotonic()
        while flags.min() < value:
            os.sched_yield()  # a core shared with another thread or process is not starved
            now = time.monotonic()
            if now - checked >= LIVENESS_EVERY_S:
                checked = now
                self._check_peers(now - start)

    def _check_peers(self, waited_s: float) -> None:
        gone = [pid for pid in self.peers if not _running(pid)]
        if gone:
            raise SharedSumError(f"peer process {gone[0]} exited")
        if waited_s > self.timeout_s:
            raise SharedSumError(
                f"no answer from a peer in {self.timeout_s:g} s; RECURRL_DIST_TIMEOUT_S sets the limit"
            )


def _create(size: int) -> str:
    """A zero-filled file of `size` bytes in /dev/shm (memory, not disk), whose path the ranks map."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="recurrl-sums-", dir=folder)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (an exited child torchrun has not reaped yet is a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
