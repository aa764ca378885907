"""Data-parallel training under torchrun: the processes of one run, and the few collectives they share.

`torchrun --nproc_per_node N ...` starts N copies of the command with WORLD_SIZE, RANK and LOCAL_RANK
in their environment; `Distributed.from_env(device)` joins them into one process group (NCCL for CUDA
devices, gloo for the CPU; RECURRL_DIST_BACKEND overrides) and picks this process's device (GPU
LOCAL_RANK). Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) it is one process and every method here
is a no-op, so the single-process path is the one it always was.

Objects and small flags travel on a gloo group even when the gradients travel on NCCL (no device
copies, and gloo honours its timeout). Every collective has a timeout (RECURRL_DIST_TIMEOUT_S, default
300 s) and turns a failure into `DistributedError`, so a process that died or hangs is one clear
message, not a hang: torchrun then stops the others.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from recurrl.agents.devices import resolve_device
from recurrl.agents.shared_sum import SharedSum, SharedSumError, shared_sum_possible

TIMEOUT_ENV = "RECURRL_DIST_TIMEOUT_S"
BACKEND_ENV = "RECURRL_DIST_BACKEND"
T = TypeVar("T")
DEFAULT_TIMEOUT_S = 300.0  # well above the longest thing one rank does alone (a checkpoint save)


class DistributedError(RuntimeError):
    """A collective failed: another process of the run died, hangs or cannot be reached."""


class PeerFailed(DistributedError):
    """Rank 0 failed and reports why; the other ranks stop without repeating it."""


@dataclass
class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""
    _control: Any = None  # the gloo group for objects and flags (None: the default group)
    _shared: SharedSum | None = None  # sums through shared memory (CPU ranks of one machine), else gloo

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def transport(self) -> str:
        """How the ranks exchange data, as the run's first line says it."""
        return f"{self.backend}; gradient sums through shared memory" if self._shared is not None else self.backend

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory, TensorBoard and the console."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> Distributed:
        """Join the run torchrun launched, or one process when there is none."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=resolve_device(device_name))
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError(
                f"launched as {world_size} processes (WORLD_SIZE={world_size}) but this torch build has no "
                "torch.distributed; install a torch with it, or run one process without torchrun"
            )
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        device = _process_device(device_name, local_rank)
        backend = os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
        if not dist.is_backend_available(backend):
            other = " (set RECURRL_DIST_BACKEND=gloo, slower, or device=cpu)" if backend == "nccl" else ""
            raise ValueError(f"torch.distributed backend {backend!r} is not available in this torch build{other}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_s())
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=timeout)
            except (RuntimeError, ValueError) as error:
                raise ValueError(
                    f"rank {rank}: cannot join the other {world_size - 1} process(es) with {backend}: {error} "
                    "(launch with torchrun, which sets MASTER_ADDR/MASTER_PORT)"
                ) from error
            atexit.register(_destroy)
        control = None if backend == "gloo" else _gloo_group(timeout)
        joined = cls(device, rank, world_size, local_rank, local_world_size, backend, control)
        if shared_sum_possible(joined):  # every rank on this machine's CPUs: shared memory, not loopback TCP
            with joined.collective("setting up the shared-memory sums"):
                joined._shared = SharedSum(joined, timeout_s())
        return joined

    # ------------------------------------------------------------------ collectives
    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective (inside, e.g. DDP's gradient all-reduce) into one clear error."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except RuntimeError as error:
            if isinstance(error, DistributedError) or not _communication_error(error):
                raise  # this process's own error (out of memory, a bug): as it is
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            # torchrun SIGTERMs the surviving ranks as soon as one dies, often while this error unwinds past
            # the run loop's stop handler: without this the rank dies before it says why and where to resume.
            with contextlib.suppress(ValueError):  # only the main thread may set handlers
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise DistributedError(
                f"rank {self.rank}: {what} failed: another process of the run died, hangs or cannot be "
                f"reached ({detail})"
            ) from error

    def sum(self, values: list[float], what: str) -> list[float]:
        """Element-wise sum over ranks of a few numbers (float64, so flags and losses add exactly)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        with self.collective(what):
            if self._shared is not None:
                self._shared.sum_(tensor)
            else:
                dist.all_reduce(tensor, group=self._control)
        return tensor.tolist()

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable objects)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with self.collective(what):
            dist.all_gather_object(out, obj, group=self._control)
        return out

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's `obj` on every rank (the others pass anything, e.g. None)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        with self.collective(what):
            dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def from_main(self, work: Callable[[], T], what: str) -> T:
        """Rank 0 does `work` (what only it may do: open the run directory, read a checkpoint) and every
        rank gets its result; when it fails, rank 0 raises its error and the others PeerFailed."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except BaseException as failure:
                error = failure
        self.agree(error, what)
        return self.broadcast(result, what)

    def agree(self, error: BaseException | None, what: str) -> None:
        """Rank 0 says whether a step it did alone (opening the run directory, ...) failed: it re-raises
        its error, the others raise PeerFailed (rank 0 has printed why). Every rank must call it."""
        if self.is_main and error is not None:
            with contextlib.suppress(DistributedError):  # the error to show is rank 0's own
                self.broadcast(str(error) or type(error).__name__, what)
            raise error
        message = self.broadcast(None, what)
        if message is not None and not self.is_main:
            raise PeerFailed(f"rank {self.rank}: stopping because rank 0 failed ({message})")

    def close(self) -> None:
        """The end of a run: wait until no rank communicates any more, then leave the process group
        while Python is fully alive. (Left to interpreter exit, gloo's threads were seen to abort a rank
        with 'terminate called without an active exception' after a finished run.)"""
        import torch.distributed as dist

        if not self.enabled or not dist.is_initialized():
            return
        with self.collective("the final barrier"):
            dist.barrier(group=self._control)
        self._control = None
        dist.destroy_process_group()

    # ------------------------------------------------------------------ training
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run training forward passes through: DistributedDataParallel, whose backward
        sums the gradients over ranks (each rank's loss is already its share of the global mean)."""
        if not self.enabled:
            return model
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # The buffers are fixed statistics, equal on every rank: no broadcast before each forward (the
        # option's name changed in torch 2.13).
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        with self.collective("setting up DistributedDataParallel"):
            ddp = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,  # no copy of the reduced gradients back (1.5 ms a step on CPU)
                **no_sync,
            )
        if self._shared is not None:
            ddp.register_comm_hook(self._shared, _shared_sum_gradients)
        else:
            ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch: a contiguous slice, rank 0 first."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def check_batch(self, batch_size: int) -> None:
        if self.enabled and batch_size % self.world_size:
            self.fail_everywhere(
                f"batch_size={batch_size} does not divide into {self.world_size} processes: batch_size is the "
                f"global batch (each process takes batch_size / {self.world_size}); use a multiple of "
                f"{self.world_size}, e.g. batch_size={batch_size - batch_size % self.world_size or self.world_size}"
            )

    def fail_everywhere(self, message: str) -> None:
        """An error every rank finds on its own: rank 0 reports it, the others stop quietly."""
        if self.is_main:
            raise ValueError(message)
        raise PeerFailed(f"rank {self.rank}: {message}")

    def step_seed(self, seed: int, step: int) -> int:
        """The torch seed of optimizer step `step` on this rank (dropout): fresh per step and rank, so
        ranks drop different units and a resume under any number of processes continues exactly."""
        return int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1)[0])

    def seed_step(self, seed: int, step: int) -> None:
        """Seed this device's torch generator for step `step` (torch.manual_seed would also seed every
        other backend: 0.3 ms a step, measured, against 5 us for the one generator)."""
        value = self.step_seed(seed, step)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(value)
        torch.default_generator.manual_seed(value)

    def resume_command(self, command: str) -> str:
        """How to launch `command` (e.g. "recurrl train") again with this run's processes."""
        if not self.enabled:
            return command
        module = command.replace("recurrl ", "-m recurrl ", 1)
        if self.world_size == self.local_world_size:
            return f"torchrun --nproc_per_node {self.world_size} {module}"
        return f"torchrun --nnodes ... --nproc_per_node {self.local_world_size} --rdzv-endpoint ... {module}"


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected seconds, e.g. 300") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: must be positive")
    return seconds


