"""Crash safety: a kill at any point of any save leaves a run that --resume continues from its newest
complete checkpoint, or finishes (results.json) when training was done. Both trainers, every point.

Every change agents/checkpoint.py makes on disk (each file write, each rename, each removal: checkpoint
saves, the best-checkpoint copy, config.json, results.json) goes through one of its five disk
operations. A run is made once to count those calls, then again for each k, killed at the k-th: the
operation is left half done (half a file written, one file of a tree removed; a rename is atomic and
does not happen) and a BaseException that nothing catches unwinds the run, as a kill would stop it.
A fresh trainer then resumes the directory: it must start at the step of the newest checkpoint whose
meta.json was completely written, and end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_decision_train import collect, tiny_config
from test_ppo import _config as ppo_config

from recurrl.agents import checkpoint
from recurrl.agents.checkpoint import read_meta
from recurrl.agents.decision.trainer import DecisionTrainer
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.ppo import PPOTrainer
from recurrl.envs.episodes import OfflineDataset

DISK_OPERATIONS = ("_write_tensors", "_write_text", "_copy_file", "_rename", "_remove_tree")


class Killed(BaseException):
    """A simulated kill: no `except Exception` stops it, and nothing in the run loop saves on the way out."""


class FaultInjector:
    """Counts the disk operations of agents/checkpoint.py and kills the run at call number `kill_at`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> None:
        self.kill_at, self.calls, self.killed = kill_at, 0, False
        self.complete_steps: list[int] = []  # steps of the checkpoints whose meta.json was fully written
        for name in DISK_OPERATIONS:
            monkeypatch.setattr(checkpoint, name, self._wrap(name, getattr(checkpoint, name)))

    def _wrap(self, name: str, operation: Callable[..., None]) -> Callable[..., None]:
        def injected(*args: Any) -> None:
            self.calls += 1
            if self.calls == self.kill_at:
                self.killed = True
                _half_done(name, operation, *args)
                raise Killed(f"killed in {name} (disk operation {self.calls})")
            operation(*args)
            if name == "_write_text" and Path(args[0]).name == checkpoint.META:
                self.complete_steps.append(json.loads(args[1]).get("step", -1))

        return injected

    def disarm(self) -> None:
        self.kill_at = None


