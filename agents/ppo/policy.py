"""The PPO policy as configured, and its actions as the env takes them (shared by the trainer and
the evaluation, which must not import each other)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from torch import Tensor

from recurrl.agents.ppo.config import PPOConfig
from recurrl.policies.actor_critic import ActorCritic, SpaceSpec

CHECKPOINT_KIND = "ppo"


def build_policy(config: PPOConfig, spec: SpaceSpec) -> ActorCritic:
    options = dict(config.backbone_options)
    return ActorCritic(
        spec,
        backbone=config.backbone,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        shared=config.shared_backbone,
        head_hidden=config.head_hidden,
        backbone_options=options,
        log_std_init=config.log_std_init,
    )


def env_actions(actions: Tensor, spec: SpaceSpec, action_space: gym.Space) -> np.ndarray:
    """Policy actions -> what the vector env accepts (Gaussian samples are clipped to the Box bounds)."""
    actions_np = actions.cpu().numpy()
    if spec.action_kind == "discrete":
        return actions_np.astype(np.int64)
    return np.clip(actions_np, action_space.low, action_space.high)
