"""`recurrl.load(checkpoint).predict(...)`: a user's loop reproduces the project's evaluators episode by
episode (same checkpoint, same env seeds), batched and single observations, SB3's evaluate_policy,
the return-to-go bookkeeping, and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_agents import (
    decision_checkpoint,
    one_thread,
    ppo_checkpoint,
    single_env_returns,
    vector_env_returns,
)

import recurrl
from recurrl.agents.agent import DecisionAgent, PPOAgent
from recurrl.agents.checkpoint import CheckpointError, save_checkpoint
from recurrl.agents.decision.evaluation import run_episodes
from recurrl.envs.vector import make_vector_env


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    ppo_checkpoint(run_dir)
    return run_dir


# ----------------------------------------------------------------------------- Decision agent
@pytest.mark.parametrize(
    "backbone,model",
    [("mingru", {}), ("transformer", {}), ("gru", {"tokens": "triple"})],
    ids=["mingru-compiled-step", "transformer-kv-cache", "gru-triple-tokens"],
)
def test_decision_predict_loop_matches_evaluator_episode_by_episode(
    tmp_path: Path, tiny_hopper_dataset_path: Path, backbone: str, model: dict
) -> None:
    ckpt = decision_checkpoint(tmp_path / "ckpt", tiny_hopper_dataset_path, backbone, **model)
    agent = recurrl.load(ckpt)
    assert isinstance(agent, DecisionAgent) and agent.target_return == 3600.0
    # One env, a plain gymnasium loop, against a one-env evaluation with the same seed.
    ref = run_episodes(agent.model, agent.spec, 3600.0, episodes=3, num_envs=1, seed=5)
    assert single_env_returns(agent, 3, seed=5) == ref["returns"]
    # Batched: 3 envs, 5 episodes (quotas 2, 2, 1), in the order the evaluator records them.
    ref = run_episodes(agent.model, agent.spec, 3600.0, episodes=5, num_envs=3, seed=2)
    assert vector_env_returns(agent, make_vector_env(agent.spec.env_id, 3, env_kwargs=agent.spec.env_kwargs), 5, seed=2) == ref["returns"]


def test_discrete_decision_agent_and_sampling(tmp_path: Path, tiny_pomdp_dataset_path: Path) -> None:
    ckpt = decision_checkpoint(tmp_path / "ckpt", tiny_pomdp_dataset_path, "gru", target=60.0)
    agent = recurrl.load(ckpt, target_return=80.0)
    assert agent.target_return == 80.0
    ref = run_episodes(agent.model, agent.spec, 80.0, episodes=3, num_envs=1, seed=1)
    assert single_env_returns(agent, 3, seed=1) == ref["returns"]
    obs = np.zeros((4, 2), np.float32)
    action, state = agent.predict(obs)
    assert action.dtype == np.int64 and action.shape == (4,)
    torch.manual_seed(0)
    sampled = {int(agent.predict(obs, deterministic=False)[0][0]) for _ in range(40)}
    assert sampled == {0, 1}  # an untrained model's logits are near even


def test_return_to_go_target_and_single_observations(tmp_path: Path, tiny_hopper_dataset_path: Path) -> None:
    agent = recurrl.load(
        decision_checkpoint(tmp_path / "run/checkpoints/last", tiny_hopper_dataset_path, "gru")
    )
    assert isinstance(recurrl.load(tmp_path / "run"), DecisionAgent)  # a run dir means its checkpoints/last
    obs = np.linspace(-1, 1, 11, dtype=np.float32)
    action, state = agent.predict(obs)
    assert action.shape == (3,) and np.all(np.abs(action) <= 1.0)  # Hopper's bounds
    assert state.returns_to_go.tolist() == [3600.0] and state.timestep.tolist() == [0]
    _, state = agent.predict(obs, state, episode_start=False, reward=1.5)
    assert state.returns_to_go.tolist() == [3598.5] and state.timestep.tolist() == [1]
    # A new target applies from the next episode start; the running one keeps its return-to-go.
    agent.set_target_return(1000)
    _, state = agent.predict(obs, state, reward=0.5)
    assert state.returns_to_go.tolist() == [3598.0]
    _, state = agent.predict(obs, state, episode_start=True, reward=7.0)
    assert state.returns_to_go.tolist() == [1000.0] and state.timestep.tolist() == [0]
    # The same observation batched gives the same action as alone.
    batch, _ = agent.predict(np.stack([obs, -obs]))
    assert np.allclose(batch[0], agent.predict(obs)[0], atol=1e-6)


def test_bad_input_is_one_clear_error(tmp_path: Path, tiny_hopper_dataset_path: Path, ppo_run: Path) -> None:
    agent = recurrl.load(decision_checkpoint(tmp_path / "ckpt", tiny_hopper_dataset_path, "mingru"))
    with pytest.raises(
        ValueError, match=r"observation must be shaped \(11,\) or \[B, \*\(11,\)\], got \(4, 7\)"
    ):
        agent.predict(np.zeros((4, 7)))
    _, state = agent.predict(np.zeros((2, 11)))
    with pytest.raises(ValueError, match="state holds 2 env rows but obs has 3"):
        agent.predict(np.zeros((3, 11)), state)
    with pytest.raises(ValueError, match="episode_start must have one value per observation row"):
        agent.predict(np.zeros((2, 11)), state, episode_start=[True, False, True])
    with pytest.raises(ValueError, match="finite"):
        agent.set_target_return(float("nan"))
    with pytest.raises(ValueError, match="target_return applies to Decision agents only"):
        recurrl.load(ppo_run, target_return=10.0)
    save_checkpoint(tmp_path / "sac", {"w": torch.zeros(1)}, {"kind": "sac"})
    with pytest.raises(
        CheckpointError, match=r"unknown checkpoint kind 'sac'; recurrl loads 'decision' and 'ppo'"
    ):
        recurrl.load(tmp_path / "sac")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recurrl.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        recurrl.load(tmp_path)


# ----------------------------------------------------------------------------- PPO agent
def test_ppo_predict_loop_and_sb3_evaluate_policy_match_the_evaluator(ppo_run: Path) -> None:
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint
    from recurrl.envs.seeding import vector_env_seeds

    agent = recurrl.load(ppo_run)
    assert isinstance(agent, PPOAgent)
    ckpt = str(ppo_run / "checkpoints/last")
    ref = evaluate_ppo_checkpoint(ckpt, episodes=4, seeds=(3,), num_envs=1)["returns"]
    assert single_env_returns(agent, 4, seed=3) == ref
    venv = DummyVecEnv([lambda: Monitor(agent.make_env())])
    venv.seed(vector_env_seeds(3, 1)[0])
    rewards, _ = evaluate_policy(agent, venv, n_eval_episodes=4, return_episode_rewards=True)
    assert rewards == ref
    ref = evaluate_ppo_checkpoint(ckpt, episodes=5, seeds=(1,), num_envs=3)["returns"]
    assert vector_env_returns(agent, make_vector_env("CartPoleNoVel-v1", 3), 5, seed=1) == ref


def test_continuous_ppo_actions_are_clipped_and_separate_critic_state_carried(tmp_path: Path) -> None:
    ckpt = ppo_checkpoint(tmp_path / "run", "PendulumNoVel-v1", shared_backbone=False, log_std_init=2.0)
    agent = recurrl.load(ckpt)
    obs = np.zeros(2, np.float32)
    action, state = agent.predict(obs)
    assert action.shape == (1,) and len(state) == 2  # actor's and critic's minGRU state
    torch.manual_seed(0)
    sampled = np.array([agent.predict(obs, deterministic=False)[0] for _ in range(50)])
    assert np.all(np.abs(sampled) <= 2.0) and np.any(np.abs(sampled) == 2.0)  # std e^2 hits the bounds


# ----------------------------------------------------------------------------- end to end (CLI)
def test_cli_trained_checkpoints_predict_as_recurrl_evaluate(
    tmp_path: Path, tiny_hopper_dataset_path: Path
) -> None:
    from recurrl.scripts.cli import main

    small = ["model.hidden_dim=16", "model.num_layers=1", "batch_size=8", "eval.every=0"]
    args = ["--dataset", str(tiny_hopper_dataset_path), "--runs-dir", str(tmp_path), "--run-name", "dt"]
    assert (
        main(["train", *args, "--steps", "30", "--no-progress", *small, "eval.episodes=1", "eval.num_envs=1"])
        == 0
    )
    ppo = ["--env", "CartPoleNoVel-v1", "--run-dir", str(tmp_path / "ppo"), "--no-progress"]
    assert (
        main(["train-ppo", *ppo, "--total-steps", "512", "hidden_dim=16", "num_envs=4", "num_steps=64"]) == 0
    )
    for run, seed in (("dt", 7), ("ppo", 4)):
        out = tmp_path / f"{run}.json"
        evaluate = [
            "evaluate",
            str(tmp_path / run / "checkpoints/last"),
            "--episodes",
            "3",
            "--num-envs",
            "1",
        ]
        assert main([*evaluate, "--seeds", str(seed), "--output", str(out)]) == 0
        result = json.loads(out.read_text())["checkpoints"][0]
        returns = (
            result["modes"]["stateful"][0]["returns"] if run == "dt" else result["returns"]
        )
        assert single_env_returns(recurrl.load(tmp_path / run), 3, seed=seed) == returns
