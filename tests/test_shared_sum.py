"""The shared-memory sum of CPU ranks on one machine (agents/shared_sum.py), with two real processes
joined by gloo: the sums are exact and the same bits on every rank, in chunks larger than a slot, and a
peer that exits or stops answering is an error within moments, not a hang."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from recurrl.agents.distributed import Distributed, DistributedError
from recurrl.agents.shared_sum import SHM_ENV, SharedSum, SharedSumError, shared_sum_possible

SLOT_BYTES = 64  # 16 float32 per slot: every tensor below goes in several chunks


def values(rank: int, dtype: torch.dtype, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank)
    return torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)


def worker(rank: int, init_file: str, mode: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    group = Distributed(rank=rank, world_size=2, local_rank=rank, local_world_size=2, backend="gloo")
    shared = SharedSum(group, timeout_s=2.0, slot_bytes=SLOT_BYTES)
    result: dict = {}
    if mode == "sums":
        result["sums"] = [
            shared.sum_(values(rank, dtype, n))
            for dtype, n in [(torch.float32, 50), (torch.float64, 7), (torch.float32, 1)]
        ]
        result["again"] = shared.sum_(values(rank, torch.float32, 50))
        result["path_left"] = os.path.exists(shared.path)  # rank 0 unlinked it before its first sum
    elif rank == 1:
        if mode == "hang":
            time.sleep(6)  # alive, never joins the sum
        os._exit(0)  # "exit": gone before the sum
    else:
        start = time.monotonic()
        with pytest.raises(SharedSumError) as caught:
            shared.sum_(values(rank, torch.float32, 40))
        result["error"], result["seconds"] = str(caught.value), time.monotonic() - start
        with pytest.raises(DistributedError) as reported:  # as a failed gloo collective is reported
            with group.collective("the gradient all-reduce"):
                shared.sum_(values(rank, torch.float32, 40))
        result["reported"] = str(reported.value)
    torch.save(result, f"{out}.{rank}")
    os._exit(0)  # no process-group teardown with a peer gone


def run_pair(tmp_path: Path, mode: str) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    out = str(tmp_path / "result")
    processes = [
        context.Process(target=worker, args=(rank, str(tmp_path / "init"), mode, out)) for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    return [torch.load(f"{out}.{rank}") if os.path.exists(f"{out}.{rank}") else {} for rank in (0, 1)]


def test_sums_are_exact_identical_on_every_rank_and_leave_no_file(tmp_path: Path) -> None:
    first, second = run_pair(tmp_path, "sums")
    for dtype, n, a, b in zip(
        [torch.float32, torch.float64, torch.float32], [50, 7, 1], first["sums"], second["sums"], strict=True
    ):
        expected = values(0, dtype, n) + values(1, dtype, n)
        assert a.dtype == dtype and torch.equal(a, expected) and torch.equal(b, expected)
    assert torch.equal(first["again"], second["again"])  # the slots are reused round after round
    assert not first["path_left"] and not second["path_left"]  # unlinked once both had it mapped


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_peer_that_exits_or_hangs_is_an_error_not_a_hang(tmp_path: Path, mode: str) -> None:
    result = run_pair(tmp_path, mode)[0]
    assert ("exited" if mode == "exit" else "no answer from a peer in 2 s") in result["error"]
    assert result["seconds"] < (1.0 if mode == "exit" else 4.0)
    assert result["reported"].startswith(
        "rank 0: the gradient all-reduce failed: another process of the run died"
    )


def test_only_cpu_ranks_of_one_machine_sum_through_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = dict(rank=0, world_size=2, local_rank=0, backend="gloo")
    monkeypatch.delenv(SHM_ENV, raising=False)
    assert shared_sum_possible(Distributed(local_world_size=2, **ranks)) == (os.uname().machine == "x86_64")
    assert not shared_sum_possible(Distributed(local_world_size=1, **ranks))  # two machines
    assert not shared_sum_possible(Distributed(local_world_size=2, **{**ranks, "backend": "nccl"}))
    monkeypatch.setenv(SHM_ENV, "0")
    assert not shared_sum_possible(Distributed(local_world_size=2, **ranks))


def test_bad_tensors_are_refused() -> None:
    shared = SharedSum.__new__(SharedSum)
    with pytest.raises(ValueError, match="float32/float64"):
        shared.sum_(torch.zeros(3, dtype=torch.int64))
