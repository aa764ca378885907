"""Evaluate a PPO checkpoint with the one episode runner (agents.evaluation): `policy.act` every tick,
state carried and reset per env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurrl.agents import evaluation
from recurrl.agents.checkpoint import CheckpointError, load_checkpoint, load_weights_strict
from recurrl.agents.config import from_dict
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.normalization import ObsNormalizer
from recurrl.agents.ppo.policy import CHECKPOINT_KIND, build_policy, env_actions
from recurrl.envs.packages import import_env_packages
from recurrl.envs.vector import check_finite, make_vector_env
from recurrl.policies.actor_critic import ActorCritic, SpaceSpec


def load_ppo_checkpoint(
    path: str | Path, device: str = "cpu"
) -> tuple[ActorCritic, PPOConfig, ObsNormalizer]:
    """(policy in eval mode, its config, its frozen observation normalizer)."""
    model, meta, _ = load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint, not a PPO one")
    config = from_dict(PPOConfig, meta["config"])
    # The packages that registered the env, so evaluation and `recurrl.load` can make it again.
    import_env_packages(config.env_packages, origin=f"{path}: env package")
    spec = SpaceSpec(**meta["spaces"])
    policy = build_policy(config, spec)
    load_weights_strict(policy, model, str(path))
    return policy.to(device).eval(), config, ObsNormalizer.from_dict(meta["obs_norm"])


class PPOActor:
    """A PPO policy as an `agents.evaluation.Actor`: the actor's state carried per env (reset at episode
    starts), observations normalized by the frozen training statistics."""

    def __init__(
        self,
        policy: ActorCritic,
        obs_norm: ObsNormalizer,
        envs: gym.vector.VectorEnv,
        env_id: str,
        deterministic: bool,
        device: str | torch.device,
    ) -> None:
        self.policy, self.obs_norm, self.deterministic, self.device = policy, obs_norm, deterministic, device
        self.action_space, self.env_id = envs.single_action_space, env_id
        self.state = policy.initial_state(envs.num_envs, device)
        self.ticks = 0

    def act(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        check_finite("observation", obs, self.env_id, self.ticks)
        x = torch.as_tensor(self.obs_norm(obs, update=False), device=self.device)
        starts = torch.as_tensor(episode_starts, device=self.device)
        dist, _, self.state = self.policy.act(x, self.state, starts)  # actor only
        action = self.policy.deterministic_action(dist) if self.deterministic else dist.sample()
        self.ticks += len(obs)
        return env_actions(action, self.policy.spec, self.action_space)

    def observe(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        pass  # the state is reset through episode_starts at the next tick


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
    updating it -> agents.evaluation's result schema plus env_id and deterministic. Used by `recurrl
    evaluate` and by the trainer's periodic evaluation (`eval_every`)."""
    evaluation.check_episode_counts(episodes, num_envs)
    envs = make_vector_env(env_id, min(num_envs, episodes), "sync", flatten_obs=True)
    try:
        spec = SpaceSpec.from_spaces(envs.single_observation_space, envs.single_action_space)
        if spec != policy.spec:
            raise ValueError(f"{env_id!r} has spaces {spec}, but the checkpoint was trained on {policy.spec}")
        actor = PPOActor(policy, obs_norm, envs, env_id, deterministic, device)
        result = evaluation.run_episodes(envs, actor, episodes, seed)
    finally:
        envs.close()
    return evaluation.summarize({"env_id": env_id, "deterministic": deterministic, **result})


def evaluate_ppo_checkpoint(
    path: str | Path,
    episodes: int = 10,
    seeds: tuple[int, ...] = (0,),
    num_envs: int = 4,
    device: str = "cpu",
    deterministic: bool = True,
    env_id: str | None = None,
) -> dict[str, Any]:
    """A PPO checkpoint over `episodes` full episodes per evaluation seed, pooled (one result schema)."""
    policy, config, obs_norm = load_ppo_checkpoint(path, device)
    env = env_id or config.env_id
    runs = [run_episodes(policy, obs_norm, env, episodes, s, num_envs, device, deterministic) for s in seeds]
    return {"kind": CHECKPOINT_KIND, "checkpoint": str(path), "backbone": config.backbone, **evaluation.pool(runs)}
