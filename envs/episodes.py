"""The in-memory form of an offline dataset: episodes plus statistics, whatever the file format.

Minari stores T+1 observations per episode (the last one follows the last action); here
`observations` holds the T observations at which actions were taken and `final_observation` the
extra one, so every per-step array has the same length T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np


@dataclass
class Episode:
    observations: np.ndarray  # [T, *obs_shape] float32
    actions: np.ndarray  # [T, act_dim] float32 (continuous) or [T] int64 (discrete)
    rewards: np.ndarray  # [T] float32
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool
    final_observation: np.ndarray | None = None  # [*obs_shape]: the observation after the last action

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))


@dataclass
class DatasetStats:
    obs_mean: np.ndarray  # [*obs_shape]
    obs_std: np.ndarray  # [*obs_shape], floored at 1e-6
    returns: np.ndarray  # [num_episodes]
    lengths: np.ndarray  # [num_episodes]

    @classmethod
    def from_episodes(cls, episodes: list[Episode]) -> DatasetStats:
        if not episodes:
            raise ValueError("dataset has no episodes")
        obs = np.concatenate([e.observations for e in episodes], axis=0).astype(np.float64)
        return cls(
            obs_mean=obs.mean(axis=0).astype(np.float32),
            obs_std=np.maximum(obs.std(axis=0), 1e-6).astype(np.float32),
            returns=np.array([e.episode_return for e in episodes], dtype=np.float64),
            lengths=np.array([len(e) for e in episodes], dtype=np.int64),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "obs_mean": self.obs_mean.tolist(),
            "obs_std": self.obs_std.tolist(),
            "num_episodes": int(len(self.returns)),
            "num_steps": int(self.lengths.sum()),
            "return_min": float(self.returns.min()),
            "return_mean": float(self.returns.mean()),
            "return_max": float(self.returns.max()),
        }


@dataclass
class OfflineDataset:
    """Episodes of one dataset and what is needed to evaluate a policy trained on it."""

    name: str  # dataset id or path it was loaded from
    episodes: list[Episode]
    env_id: str  # gymnasium id of the evaluation env, e.g. "Hopper-v5"
    observation_space: gym.Space
    action_space: gym.Space
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    ref_min_score: float | None = None
    ref_max_score: float | None = None

    @cached_property
    def stats(self) -> DatasetStats:
        return DatasetStats.from_episodes(self.episodes)

    @property
    def num_steps(self) -> int:
        return int(sum(len(e) for e in self.episodes))

    def make_env(self, **kwargs: Any) -> gym.Env:
        """A fresh evaluation env matching this dataset."""
        return gym.make(self.env_id, **{**self.env_kwargs, **kwargs})

    def normalized_score(self, returns: float | np.ndarray) -> float | np.ndarray:
        """100 * (R - min) / (max - min) with this dataset's reference returns (see envs.scores)."""
        from .scores import normalized_score

        return normalized_score(
            returns, self.ref_min_score, self.ref_max_score, name=f"dataset {self.name!r}"
        )


def random_action_dataset(
    env_id: str,
    episodes: int,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    ref_scores: tuple[float, float] | None = None,
) -> OfflineDataset:
    """`episodes` whole episodes of uniformly random actions in `env_id`: a small dataset that needs no
    files and no Minari (tests, and the GPU check on machines without MuJoCo)."""
    env_kwargs = env_kwargs or {}
    env = gym.make(env_id, **env_kwargs)
    env.action_space.seed(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        rows: dict[str, list[Any]] = {"o": [], "a": [], "r": [], "te": [], "tr": []}
        done = False
        while not done:
            action = env.action_space.sample()
            rows["o"].append(obs)
            rows["a"].append(action)
            obs, reward, term, trunc, _ = env.step(action)
            rows["r"].append(reward)
            rows["te"].append(term)
            rows["tr"].append(trunc)
            done = term or trunc
        observations, actions = np.array(rows["o"], np.float32), np.array(rows["a"])
        rewards, final = np.array(rows["r"], np.float32), np.asarray(obs, np.float32)
        out.append(Episode(observations, actions, rewards, np.array(rows["te"]), np.array(rows["tr"]), final))
    low, high = ref_scores if ref_scores is not None else (None, None)
    env.close()
    return OfflineDataset(
        f"random-{env_id}", out, env_id, env.observation_space, env.action_space, env_kwargs, low, high
    )
