"""Trajectory segments for Decision-model training, sampled from an `OfflineDataset`.

As in Decision Transformer: an episode is drawn with probability proportional to its length, a
start step uniformly inside it, and the K steps from there form a segment; segments that run past
the episode's end are padded on the right and masked out of the loss (causal models never see the
padding when predicting real steps). With `burn_in > 0` up to that many steps before the segment
are prepended (left-padded where the episode starts later, with `episode_starts` set at the first
real step), so a recurrent backbone enters the segment with a warmed-up state; they carry no loss.

All episodes live in flat arrays, and a batch is one vectorized gather, so sampling costs little
next to a training step. The sampler's numpy Generator state is part of checkpoints (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recurrl.envs.episodes import OfflineDataset


@dataclass
class Batch:
    returns_to_go: torch.Tensor  # [B, L, 1] raw returns-to-go
    states: torch.Tensor  # [B, L, S] raw observations
    actions: torch.Tensor  # [B, L, A] raw env actions (float) or [B, L] indices (int64)
    timesteps: torch.Tensor  # [B, L] int64, step index inside the episode
    episode_starts: torch.Tensor  # [B, L] bool: first real step of each row (after left padding)
    loss_mask: torch.Tensor  # [B, L] bool: real steps of the segment proper (not burn-in, not padding)

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: v.to(device, non_blocking=True) for k, v in self.__dict__.items()})


class SegmentSampler:
    """Random segments of `context_length` steps (plus an optional burn-in prefix) from a dataset."""

    def __init__(self, dataset: OfflineDataset, context_length: int, burn_in: int = 0, seed: int = 0) -> None:
        if context_length <= 0:
            raise ValueError(f"context_length must be positive, got {context_length}")
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        episodes = [e for e in dataset.episodes if len(e) > 0]
        if not episodes:
            raise ValueError(f"dataset {dataset.name!r} has no non-empty episodes to train on")
        self.context_length, self.burn_in = context_length, burn_in
        self.discrete = episodes[0].actions.ndim == 1
        self.lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.observations = np.concatenate([e.observations.reshape(len(e), -1) for e in episodes]).astype(
            np.float32
        )
        actions = np.concatenate([e.actions for e in episodes])
        self.actions = (
            actions.astype(np.int64)
            if self.discrete
            else actions.reshape(len(actions), -1).astype(np.float32)
        )
        # Returns-to-go (undiscounted, as in DT): suffix sums of each episode's rewards.
        self.returns_to_go = np.concatenate(
            [np.cumsum(e.rewards[::-1].astype(np.float64))[::-1] for e in episodes]
        ).astype(np.float32)
        self.timesteps = np.concatenate([np.arange(len(e), dtype=np.int64) for e in episodes])
        self.episode_probs = self.lengths / self.lengths.sum()
        self.rng = np.random.default_rng(seed)

    @property
    def total_length(self) -> int:
        return self.burn_in + self.context_length

    def sample(self, batch_size: int) -> Batch:
        """A batch of `batch_size` segments, each `burn_in + context_length` steps long."""
        return self.segments(*self._draw(batch_size))

    def sample_rows(self, batch_size: int, rows: slice) -> tuple[Batch, int]:
        """Rows `rows` of the batch `sample(batch_size)` would give (same draws, same RNG use), and the
        number of loss steps in the whole batch: a data-parallel rank's share and its loss normalizer."""
        episode, start = self._draw(batch_size)
        # A segment's loss steps: from its start to the episode's end, at most context_length.
        loss_steps = int(np.minimum(self.context_length, self.lengths[episode] - start).sum())
        return self.segments(episode[rows], start[rows]), loss_steps

    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        episode = self.rng.choice(len(self.lengths), size=batch_size, p=self.episode_probs)
        # Each segment starts uniformly in [0, length) of its episode.
        start = (self.rng.random(batch_size) * self.lengths[episode]).astype(np.int64)
        return episode, start

    def segments(self, episode: np.ndarray, start: np.ndarray) -> Batch:
        """The segments of episodes `episode` [B] (indices) starting at steps `start` [B], as in `sample`."""
        batch_size = len(episode)
        length = self.lengths[episode]
        # Step offsets relative to the segment start: burn-in before it, then the segment.
        rel = np.arange(-self.burn_in, self.context_length, dtype=np.int64)[None, :]  # [1, L]
        pos = start[:, None] + rel  # [B, L] position inside the episode
        real = (pos >= 0) & (pos < length[:, None])
        flat = self.offsets[episode][:, None] + np.clip(pos, 0, length[:, None] - 1)
        first_real = np.argmax(real, axis=1)  # the segment's start is always real, so this exists
        starts = np.zeros_like(real)
        starts[np.arange(batch_size), first_real] = True
        loss_mask = real & (rel >= 0)
        zero = ~real
        states = np.where(zero[..., None], 0.0, self.observations[flat]).astype(np.float32)
        if self.discrete:
            actions = np.where(zero, 0, self.actions[flat])
        else:
            actions = np.where(zero[..., None], 0.0, self.actions[flat]).astype(np.float32)
        rtg = np.where(zero, 0.0, self.returns_to_go[flat]).astype(np.float32)[..., None]
        timesteps = np.where(zero, 0, self.timesteps[flat])
        return Batch(
            returns_to_go=torch.from_numpy(rtg),
            states=torch.from_numpy(states),
            actions=torch.from_numpy(actions),
            timesteps=torch.from_numpy(timesteps),
            episode_starts=torch.from_numpy(starts),
            loss_mask=torch.from_numpy(loss_mask),
        )

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
