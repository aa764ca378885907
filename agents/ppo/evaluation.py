"""Evaluate a PPO checkpoint: a vector env, `policy.act` every tick, state carried and reset per env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurrl.agents.checkpoint import CheckpointError, load_checkpoint, load_weights_strict
from recurrl.agents.config import from_dict
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.normalization import ObsNormalizer
from recurrl.agents.ppo.ppo import CHECKPOINT_KIND, build_policy, env_actions
from recurrl.agents.ppo.vec_env import check_finite, make_vector_env
from recurrl.envs.seeding import vector_env_seeds
from recurrl.policies.actor_critic import ActorCritic, SpaceSpec


def load_ppo_checkpoint(
    path: str | Path, device: str = "cpu"
) -> tuple[ActorCritic, PPOConfig, ObsNormalizer]:
    """(policy in eval mode, its config, its frozen observation normalizer)."""
    model, meta, _ = load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint, not a PPO one")
    config = from_dict(PPOConfig, meta["config"])
    spec = SpaceSpec(**meta["spaces"])
    policy = build_policy(config, spec)
    load_weights_strict(policy, model, str(path))
    return policy.to(device).eval(), config, ObsNormalizer.from_dict(meta["obs_norm"])


def evaluate_ppo_checkpoint(
    path: str | Path,
    episodes: int = 10,
    seed: int = 0,
    num_envs: int = 4,
    device: str = "cpu",
    deterministic: bool = True,
    env_id: str | None = None,
) -> dict[str, Any]:
    """Run `episodes` full episodes -> {"mean_return", "std_return", "episodes", "returns", "lengths", ...}."""
    if episodes <= 0 or num_envs <= 0:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes}, {num_envs}")
    policy, config, obs_norm = load_ppo_checkpoint(path, device)
    result = run_episodes(
        policy, obs_norm, env_id or config.env_id, episodes, seed, num_envs, device, deterministic
    )
    return {"kind": CHECKPOINT_KIND, "checkpoint": str(path), "backbone": config.backbone, **result}


@torch.no_grad()
def run_episodes(
    policy: ActorCritic,
    obs_norm: ObsNormalizer,
    env_id: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 4,
    device: str | torch.device = "cpu",
    deterministic: bool = True,
) -> dict[str, Any]:
    """`episodes` full episodes of `policy` in fresh envs, observations normalized by `obs_norm` without
    updating it -> {"env_id", "deterministic", "seed", "episodes", "mean_return", "std_return", "returns",
    "lengths"}. Used by `recurrl evaluate` and by the trainer's periodic evaluation (`eval_every`)."""
    num_envs = min(num_envs, episodes)
    envs = make_vector_env(env_id, num_envs, "sync")
    spec = SpaceSpec.from_spaces(envs.single_observation_space, envs.single_action_space)
    if spec != policy.spec:
        envs.close()
        raise ValueError(f"{env_id!r} has spaces {spec}, but the checkpoint was trained on {policy.spec}")
    returns: list[float] = []
    lengths: list[int] = []
    try:
        obs, _ = envs.reset(seed=vector_env_seeds(seed, num_envs))
        state = policy.initial_state(num_envs, device)
        starts = np.ones(num_envs, dtype=bool)
        running = np.zeros(num_envs)
        length = np.zeros(num_envs, dtype=np.int64)
        # Each env slot runs at most its share of episodes, so the set of episodes does not depend on
        # which envs happen to finish first (unbiased towards short episodes).
        quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
        while len(returns) < episodes:
            check_finite("observation", obs, env_id, int(length.sum()))
            x = torch.as_tensor(obs_norm(obs, update=False), device=device)
            dist, _, state = policy.act(x, state, torch.as_tensor(starts, device=device))  # actor only
            action = policy.deterministic_action(dist) if deterministic else dist.sample()
            obs, reward, terminated, truncated, _ = envs.step(
                env_actions(action, spec, envs.single_action_space)
            )
            running += reward
            length += 1
            starts = np.logical_or(terminated, truncated)
            for i in np.flatnonzero(starts):
                if quota[i] > 0:
                    returns.append(float(running[i]))
                    lengths.append(int(length[i]))
                    quota[i] -= 1
            running[starts] = 0.0
            length[starts] = 0
    finally:
        envs.close()
    return {
        "env_id": env_id,
        "deterministic": deterministic,
        "seed": seed,
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "returns": returns,
        "lengths": lengths,
    }
