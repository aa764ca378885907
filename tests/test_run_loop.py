"""The shared run loop: one run per directory (an OS lock, tested with two real processes), refusals that
name --resume and a fresh name, one resume rule, budget rounding, the NaN stop, results.json's common keys
and the summary line, for both trainers."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ppo import _config as ppo_config

import recurrl.envs  # noqa: F401  (registers CartPoleNoVel-v1)
from recurrl.agents.checkpoint import read_meta
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.ppo import PPOTrainer
from recurrl.agents.run_dir import RunDir, RunDirError
from recurrl.agents.run_loop import TrainingDiverged

COMMON_RESULTS = {"kind", "run_dir", "steps", "train_steps_per_s", "wall_time_s", "eval_time_s"}


def _ppo(tmp_path: Path, name: str = "run", **kw) -> PPOConfig:
    """Iterations of 2 envs x 16 steps, 2 of them by default, a checkpoint after each."""
    small = dict(num_envs=2, num_minibatches=1, update_epochs=1, hidden_dim=8, head_hidden=8, total_steps=64)
    return ppo_config(tmp_path, **{**small, "run_dir": str(tmp_path / name), **kw})


def _open(path: Path, resume: bool = False) -> RunDir:
    return RunDir(path, resume, command="recurrl train", fresh_name="--run-name NAME")


# ----------------------------------------------------------------------------- one run, one directory
LOCKER = """
import sys
from recurrl.agents.run_dir import RunDir
run = RunDir(sys.argv[1], False, command="recurrl train", fresh_name="--run-name NAME")
print("locked", flush=True)
sys.stdin.readline()
"""


def test_two_processes_never_share_a_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        for resume in (False, True):
            message = rf"in use by another live run \(pid {child.pid}\).*--resume {run_dir}.*fresh name \(--run-name"
            with pytest.raises(RunDirError, match=message):
                _open(run_dir, resume)
    finally:
        child.kill()  # kill -9: the kernel drops its lock
        child.wait()
    _open(run_dir).close()  # free again, and still a new directory (it holds nothing but the lock file)


def test_an_existing_run_is_refused_naming_resume_and_a_fresh_name(tmp_path: Path) -> None:
    assert PPOTrainer(_ppo(tmp_path)).train()["global_step"] == 64
    fresh = r"continue it with recurrl train-ppo --resume .*run, or choose a fresh name \(--run-dir DIR\)"
    with pytest.raises(RunDirError, match="already exists and holds a finished run.*" + fresh):
        PPOTrainer(_ppo(tmp_path))
    (tmp_path / "run/results.json").unlink()
    with pytest.raises(RunDirError, match="holds an interrupted run"):
        PPOTrainer(_ppo(tmp_path))
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds other files"):
        _open(tmp_path / "other")
    with pytest.raises(RunDirError, match="is a file; give a directory path"):
        _open(tmp_path / "other/notes.txt")
    with pytest.raises(RunDirError, match="cannot create run directory"):
        _open(tmp_path / "other/notes.txt/run")
    with pytest.raises(FileNotFoundError, match="holds no run"):
        _open(tmp_path / "nowhere", resume=True)
    assert not (tmp_path / "nowhere").exists()


def test_a_run_that_fails_to_build_leaves_no_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown environment id"):
        PPOTrainer(_ppo(tmp_path, env_id="NoSuchEnv-v0"))
    assert not (tmp_path / "run").exists()
    PPOTrainer(_ppo(tmp_path)).train()  # and the name is free


def test_leftovers_of_interrupted_writes_are_cleaned_when_a_run_opens(tmp_path: Path) -> None:
    PPOTrainer(_ppo(tmp_path)).train()
    run_dir = tmp_path / "run"
    (run_dir / ".results.json.tmp-123-abcd").write_text("{")
    (run_dir / "checkpoints/.last.tmp-xyz").mkdir()  # a save killed before it wrote anything
    (run_dir / "checkpoints/.best.old-1234").mkdir()
    PPOTrainer(_ppo(tmp_path, total_steps=96), resume=True).train()
    assert sorted(p.name for p in run_dir.rglob(".*")) == [".lock"]


def test_train_ppo_default_run_dir_is_new_every_time() -> None:
    from recurrl.scripts.cli import build_parser
    from recurrl.scripts.train_ppo import build_config

    config = build_config(build_parser().parse_args(["train-ppo", "--seed", "3"]))
    assert re.fullmatch(r"runs/ppo/CartPoleNoVel-v1-mingru-s3-\d{8}-\d{6}", config.run_dir), config.run_dir


# ----------------------------------------------------------------------------- resume
def test_one_resume_rule_lists_what_may_change(tmp_path: Path) -> None:
    PPOTrainer(_ppo(tmp_path)).train()
    with pytest.raises(
        ValueError, match=r"cannot resume .*learning_rate: 0.001 -> 0.01.*only checkpoint_every, "
    ):
        PPOTrainer(_ppo(tmp_path, learning_rate=0.01), resume=True)
    resumed = PPOTrainer(_ppo(tmp_path, total_steps=96, eval_every=32, device="cpu"), resume=True)
    assert resumed.step == 64 and resumed.train()["global_step"] == 96
    # A checkpoint written before this schema (no reward_norm in its training state) is not resumed.
    meta_path = tmp_path / "run/checkpoints/last/meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["train_state"]["reward_norm"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks 'reward_norm', so the run cannot be resumed exactly"):
        PPOTrainer(_ppo(tmp_path, total_steps=128), resume=True)
    with pytest.raises(ValueError, match=r"a 'ppo' checkpoint; it cannot resume a decision run"):
        from recurrl.agents.run_loop import Run, RunSpec

        spec = RunSpec("decision", "recurrl train", "--run-name NAME", frozenset(), total_steps=1)
        Run(tmp_path / "run", _ppo(tmp_path, total_steps=96), spec, resume=True)


def test_cli_train_ppo_resumes_from_the_saved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recurrl.scripts.cli import main

    run_dir = tmp_path / "cli"
    small = ["--no-progress", "num_envs=2", "num_steps=16", "update_epochs=1", "hidden_dim=8"]
    assert (
        main(["train-ppo", "--backbone", "mlp", "--run-dir", str(run_dir), "--total-steps", "32", *small])
        == 0
    )
    capsys.readouterr()
    assert main(["train-ppo", "--run-dir", str(run_dir), "--total-steps", "32", *small]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume RUN_DIR reads config.json (the mlp backbone comes from there); a bare --resume before a
    # key=value override takes the directory from --run-dir.
    assert main(["train-ppo", "--resume", str(run_dir), "total_steps=64", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 64
    assert main(["train-ppo", "--run-dir", str(run_dir), "--no-progress", "--resume", "total_steps=96"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 96
    assert json.loads((run_dir / "config.json").read_text())["backbone"] == "mlp"
    # The command that started a run, plus --resume, resumes it (what `recurrl compare` does); a --config
    # file that would change the run is refused like any other change.
    same, other = tmp_path / "same.yaml", tmp_path / "other.yaml"
    same.write_text("update_epochs: 1\n")
    other.write_text("gamma: 0.5\n")
    started = ["train-ppo", "--backbone", "mlp", "--run-dir", str(run_dir), "--no-progress", "--resume"]
    assert main([*started, "--config", str(same), "num_threads=1", "total_steps=128"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 128
    assert main([*started, "--config", str(other)]) == 2
    assert "gamma: 0.98 -> 0.5" in capsys.readouterr().err
    assert main(["train-ppo", "--resume", str(run_dir), "--backbone", "gru"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert (
        "is a ppo run, not a decision run; resume it with recurrl train-ppo --resume"
        in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- budget, NaN, results
def test_a_budget_that_is_not_whole_iterations_is_rounded_up_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = PPOTrainer(_ppo(tmp_path, total_steps=70)).train()  # iterations of 2 x 16 = 32 steps
    err = capsys.readouterr().err
    assert "total_steps=70 is not a whole number of iterations of 32 steps" in err
    assert "running 3 iterations = 96 steps" in err
    assert summary["global_step"] == 96


def test_results_and_the_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = PPOTrainer(_ppo(tmp_path)).train()
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert COMMON_RESULTS <= set(results) and {"global_step", "fps", "wall_s", "history"} <= set(results)
    assert results["kind"] == "ppo" and results["steps"] == summary["global_step"] == 64
    assert results["train_steps_per_s"] > 0 and results["wall_time_s"] >= results["eval_time_s"] >= 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"done: 64 steps, [\d,.]+ training steps/s \(evaluation excluded\), wall time [\d.]+ s "
        r"\([\d.]+ s evaluating\); results: .*run/results.json",
        line,
    ), line


def test_nan_loss_stops_ppo_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = PPOTrainer(_ppo(tmp_path, total_steps=96))
    update = trainer.update

    def diverging(batch):
        logs = update(batch)
        if trainer.iteration == 2:
            logs["train/loss"] = math.nan
        return logs

    trainer.update = diverging  # type: ignore[method-assign]
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 64; the last good checkpoint is .*last \(step 32\)"
    ):
        trainer.train()
    assert read_meta(tmp_path / "run/checkpoints/last")["step"] == 32
    assert not (tmp_path / "run/results.json").exists()


def test_sigterm_message_says_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = PPOTrainer(_ppo(tmp_path, total_steps=96, checkpoint_every=10))
    update = trainer.update

    def interrupted(batch):
        os.kill(os.getpid(), signal.SIGTERM)
        return update(batch)

    trainer.update = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    err = capsys.readouterr().err
    assert f"SIGTERM: stopped at step 32; checkpoint saved in {tmp_path / 'run/checkpoints/last'}" in err
    assert f"Continue with: recurrl train-ppo --resume {tmp_path / 'run'}" in err


def test_interrupted_final_evaluation_is_finished_by_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = PPOTrainer(_ppo(tmp_path))

    def interrupted(writer):
        raise KeyboardInterrupt

    trainer.results = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert "interrupted in the final evaluation; training is done" in capsys.readouterr().err
    resumed = PPOTrainer(_ppo(tmp_path), resume=True)
    assert resumed.step == 64 and resumed.train()["global_step"] == 64
    assert (tmp_path / "run/results.json").is_file()


@pytest.mark.slow
def test_two_train_ppo_commands_into_one_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real `recurrl train-ppo` processes, one directory: the second is refused while the first runs;
    after kill -9 of the first, --resume continues it."""
    from recurrl.scripts.cli import main

    run_dir = tmp_path / "shared"
    args = ["--run-dir", str(run_dir), "--no-progress", "num_envs=2", "num_steps=16", "checkpoint_every=1"]
    first = subprocess.Popen(
        [sys.executable, "-m", "recurrl", "train-ppo", *args, "--total-steps", "10000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints/last/meta.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr and first.stderr.read()
            time.sleep(0.2)
        assert main(["train-ppo", *args, "--total-steps", "64"]) == 2
        assert f"in use by another live run (pid {first.pid})" in capsys.readouterr().err
        assert main(["train-ppo", "--resume", str(run_dir), "--no-progress"]) == 2
        assert "in use by another live run" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait()
    # Whatever instant the kill hit, the run resumes; a budget it has already passed just finishes it.
    assert main(["train-ppo", "--resume", str(run_dir), "--no-progress", "total_steps=32"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] >= 32
    assert (run_dir / "results.json").is_file()
