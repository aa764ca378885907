"""Rollout storage and GAE. Everything is stored time-major `[T, N]` as it is collected and handed to
the update env-major `[N, T]`: one training sequence per env, with its initial policy state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policies.backbones.base import State


@dataclass
class RolloutBatch:
    """Whole per-env sequences for the PPO update (N envs, T steps)."""

    obs: Tensor  # [N, T, obs_dim]
    actions: Tensor  # [N, T] (discrete) or [N, T, act_dim] (continuous)
    log_probs: Tensor  # [N, T]
    values: Tensor  # [N, T]
    advantages: Tensor  # [N, T]
    returns: Tensor  # [N, T]
    episode_starts: Tensor  # [N, T] bool
    initial_state: State  # tensors [N, ...]: the policy state before step 0 of each sequence

    def select(self, envs: Tensor) -> RolloutBatch:
        """The sequences of the envs in `envs` (a minibatch of whole sequences)."""
        return RolloutBatch(
            self.obs[envs],
            self.actions[envs],
            self.log_probs[envs],
            self.values[envs],
            self.advantages[envs],
            self.returns[envs],
            self.episode_starts[envs],
            tuple(s[envs] for s in self.initial_state),
        )


class RolloutBuffer:
    def __init__(
        self, num_steps: int, num_envs: int, obs_dim: int, action_shape: tuple[int, ...], device: torch.device
    ):
        shape = (num_steps, num_envs)
        self.obs = torch.zeros((*shape, obs_dim), device=device)
        self.actions = torch.zeros((*shape, *action_shape), device=device)
        self.log_probs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(
            shape, device=device
        )  # the episode ended after this step (terminated or truncated)
        self.episode_starts = torch.zeros(shape, dtype=torch.bool, device=device)
        self.initial_state: State = ()

    def compute_returns(self, last_value: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        """GAE(lambda). Truncated steps already carry gamma * V(final_obs) in their reward, so every
        ended episode is cut here (done = 1) and truncation is still bootstrapped correctly.

        last_value: [N], the value of the observation after the last step -> advantages, returns [T, N].
        """
        num_steps = self.rewards.shape[0]
        advantages = torch.zeros_like(self.rewards)
        last_gae = torch.zeros_like(last_value)
        next_value = last_value
        for t in reversed(range(num_steps)):
            not_done = 1.0 - self.dones[t]
            delta = self.rewards[t] + gamma * next_value * not_done - self.values[t]
            last_gae = delta + gamma * gae_lambda * not_done * last_gae
            advantages[t] = last_gae
            next_value = self.values[t]
        return advantages, advantages + self.values

    def batch(self, advantages: Tensor, returns: Tensor) -> RolloutBatch:
        def env_major(x: Tensor) -> Tensor:
            return x.transpose(0, 1).contiguous()

        return RolloutBatch(
            env_major(self.obs),
            env_major(self.actions),
            env_major(self.log_probs),
            env_major(self.values),
            env_major(advantages),
            env_major(returns),
            env_major(self.episode_starts),
            self.initial_state,
        )
