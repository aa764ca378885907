"""Data-parallel Decision training: the pieces one process can check (fast), and real `torchrun` runs
with 2 gloo processes on the CPU (slow): the weights equal a 1-process run's, resume is exact, the world
size may change on resume, bad input and a dying or stopped rank give one clear message and no hang."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_decision_train import collect, tiny_config

from recurrl.agents.checkpoint import read_meta
from recurrl.agents.decision.config import DecisionConfig
from recurrl.agents.decision.data import SegmentSampler
from recurrl.agents.decision.evaluation import evaluate_model, run_episodes
from recurrl.agents.decision.model_io import EnvSpec, build_model, model_kwargs
from recurrl.agents.decision.trainer import DecisionTrainer
from recurrl.agents.distributed import Distributed, DistributedError, PeerFailed
from recurrl.agents.evaluation import merge_slots
from recurrl.envs.datasets import export_hdf5
from recurrl.envs.episodes import OfflineDataset
from recurrl.policies.decision import action_loss
from recurrl.scripts.cli import main as cli

# A tiny run: GRU width 16, batch 8, K=6 on 25-step Pendulum episodes (dropout 0: see test 1).
TINY = (
    "batch_size=8 context_length=6 model.hidden_dim=16 model.num_layers=1 model.backbone=gru model.dropout=0 "
    "checkpoint_every=4 log_every=2 warmup_steps=3 eval.every=6 eval.episodes=3 eval.num_envs=3 "
    "eval.episodes_during_training=2 eval.target_returns=[-100]"
).split()


@pytest.fixture(scope="module")
def pendulum() -> OfflineDataset:
    return collect("Pendulum-v1", 6, {"max_episode_steps": 25})


@pytest.fixture(scope="module")
def pendulum_file(pendulum: OfflineDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hdf5(pendulum, tmp_path_factory.mktemp("data") / "pendulum.hdf5")


# ----------------------------------------------------------------------------- one process
def test_ranks_rows_together_are_the_one_process_batch_and_losses_add_up(pendulum: OfflineDataset) -> None:
    whole = SegmentSampler(pendulum, 6, burn_in=2, seed=3).sample(8)
    parts = []
    for rank in range(4):
        share = Distributed(rank=rank, world_size=4).rows(8)
        parts.append(SegmentSampler(pendulum, 6, burn_in=2, seed=3).sample_rows(8, share))
    for key, value in whole.__dict__.items():
        assert torch.equal(torch.cat([part.__dict__[key] for part, _ in parts]), value), key
    assert {steps for _, steps in parts} == {int(whole.loss_mask.sum())}

    config = DecisionConfig(context_length=6)
    model = build_model(model_kwargs(config, pendulum))
    targets = model.normalize_actions(whole.actions)
    pred, _ = model(whole.returns_to_go, whole.states, targets, whole.timesteps, whole.episode_starts)
    shares = [
        action_loss(model, pred[2 * r : 2 * r + 2], targets[2 * r : 2 * r + 2], whole.loss_mask[2 * r : 2 * r + 2], steps)
        for r, (_, steps) in enumerate(parts)
    ]
    assert torch.allclose(sum(shares), action_loss(model, pred, targets, whole.loss_mask), atol=1e-6)


def test_evaluation_split_over_processes_merges_into_the_one_process_result(pendulum: OfflineDataset) -> None:
    model = build_model(model_kwargs(DecisionConfig(context_length=6), pendulum)).eval()
    spec = EnvSpec.from_dataset(pendulum)
    whole = run_episodes(model, spec, -100.0, episodes=7, num_envs=3, seed=5, context_length=6)
    # 4 processes for 3 env slots: the last one plays nothing.
    parts = [run_episodes(model, spec, -100.0, 7, 3, 5, "stateful", 6, "cpu", (r, 4)) for r in range(4)]
    assert parts[3]["returns"] == []
    merged = merge_slots(parts)
    np.testing.assert_allclose(merged["returns"], whole["returns"], rtol=1e-5)
    assert merged["lengths"] == whole["lengths"] and merged["seeds"] == whole["seeds"]
    one = evaluate_model(model, spec, [-100.0], 7, 3, 5, context_length=6, dist=Distributed())
    np.testing.assert_allclose(one["targets"][0]["returns"], whole["returns"])


def test_batch_must_divide_and_bad_launch_settings_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"batch_size=7 does not divide into 2 processes.*batch_size=6"):
        Distributed(world_size=2).check_batch(7)
    with pytest.raises(PeerFailed):  # the other ranks stop without repeating rank 0's message
        Distributed(rank=1, world_size=2).check_batch(7)
    Distributed(world_size=2).check_batch(8)
    assert not Distributed.from_env("cpu").enabled  # no torchrun: one process, nothing initialized
    assert not torch.distributed.is_initialized()

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RECURRL_DIST_BACKEND", "nccl" if not torch.distributed.is_nccl_available() else "mpi")
    with pytest.raises(ValueError, match="backend .* is not available in this torch build"):
        Distributed.from_env("cpu")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this torch build has no torch.distributed"):
        Distributed.from_env("cpu")
    assert cli(["train-ppo", "--env", "CartPoleNoVel-v1"]) == 2  # one process only: it says so
    monkeypatch.setenv("RECURRL_DIST_TIMEOUT_S", "soon")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setenv("RECURRL_DIST_BACKEND", "gloo")
    with pytest.raises(ValueError, match="RECURRL_DIST_TIMEOUT_S='soon'"):
        Distributed.from_env("cpu")


def test_only_communication_failures_are_blamed_on_other_processes() -> None:
    dist = Distributed(world_size=2)
    with pytest.raises(DistributedError, match="rank 0: the gradient all-reduce failed: another process"):
        with dist.collective("the gradient all-reduce"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    with pytest.raises(RuntimeError, match="out of memory") as raised:  # this process's own error, as it is
        with dist.collective("the gradient all-reduce"):
            raise RuntimeError("CUDA out of memory")
    assert not isinstance(raised.value, DistributedError)


def test_dropout_seeds_differ_per_rank_and_step_and_repeat() -> None:
    seeds = {Distributed(rank=r, world_size=2).step_seed(0, step) for r in range(2) for step in range(50)}
    assert len(seeds) == 100
    assert Distributed(rank=1, world_size=2).step_seed(0, 7) == Distributed(rank=1, world_size=3).step_seed(0, 7)


@pytest.fixture
def one_process_group(tmp_path: Path):
    """A real (gloo) process group of one process, for rank 0's side of a run in this process."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_rank_zero_with_dropout_resumes_exactly(tmp_path: Path, pendulum: OfflineDataset, one_process_group) -> None:
    """Rank 0 of 2 (its half of every batch, DDP on a group of one): with dropout, its masks come from a
    seed per step and rank, not from the RNG state a process carries, so N/2 + resume + N/2 steps give
    the weights of N straight steps on every rank."""

    def trainer(name: str, resume: bool = False) -> DecisionTrainer:
        config = tiny_config(tmp_path, name, steps=16)
        config.model.dropout, config.eval.every = 0.1, 0
        return DecisionTrainer(config, pendulum, resume, show_progress=False, dist=Distributed(world_size=2))

    straight = trainer("straight")
    assert straight.train(until=8) is None and straight.config.world_size == 2
    first = trainer("halves")
    first.train(until=4)
    del first
    resumed = trainer("halves", resume=True)
    assert resumed.step == 4
    torch.manual_seed(12345)  # as on the other ranks, whose RNG state no checkpoint holds
    resumed.train(until=8)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "halves")
    assert all(torch.equal(a[key], b[key]) for key in a)


