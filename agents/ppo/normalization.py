"""Running statistics for observation and reward normalization (saved with the checkpoint as JSON)."""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMeanStd:
    """Mean and variance over all samples seen, merged batch by batch (Chan et al. parallel update)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        """batch: [N, *shape]."""
        batch = np.asarray(batch, dtype=np.float64)
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, x: np.ndarray, clip: float) -> np.ndarray:
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningMeanStd:
        rms = cls()
        rms.mean = np.asarray(data["mean"], dtype=np.float64)
        rms.var = np.asarray(data["var"], dtype=np.float64)
        rms.count = float(data["count"])
        return rms


class ObsNormalizer:
    """Observation normalization that can be frozen (evaluation) or turned off (identity)."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float) -> None:
        self.enabled = enabled
        self.clip = clip
        self.rms = RunningMeanStd(shape)

    def __call__(self, obs: np.ndarray, update: bool) -> np.ndarray:
        """obs: [N, obs_dim] raw -> [N, obs_dim] float32 normalized (raw when disabled)."""
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        if update:
            self.rms.update(obs)
        return self.rms.normalize(obs, self.clip)

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "clip": self.clip, **self.rms.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObsNormalizer:
        norm = cls(np.asarray(data["mean"]).shape, bool(data["enabled"]), float(data["clip"]))
        norm.rms = RunningMeanStd.from_dict(data)
        return norm


class RewardScaler:
    """Divide rewards by the running std of the discounted return (as SB3's VecNormalize does)."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones: [N] -> scaled rewards [N] (unchanged when disabled)."""
        if not self.enabled:
            return rewards.astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return self.rms.to_dict()

    def load_dict(self, data: dict[str, Any]) -> None:
        self.rms = RunningMeanStd.from_dict(data)
