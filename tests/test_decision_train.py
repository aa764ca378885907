"""Decision agent: segment sampling, exact resume, interrupts, NaN, bad input, evaluation modes, CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter

from recurrl.agents.checkpoint import CheckpointError
from recurrl.agents.decision.config import DecisionConfig
from recurrl.agents.decision.data import SegmentSampler
from recurrl.agents.decision.evaluation import run_episodes
from recurrl.agents.decision.model_io import EnvSpec, load_decision_checkpoint
from recurrl.agents.decision.optim import lr_factor
from recurrl.agents.decision.trainer import DecisionTrainer
from recurrl.agents.run_loop import TrainingDiverged
from recurrl.envs.episodes import Episode, OfflineDataset, random_action_dataset
from recurrl.policies.decision import DecisionModel, DecisionModelConfig


def collect(env_id: str, episodes: int, env_kwargs: dict | None = None, seed: int = 0) -> OfflineDataset:
    """A small dataset from random actions (so these tests do not depend on the embedded data)."""
    return random_action_dataset(env_id, episodes, env_kwargs, seed, ref_scores=(0.0, 100.0))


@pytest.fixture(scope="module")
def pendulum() -> OfflineDataset:
    return collect("Pendulum-v1", 6, {"max_episode_steps": 25})


@pytest.fixture(scope="module")
def cartpole() -> OfflineDataset:
    return collect("CartPole-v1", 12, {"max_episode_steps": 30})


def tiny_config(tmp_path: Path, name: str, backbone: str = "gru", **kw) -> DecisionConfig:
    config = DecisionConfig(runs_dir=str(tmp_path), run_name=name, steps=8, batch_size=8, context_length=6)
    config.model.backbone, config.model.hidden_dim, config.model.num_layers = backbone, 16, 1
    config.checkpoint_every, config.log_every, config.warmup_steps = 2, 2, 3
    config.eval.every, config.eval.episodes, config.eval.num_envs, config.eval.episodes_during_training = (
        4,
        2,
        2,
        1,
    )
    config.eval.target_returns = [-100.0]
    for key, value in kw.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------------- sampling
def test_sampler_segments_returns_to_go_padding_and_burn_in() -> None:
    rewards = [np.arange(3, dtype=np.float32), np.ones(50, np.float32)]
    episodes = [
        Episode(
            np.arange(len(r) * 2, dtype=np.float32).reshape(len(r), 2) + 100 * i,
            np.zeros((len(r), 1), np.float32),
            r,
            np.zeros(len(r), bool),
            np.zeros(len(r), bool),
        )
        for i, r in enumerate(rewards)
    ]
    box = gym.spaces.Box(-np.inf, np.inf, (2,))
    data = OfflineDataset("hand", episodes, "Pendulum-v1", box, gym.spaces.Box(-1, 1, (1,)))
    sampler = SegmentSampler(data, context_length=5, burn_in=3, seed=0)
    batch = sampler.sample(4000)
    assert batch.states.shape == (4000, 8, 2) and batch.actions.shape == (4000, 8, 1)
    # Episodes are drawn in proportion to their length (3 vs 50 steps).
    from_short = (batch.states[:, 3, 0] < 100).float().mean().item()
    assert abs(from_short - 3 / 53) < 0.02
    # The segment proper (after the burn-in) starts with a real step; the loss only covers it.
    assert batch.loss_mask[:, :3].sum() == 0 and batch.loss_mask[:, 3].all()
    # Exactly one episode start per row, at its first real step; nothing real before it.
    assert (batch.episode_starts.sum(1) == 1).all()
    first = batch.episode_starts.float().argmax(1)
    for row in range(50):
        t0 = int(first[row])
        assert (batch.states[row, :t0] == 0).all()
        # Returns-to-go are suffix sums of the episode's rewards; timesteps count within the episode.
        ep = 0 if batch.states[row, 3, 0] < 100 else 1
        step = int(batch.timesteps[row, 3])
        assert batch.returns_to_go[row, 3, 0].item() == pytest.approx(float(rewards[ep][step:].sum()))
        assert batch.states[row, 3, 0].item() == 100 * ep + 2 * step
        real = batch.loss_mask[row]
        assert real.sum() == min(5, len(rewards[ep]) - step)


# ----------------------------------------------------------------------------- resume & interrupts
def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_gives_identical_weights(
    tmp_path: Path, pendulum: OfflineDataset, schedule: str, scalar_steps: Callable[[Path, str], list[int]]
) -> None:
    straight = DecisionTrainer(
        tiny_config(tmp_path, "straight", lr_schedule=schedule), pendulum, show_progress=False
    )
    straight.train()
    halves = DecisionTrainer(
        tiny_config(tmp_path, "halves", lr_schedule=schedule), pendulum, show_progress=False
    )
    assert halves.train(until=4) is None
    del halves
    # A killed run logs past its last checkpoint; the resumed run must replace those events, not add to them.
    with SummaryWriter(str(tmp_path / "halves")) as stray:
        stray.add_scalar("train/loss", 1e6, 6)
    # TensorBoard reads a run's event files in name order: <time in s>.<host>.<pid>.<counter>. Files made
    # by one process in the same second sort by the counter as text (".10" before ".9"), so the resumed
    # run's file could sort before the stray one; a new second keeps the order a real restart has.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    resumed = DecisionTrainer(
        tiny_config(tmp_path, "halves", lr_schedule=schedule), pendulum, resume=True, show_progress=False
    )
    assert resumed.step == 4
    results = resumed.train()
    a, b = weights(tmp_path / "straight/checkpoints/last"), weights(tmp_path / "halves/checkpoints/last")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert results is not None and results["steps"] == 8
    for run in ("straight", "halves"):
        assert scalar_steps(tmp_path / run, "train/loss") == [2, 4, 6, 8], run
    saved = json.loads((tmp_path / "halves/results.json").read_text())
    assert set(saved["checkpoints"]) == {"last", "best"}
    assert json.loads((tmp_path / "halves/config.json").read_text())["model"]["backbone"] == "gru"


def test_ema_is_what_is_checkpointed_and_resumes_exactly(tmp_path: Path, pendulum: OfflineDataset) -> None:
    trainer = DecisionTrainer(tiny_config(tmp_path, "one", ema_decay=0.9), pendulum, show_progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    # Step 1 ramps the decay to min(0.9, 2 / 11): the average is mostly the new weights.
    decay = 2 / 11
    for name, param in trainer.model.named_parameters():
        expected = decay * before[name] + (1 - decay) * param.detach()
        assert torch.allclose(trainer.ema.state_dict()[name], expected, atol=1e-6), name
    assert trainer.policy is trainer.ema and not trainer.ema.training

    straight = DecisionTrainer(
        tiny_config(tmp_path, "straight", ema_decay=0.9), pendulum, show_progress=False
    )
    straight.train()
    halves = DecisionTrainer(tiny_config(tmp_path, "halves", ema_decay=0.9), pendulum, show_progress=False)
    assert halves.train(until=4) is None
    del halves
    resumed = DecisionTrainer(
        tiny_config(tmp_path, "halves", ema_decay=0.9), pendulum, resume=True, show_progress=False
    )
    resumed.train()
    for run in ("straight", "halves"):
        ckpt = tmp_path / run / "checkpoints/last"
        saved_ema = weights(ckpt)
        raw = {
            k.removeprefix("train_model/"): v
            for k, v in load_file(str(ckpt / "train.safetensors")).items()
            if k.startswith("train_model/")
        }
        assert saved_ema.keys() == raw.keys()
        assert any(not torch.equal(saved_ema[k], raw[k]) for k in raw)  # the average is not the raw weights
        if run == "straight":
            reference_ema, reference_raw = saved_ema, raw
            for k, v in straight.ema.state_dict().items():
                assert torch.equal(saved_ema[k], v), k
        else:
            for k in raw:
                assert torch.equal(saved_ema[k], reference_ema[k]), k
                assert torch.equal(raw[k], reference_raw[k]), k
    # `recurrl evaluate` loads the average: the checkpoint's model weights are the EMA's.
    model, _ = load_decision_checkpoint(tmp_path / "straight/checkpoints/last", torch.device("cpu"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight.ema.state_dict()[k]), k
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        DecisionConfig(ema_decay=1.0).validate()
    with pytest.raises(ValueError, match="cannot resume.*ema_decay"):
        DecisionTrainer(
            tiny_config(tmp_path, "halves", ema_decay=0.5), pendulum, resume=True, show_progress=False
        )


def test_lr_schedules_warm_up_then_hold_or_decay(tmp_path: Path, pendulum: OfflineDataset) -> None:
    config = DecisionConfig(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(config, step) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[54] == pytest.approx(0.55)  # half way through the decay
    assert factors[99] == pytest.approx(0.1)
    config.lr_schedule = "constant"
    assert all(lr_factor(config, step) == 1.0 for step in range(9, 100))

    trainer = DecisionTrainer(
        tiny_config(tmp_path, "cos", lr_schedule="cosine"), pendulum, show_progress=False
    )
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.config.lr * 0.1)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, got 'linear'"):
        DecisionConfig(lr_schedule="linear").validate()
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        DecisionConfig(min_lr_ratio=2.0).validate()


def test_interrupt_saves_checkpoint_and_resume_rejects_other_config(
    tmp_path: Path, pendulum: OfflineDataset
) -> None:
    trainer = DecisionTrainer(
        tiny_config(tmp_path, "run", checkpoint_every=100), pendulum, show_progress=False
    )
    original = trainer.train_step

    def interrupted() -> float:
        if trainer.step == 3:  # a scheduler's kill arrives in the middle of step 4
            os.kill(os.getpid(), signal.SIGTERM)
        return original()

    trainer.train_step = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    # Step 4 was finished, then saved: no half-applied update, nothing lost.
    meta = json.loads((tmp_path / "run/checkpoints/last/meta.json").read_text())
    assert meta["step"] == 4 and meta["kind"] == "decision"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed afterwards
    other = tiny_config(tmp_path, "run")
    other.model.hidden_dim = 32
    with pytest.raises(ValueError, match="cannot resume.*model"):
        DecisionTrainer(other, pendulum, resume=True, show_progress=False)
    with pytest.raises(ValueError, match="already exists"):
        DecisionTrainer(tiny_config(tmp_path, "run"), pendulum, show_progress=False)


def test_resume_takes_the_newest_complete_checkpoint_and_results_say_how_fast(
    tmp_path: Path, pendulum: OfflineDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = DecisionTrainer(tiny_config(tmp_path, "fb"), pendulum, show_progress=False)
    assert trainer.train(until=4) is None  # eval.every=4: best and last both at step 4
    weights = tmp_path / "fb/checkpoints/last/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # last broken on disk (not by a save: those are safe)
    resumed = DecisionTrainer(tiny_config(tmp_path, "fb"), pendulum, resume=True, show_progress=False)
    assert resumed.step == 4
    assert "corrupt or truncated (checksum mismatch); resuming from" in capsys.readouterr().err
    results = resumed.train()
    assert results is not None and results["checkpoints"]["last"]["step"] == 8
    assert {"kind", "run_dir", "steps", "train_steps_per_s", "wall_time_s", "eval_time_s"} <= set(results)
    assert results["train_steps_per_s"] > 0 and results["wall_time_s"] > results["eval_time_s"] > 0
    assert "done: 8 steps, " in capsys.readouterr().err


def test_nan_loss_stops_training_naming_the_step(tmp_path: Path, pendulum: OfflineDataset) -> None:
    trainer = DecisionTrainer(tiny_config(tmp_path, "nan"), pendulum, show_progress=False)
    trainer.train(until=2)
    with torch.no_grad():
        trainer.model.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"step 3; the last good checkpoint is .*last \(step 2\)"):
        trainer.train()
    assert json.loads((tmp_path / "nan/checkpoints/last/meta.json").read_text())["step"] == 2


# ----------------------------------------------------------------------------- bad input
def test_dataset_spaces_must_match_the_env(tmp_path: Path, pendulum: OfflineDataset) -> None:
    wrong = OfflineDataset(
        "wrong", pendulum.episodes, "CartPole-v1", pendulum.observation_space, pendulum.action_space
    )
    with pytest.raises(ValueError, match="observation space of env 'CartPole-v1'"):
        DecisionTrainer(tiny_config(tmp_path, "wrong"), wrong, show_progress=False)
    assert not (tmp_path / "wrong").exists()  # a run that fails to build leaves no directory behind


def test_corrupt_or_foreign_checkpoints_are_rejected(tmp_path: Path, pendulum: OfflineDataset) -> None:
    trainer = DecisionTrainer(tiny_config(tmp_path, "ck", steps=2), pendulum, show_progress=False)
    trainer.train(until=2)
    path = tmp_path / "ck/checkpoints/last"
    model, meta = load_decision_checkpoint(path)
    assert meta["kind"] == "decision" and model.obs_mean.shape == (3,)
    # Meta says another width than the weights: "made for another model configuration".
    edited = json.loads((path / "meta.json").read_text())
    edited["model_kwargs"]["hidden_dim"] = 32
    (path / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="another model configuration"):
        load_decision_checkpoint(path)
    # Truncated weights.
    trainer.save("last")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_decision_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a recurrl checkpoint"):
        load_decision_checkpoint(tmp_path)


def test_unknown_config_key_is_an_error() -> None:
    import argparse

    from recurrl.scripts.train import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "model.hiden_dim=3"])
    with pytest.raises(ValueError, match="unknown config key.*hiden_dim"):
        build_config(args)
    config, resume = build_config(parser.parse_args(["train", "--backbone", "lstm", "steps=7"]))
    assert config.model.backbone == "lstm" and config.steps == 7 and not resume


def test_evaluate_rejects_env_with_other_spaces(pendulum: OfflineDataset) -> None:
    spec = EnvSpec.from_dataset(pendulum)
    spec.env_id = "MountainCarContinuous-v0"
    model = DecisionModel(DecisionModelConfig(3, 1, backbone_name="gru", hidden_dim=8, num_layers=1))
    with pytest.raises(ValueError, match="does not match"):
        run_episodes(model, spec, 0.0, episodes=1, num_envs=1)


# ----------------------------------------------------------------------------- evaluation
def untrained_model(
    dataset: OfflineDataset, backbone: str, seed: int, context_length: int = 20
) -> DecisionModel:
    """A freshly initialised width-16, 1-layer model for `dataset`, in eval mode (seeded init)."""
    from recurrl.agents.decision.model_io import build_model, model_kwargs

    config = DecisionConfig(context_length=context_length)
    config.model.backbone, config.model.hidden_dim, config.model.num_layers = backbone, 16, 1
    torch.manual_seed(seed)
    return build_model(model_kwargs(config, dataset)).eval()


@pytest.mark.parametrize("backbone", ["gru", "mingru"])
def test_stateful_and_window_agree_when_the_window_holds_the_episode(
    cartpole: OfflineDataset, backbone: str
) -> None:
    """With K >= episode length both modes see the whole episode from a fresh state: same actions."""
    model = untrained_model(cartpole, backbone, seed=1, context_length=32)
    spec = EnvSpec.from_dataset(cartpole)
    stateful = run_episodes(model, spec, 30.0, episodes=5, num_envs=3, seed=3, mode="stateful")
    window = run_episodes(model, spec, 30.0, episodes=5, num_envs=3, seed=3, mode="window", context_length=32)
    assert len(stateful["returns"]) == 5  # 5 episodes over 3 envs: quotas 2, 2, 1
    assert sorted(stateful["returns"]) == sorted(window["returns"])
    assert sorted(stateful["lengths"]) == sorted(window["lengths"])


def test_evaluation_seeds_run_disjoint_episodes(pendulum: OfflineDataset) -> None:
    """`--seeds 0 1` must mean two sets of episodes: gymnasium's reset(seed=s) alone seeds env i with s + i."""
    from recurrl.envs.seeding import vector_env_seeds

    assert vector_env_seeds(0, 4) == vector_env_seeds(0, 4)
    assert not set(vector_env_seeds(0, 4)) & set(vector_env_seeds(1, 4))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        vector_env_seeds(-1, 4)
    model = untrained_model(pendulum, "mingru", seed=0)
    spec = EnvSpec.from_dataset(pendulum)
    returns = {
        s: run_episodes(model, spec, -200.0, episodes=4, num_envs=4, seed=s)["returns"] for s in (0, 1)
    }
    again = run_episodes(model, spec, -200.0, episodes=4, num_envs=4, seed=0)["returns"]
    assert sorted(again) == sorted(returns[0])  # reproducible
    assert not set(returns[0]) & set(returns[1])  # no episode shared between seeds 0 and 1