# ----------------------------------------------------------------------------- torchrun
def torchrun(
    *args: str, console: bool = False, wait: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m recurrl train ARGS` (or the console script itself)."""
    program = [str(Path(sys.executable).parent / "recurrl")] if console else ["-m", "recurrl"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program]
    env = {**os.environ, "RECURRL_DIST_TIMEOUT_S": "60", **(env or {})}
    if not wait:
        return subprocess.Popen([*command, "train", *args], env=env, stderr=subprocess.PIPE, text=True)
    return subprocess.run([*command, "train", *args], env=env, capture_output=True, text=True, timeout=300)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints/last/model.safetensors"))


def one_process(*args: str) -> None:
    assert cli(["train", *args, "--no-progress"]) == 0


@pytest.mark.slow
def test_two_processes_train_the_one_process_weights_and_resume_exactly(tmp_path: Path, pendulum_file: Path) -> None:
    common = ["--dataset", str(pendulum_file), "--runs-dir", str(tmp_path), "--no-progress"]
    one_process(*common, "--run-name", "one", *TINY, "steps=12")
    two = torchrun(*common, "--run-name", "two", *TINY, "steps=12", console=True)  # the console script under torchrun
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("normalized score (last checkpoint, step 12") == 1  # rank 0 alone prints
    # The gradients through gloo instead of shared memory (as between machines): the same weights too.
    gloo = torchrun(*common, "--run-name", "gloo", *TINY, "steps=12", env={"RECURRL_DIST_SHM": "0"})
    assert gloo.returncode == 0, gloo.stderr[-3000:]
    a, b, g = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tmp_path / "gloo")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g[key], a[key], rtol=1e-5, atol=1e-6)
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert [r["world_size"] for r in results] == [1, 2]
    assert json.loads((tmp_path / "two/config.json").read_text())["world_size"] == 2
    for name in ("last", "best"):  # the evaluation episodes, split over the ranks, are the same episodes
        first, second = (r["checkpoints"][name]["targets"][0] for r in results)
        np.testing.assert_allclose(second["returns"], first["returns"], rtol=1e-4)
        assert second["lengths"] == first["lengths"]

    half = torchrun(*common, "--run-name", "halves", *TINY, "steps=6")
    assert half.returncode == 0, half.stderr[-3000:]
    shutil.copytree(tmp_path / "halves", tmp_path / "switch")
    resumed = torchrun("--resume", str(tmp_path / "halves"), "steps=12", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = weights(tmp_path / "halves")
    assert all(torch.equal(b[key], c[key]) for key in b)  # resume under 2 processes: bit for bit

    one_process("--resume", str(tmp_path / "switch"), "steps=12")  # 2 processes, then 1
    d = weights(tmp_path / "switch")
    for key in a:
        torch.testing.assert_close(d[key], a[key], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "switch/results.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_a_batch_that_does_not_divide_is_one_message_and_no_run_dir(tmp_path: Path, pendulum_file: Path) -> None:
    args = ["--dataset", str(pendulum_file), "--runs-dir", str(tmp_path), "--run-name", "odd", *TINY, "batch_size=7"]
    done = torchrun(*args)
    assert done.returncode != 0
    assert done.stderr.count("batch_size=7 does not divide into 2 processes") == 1, done.stderr[-3000:]
    assert not (tmp_path / "odd").exists()


def worker_pids(parent: int) -> dict[int, int]:
    """torchrun's workers by rank (their RANK environment variable)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                found[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, IndexError, ValueError):
            continue
    return found


def start_long_run(tmp_path: Path, pendulum_file: Path, name: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """A 2-process run far from its end, once it has saved a checkpoint."""
    args = ["--dataset", str(pendulum_file), "--runs-dir", str(tmp_path), "--run-name", name, "--no-progress"]
    run = torchrun(*args, *TINY, "steps=1000000", "eval.every=0", wait=False)
    deadline = time.monotonic() + 120
    while not (tmp_path / name / "checkpoints/last/meta.json").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.stderr else ""
        time.sleep(0.2)
    return run, worker_pids(run.pid)


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_dying_rank_is_one_clear_message_no_hang_and_the_run_resumes(tmp_path: Path, pendulum_file: Path) -> None:
    run, pids = start_long_run(tmp_path, pendulum_file, "killed")
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = run.communicate(timeout=90)
    assert run.returncode != 0
    assert "rank 0: the gradient all-reduce failed: another process of the run died" in stderr or (
        "rank 0: sharing the loss failed: another process of the run died" in stderr
    ), stderr[-3000:]
    assert "Continue with: torchrun --nproc_per_node 2 -m recurrl train --resume" in stderr
    assert not any(alive(pid) for pid in pids.values())
    step = read_meta(tmp_path / "killed/checkpoints/last")["step"]  # complete, verified
    one_process("--resume", str(tmp_path / "killed"), f"steps={step + 4}")  # 1 process now
    results = json.loads((tmp_path / "killed/results.json").read_text())
    assert results["steps"] == step + 4 and results["world_size"] == 1


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path: Path, pendulum_file: Path) -> None:
    run, pids = start_long_run(tmp_path, pendulum_file, "stopped")
    os.kill(pids[1], signal.SIGTERM)
    _, stderr = run.communicate(timeout=90)
    assert "a stop signal to another process of the run: stopped at step" in stderr, stderr[-3000:]
    step = int(stderr.split("stopped at step ", 1)[1].split(";")[0].replace(",", ""))
    assert read_meta(tmp_path / "stopped/checkpoints/last")["step"] == step
    assert not any(alive(pid) for pid in pids.values())
    resumed = torchrun("--resume", str(tmp_path / "stopped"), f"steps={step + 4}", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "stopped/results.json").read_text())["steps"] == step + 4
