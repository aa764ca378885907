"""Rollout storage and GAE. Everything is stored time-major `[T, N]` as it is collected and handed to
the update env-major `[N, T]`: one training sequence per env, with its initial policy state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit
from torch import Tensor

from recurrl.policies.backbones.base import State


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


@njit(cache=True)
def _gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    last_value: np.ndarray,
    gamma: float,
    gae_lambda: float,
    out: np.ndarray,
) -> None:
    """GAE(lambda) over [T, N] arrays, backwards in time, into `out`."""
    length, num_envs = rewards.shape
    for n in range(num_envs):
        next_value, last_gae = last_value[n], 0.0
        for t in range(length - 1, -1, -1):
            not_done = 1.0 - dones[t, n]
            delta = rewards[t, n] + gamma * next_value * not_done - values[t, n]
            last_gae = delta + gamma * gae_lambda * not_done * last_gae
            out[t, n] = last_gae
            next_value = values[t, n]


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
        # One compiled pass on the CPU (a torch loop over T costs ~5 ms per rollout in small ops).
        advantages = np.empty(tuple(self.rewards.shape), dtype=np.float32)
        _gae(
            *(x.detach().cpu().numpy() for x in (self.rewards, self.values, self.dones, last_value)),
            gamma,
            gae_lambda,
            advantages,
        )
        advantages_t = torch.from_numpy(advantages).to(self.rewards.device)
        return advantages_t, advantages_t + self.values

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