def _half_done(name: str, operation: Callable[..., None], *args: Any) -> None:
    """What a kill in the middle of `operation` leaves on disk."""
    if name == "_write_text":
        path, text = args
        Path(path).write_text(text[: len(text) // 2])
    elif name in ("_write_tensors", "_copy_file"):
        operation(*args)
        target = Path(args[1])
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif name == "_remove_tree":
        files = sorted(p for p in Path(args[0]).rglob("*") if p.is_file())
        if files:
            files[0].unlink()
    # _rename: atomic, so a kill leaves it either done (the next operation's case) or not done.


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


def kill_at_every_point(
    make_run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, Any, Path]]:
    """For each disk operation k of a whole run: run `make_run(f"kill{k}")` killed at its k-th, then
    yield (k, the trainer that resumes it, its run directory), after checking it starts at the newest
    checkpoint whose meta.json was completely written (step 0 when none was)."""
    with monkeypatch.context() as patch:
        counter = FaultInjector(patch)
        make_run("count").train()
    assert counter.calls > 10
    for k in range(1, counter.calls + 1):
        with monkeypatch.context() as patch:
            injector = FaultInjector(patch, kill_at=k)
            with pytest.raises(Killed):
                make_run(f"kill{k}").train()
        resumed = make_run(f"kill{k}", resume=True)
        assert resumed.step == max(injector.complete_steps, default=0), f"kill point {k}"
        yield k, resumed, resumed.run_dir


# ----------------------------------------------------------------------------- Decision
@pytest.fixture(scope="module")
def pendulum() -> OfflineDataset:
    return collect("Pendulum-v1", 4, {"max_episode_steps": 20})


def _decision_config(tmp_path: Path, name: str, eval_every: int):
    config = tiny_config(tmp_path, name, steps=6)
    config.eval.every = eval_every  # 4: a periodic best checkpoint; 0: `best` is a copy of `last` at the end
    return config


@pytest.mark.parametrize("eval_every", [4, 0], ids=["periodic-best", "best-copied-at-the-end"])
def test_decision_run_recovers_from_a_kill_at_every_disk_operation(
    tmp_path: Path, pendulum: OfflineDataset, monkeypatch: pytest.MonkeyPatch, eval_every: int
) -> None:
    def make_run(name: str, resume: bool = False) -> DecisionTrainer:
        return DecisionTrainer(
            _decision_config(tmp_path, name, eval_every), pendulum, resume=resume, show_progress=False
        )

    reference = make_run("reference").train()
    assert reference is not None
    reference_weights = load_file(str(tmp_path / "reference/checkpoints/last/model.safetensors"))
    for k, resumed, run_dir in kill_at_every_point(make_run, monkeypatch):
        results = resumed.train()
        assert results is not None, f"kill point {k}"
        _check_finished_like(run_dir, results, reference, reference_weights, k)


def _check_finished_like(
    run_dir: Path, results: dict, reference: dict, weights: dict[str, torch.Tensor], k: int
) -> None:
    saved = json.loads((run_dir / "results.json").read_text())
    for got in (results, saved):
        assert _scores(got) == _scores(reference), f"kill point {k}"
    for name in ("last", "best"):
        read_meta(run_dir / "checkpoints" / name)  # complete
    resumed_weights = load_file(str(run_dir / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(resumed_weights[key], value) for key, value in weights.items()), f"kill point {k}"
    assert leftovers(run_dir) == [], f"kill point {k}"


def _scores(results: dict) -> dict:
    """Each checkpoint's step and evaluation, without the timings."""
    return {
        name: (
            result["step"],
            [{k: v for k, v in t.items() if k != "wall_time_s"} for t in result["targets"]],
        )
        for name, result in results["checkpoints"].items()
    }


# ----------------------------------------------------------------------------- PPO
def _ppo_config(tmp_path: Path, name: str) -> PPOConfig:
    return ppo_config(
        tmp_path,
        num_envs=2,
        num_steps=8,
        num_minibatches=1,
        update_epochs=1,
        hidden_dim=8,
        head_hidden=8,
        total_steps=48,  # 3 iterations of 16 steps
        run_dir=str(tmp_path / name),
    )


def test_ppo_run_recovers_from_a_kill_at_every_disk_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make_run(name: str, resume: bool = False) -> PPOTrainer:
        return PPOTrainer(_ppo_config(tmp_path, name), resume=resume)

    for k, resumed, run_dir in kill_at_every_point(make_run, monkeypatch):
        assert resumed.train()["global_step"] == 48, f"kill point {k}"
        assert json.loads((run_dir / "results.json").read_text())["steps"] == 48, f"kill point {k}"
        assert read_meta(run_dir / "checkpoints/last")["step"] == 48, f"kill point {k}"
        assert leftovers(run_dir) == [], f"kill point {k}"


# ----------------------------------------------------------------------------- a real kill
KILLER = """
import os, sys
from recurrl.agents import checkpoint
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.ppo import PPOTrainer

kill_at, calls = int(sys.argv[2]), [0]
for name in {operations!r}:
    def wrap(operation):
        def injected(*args):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), 9)
            operation(*args)
        return injected
    setattr(checkpoint, name, wrap(getattr(checkpoint, name)))
config = PPOConfig(**{config!r})
config.run_dir = sys.argv[1]
PPOTrainer(config).train()
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [11, 12, 20], ids=["between-the-renames", "removing-the-old", "results"])
def test_a_real_kill_9_during_a_save_then_resume(tmp_path: Path, kill_at: int) -> None:
    """The same with a real SIGKILL of a real process. Disk operations 1-2 write config.json, 3-6 the
    first checkpoint, 7-12 the second (10 and 11 its two renames, 12 the removal of the first), 13-18
    the third, 19-20 results.json (20 its rename)."""
    from dataclasses import asdict

    config = asdict(_ppo_config(tmp_path, "unused"))
    script = KILLER.format(operations=DISK_OPERATIONS, config=config)
    run_dir = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", script, str(run_dir), str(kill_at)], capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    resumed = PPOTrainer(_ppo_config(tmp_path, "killed"), resume=True)
    assert resumed.step == (48 if kill_at == 20 else 32)  # the newest complete checkpoint
    assert resumed.train()["global_step"] == 48
    assert (run_dir / "results.json").is_file() and leftovers(run_dir) == []
