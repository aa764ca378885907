"""Small untrained agents written as real checkpoints (seconds, no training), and env loops that drive
`predict` the way a user would, for the agent API, export and plot tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurrl.agents.checkpoint import save_checkpoint
from recurrl.agents.config import to_dict
from recurrl.agents.decision.config import DecisionConfig
from recurrl.agents.decision.model_io import EnvSpec, build_model, model_kwargs
from recurrl.envs.datasets import load_dataset
from recurrl.envs.seeding import vector_env_seeds


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as `recurrl evaluate` runs by default: these models are far too small for
    two, and on a busy machine the threads' synchronization costs seconds per episode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decision_checkpoint(
    path: Path, dataset_path: Path, backbone: str, target: float = 3600.0, seed: int = 0, **model: Any
) -> Path:
    """A freshly initialised width-16, 1-layer Decision checkpoint for the dataset (as the trainer writes
    it: model_kwargs, env spec, config), at `path`."""
    dataset = load_dataset(str(dataset_path))
    config = DecisionConfig(dataset=str(dataset_path))
    config.model.backbone, config.model.hidden_dim, config.model.num_layers = backbone, 16, 1
    for key, value in model.items():
        setattr(config.model, key, value)
    config.eval.target_returns = [target]
    kwargs = model_kwargs(config, dataset)
    torch.manual_seed(seed)
    net = build_model(kwargs)
    meta = {
        "kind": "decision",
        "step": 0,
        "config": to_dict(config),
        "model_kwargs": kwargs,
        "env": dataclasses.asdict(EnvSpec.from_dataset(dataset)),
        "dataset": dataset.name,
    }
    return save_checkpoint(path, net.state_dict(), meta)


def ppo_checkpoint(run_dir: Path, env_id: str = "CartPoleNoVel-v1", **config: Any) -> Path:
    """One PPO iteration (64 env steps) on `env_id` -> its checkpoints/last."""
    from recurrl.agents.ppo.config import PPOConfig
    from recurrl.agents.ppo.ppo import train_ppo

    base = dict(env_id=env_id, num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1, hidden_dim=16)
    base.update(head_hidden=16, total_steps=64, run_dir=str(run_dir), progress_bar=False)
    train_ppo(PPOConfig(**{**base, **config}))
    return run_dir / "checkpoints" / "last"


def single_env_returns(agent: Any, episodes: int, seed: int, hook: Any = None) -> list[float]:
    """A user's loop: one gymnasium env, `predict` each tick with the previous reward and episode start.
    Seeded as the evaluator seeds env 0 of a one-env run; later episodes continue the env's RNG, as the
    vector env's autoreset does. `hook(obs, reward, start, action)` sees every tick."""
    env = agent.make_env()
    obs, _ = env.reset(seed=vector_env_seeds(seed, 1)[0])
    returns, total, state, reward, start = [], 0.0, None, 0.0, True
    while len(returns) < episodes:
        action, state = agent.predict(obs, state, episode_start=start, reward=reward)
        if hook is not None:
            hook(obs, reward, start, action)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        start = bool(terminated or truncated)
        if start:
            returns.append(total)
            total = 0.0
            obs, _ = env.reset()
    env.close()
    return returns


def vector_env_returns(agent: Any, envs: Any, episodes: int, seed: int) -> list[float]:
    """Batched `predict` over a same-step-autoreset vector env with the evaluator's per-env quotas."""
    n = envs.num_envs
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done, returns = np.zeros(n, dtype=np.int64), []
    running = np.zeros(n)
    obs, _ = envs.reset(seed=vector_env_seeds(seed, n))
    state, reward, starts = None, np.zeros(n), np.ones(n, dtype=bool)
    while (done < quota).any():
        action, state = agent.predict(obs, state, episode_start=starts, reward=reward)
        obs, reward, terminated, truncated, _ = envs.step(action)
        running += reward
        starts = np.logical_or(terminated, truncated)
        for i in np.flatnonzero(starts):
            if done[i] < quota[i]:
                returns.append(float(running[i]))
                done[i] += 1
        running[starts] = 0.0
    envs.close()
    return returns