def test_discrete_training_end_to_end(tmp_path: Path, cartpole: OfflineDataset) -> None:
    config = tiny_config(tmp_path, "cart", backbone="gru")
    config.eval.target_returns = [30.0, 10.0]
    results = DecisionTrainer(config, cartpole, show_progress=False).train()
    assert results is not None
    last = results["checkpoints"]["last"]
    assert [t["target_return"] for t in last["targets"]] == [30.0, 10.0]
    for target in last["targets"]:
        assert target["episodes"] == 2 and 1 <= target["return_mean"] <= 30
        assert target["normalized_score_mean"] == pytest.approx(target["return_mean"])  # refs 0..100
    assert list((tmp_path / "cart").glob("events.out.tfevents.*"))


def test_training_without_previous_actions_checkpoints_and_reloads(
    tmp_path: Path, pendulum: OfflineDataset
) -> None:
    """model.previous_actions=false trains end to end; the checkpoint rebuilds the same model."""
    config = tiny_config(tmp_path, "noact", backbone="mingru")
    config.model.tokens, config.model.previous_actions = "fused", False
    results = DecisionTrainer(config, pendulum, show_progress=False).train()
    assert results is not None and results["checkpoints"]["last"]["targets"][0]["episodes"] == 2
    model, meta = load_decision_checkpoint(tmp_path / "noact" / "checkpoints" / "last")
    assert meta["model_kwargs"]["previous_actions"] is False and model.embed_action is None
    config.model.tokens = "triple"
    with pytest.raises(ValueError, match="previous_actions=false needs model.tokens=fused"):
        config.validate()