# What gloo's and NCCL's errors say when a peer is gone or silent (they are plain RuntimeErrors).
COMMUNICATION_WORDS = ("gloo", "nccl", "connection", "peer", "timed out", "timeout", "socket", "broken pipe")


def _communication_error(error: RuntimeError) -> bool:
    import torch.distributed as dist

    text = str(error).lower()
    return isinstance(error, (dist.DistError, SharedSumError)) or any(word in text for word in COMMUNICATION_WORDS)


def _process_device(name: str, local_rank: int) -> torch.device:
    """A rank's device: on CUDA ('auto' or 'cuda' with a GPU), GPU LOCAL_RANK (modulo the GPUs there,
    so N processes can share one GPU for a smoke test); an explicit cuda:N or cpu as given."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def _gloo_group(timeout: datetime.timedelta) -> Any:
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=timeout)


def _sum_gradients(state, bucket):  # noqa: ANN001, ANN202 (DDP checks real annotations; these would be strings)
    """DDP communication hook: the sum over ranks (DDP's default averages)."""
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _shared_sum_gradients(shared, bucket):  # noqa: ANN001, ANN202 (as _sum_gradients; shared: a SharedSum)
    """DDP communication hook: the sum over ranks through shared memory, done when it returns."""
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(shared.sum_(bucket.buffer()))
    return future


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