# ----------------------------------------------------------------------------- CLI (embedded data)
@pytest.mark.slow
def test_cli_train_resume_evaluate_on_embedded_hopper(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recurrl.scripts.cli import main

    common = ["--runs-dir", str(tmp_path), "--run-name", "hop", "--no-progress"]
    small = [
        "model.hidden_dim=16",
        "model.num_layers=1",
        "batch_size=8",
        "eval.episodes=2",
        "eval.num_envs=2",
    ]
    assert main(["train", *common, "--steps", "6", *small, "checkpoint_every=3", "eval.every=0"]) == 0
    out = capsys.readouterr().out
    assert "normalized score" in out
    results = json.loads((tmp_path / "hop/results.json").read_text())
    assert results["checkpoints"]["last"]["targets"][0]["episodes"] == 2
    # Extending a finished run: resume with more steps.
    assert main(["train", "--resume", str(tmp_path / "hop"), "--no-progress", "steps=8"]) == 0
    assert json.loads((tmp_path / "hop/results.json").read_text())["steps"] == 8
    ckpt = tmp_path / "hop/checkpoints/last"
    out_file = tmp_path / "eval.json"
    args = [
        "evaluate",
        str(ckpt),
        "--episodes",
        "2",
        "--num-envs",
        "2",
        "--mode",
        "both",
        "--output",
        str(out_file),
    ]
    assert main(args) == 0
    summary = json.loads(out_file.read_text())
    assert set(summary["checkpoints"][0]["modes"]) == {"stateful", "window"}
    # Two checkpoints, two targets: the per-target rows, their aggregate, and the return-vs-target plot.
    plot = tmp_path / "plots" / "sweep.png"
    sweep = [str(ckpt), str(tmp_path / "hop/checkpoints/best"), "--target-returns", "3600", "1800"]
    assert main(["evaluate", *sweep, "--episodes", "2", "--num-envs", "2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"plot: {plot}" in out and "all 2 checkpoints [stateful] target 1800" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    # The return-to-go probe, on the run's own (embedded) dataset.
    probe = tmp_path / "probe.json"
    assert main(["probe", str(ckpt), "--segments", "8", "--scales", "0", "--output", str(probe)]) == 0
    assert "[episode starts, 8]: action loss" in capsys.readouterr().out
    rows = json.loads(probe.read_text())["rows"]
    assert [r["segments"] for r in rows] == ["episode starts", "random segments"]
    assert all(r["loss_recorded"] > 0 and set(r["ratio"]) == {"x0"} for r in rows)
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2


# ----------------------------------------------------------------------------- presets
def test_presets_load_and_every_backbone_preset_builds(pendulum: OfflineDataset) -> None:
    from recurrl.agents.config import load_config
    from recurrl.agents.decision.model_io import build_model, model_kwargs

    root = Path(__file__).resolve().parents[1] / "configs" / "decision"
    presets = sorted(root.glob("*.yaml"))
    assert len(presets) >= 12  # 3 envs x 4 tiers (+ quick)
    for preset in presets:
        config = load_config(DecisionConfig, [preset])
        config.validate()
        assert config.dataset.startswith("recurrl/")
    for backbone in sorted((root / "backbones").glob("*.yaml")):
        config = load_config(DecisionConfig, [root / "hopper-medium.yaml", backbone], ["model.hidden_dim=16"])
        assert config.model.backbone == backbone.stem
        model = build_model(model_kwargs(config, pendulum))
        assert model.backbone_name == backbone.stem
