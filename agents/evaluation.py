"""The one episode runner every agent is evaluated with, and the one result schema.

`run_episodes(envs, actor, episodes, seed)` plays `episodes` whole episodes in a vector env (same-step
autoreset, from envs.vector): each tick `actor.act(obs, episode_starts)` gives the actions, and after the
env step `actor.observe(rewards, ended)` lets the actor update what it carries (a Decision agent's
return-to-go and timestep; its recurrent state is reset at the next tick's episode starts). Each env
slot runs a fixed quota of episodes (episodes / num_envs, spread evenly): taking the first N episodes to
finish would favour short (failed) episodes. Env seeds come from envs.seeding (disjoint per seed).

Result schema (`summarize`): returns, lengths, episodes, return_mean, return_std, length_mean,
normalized_scores / normalized_score_mean / normalized_score_std (None without reference scores),
env_steps, wall_time_s, seeds; callers add what they condition on (target_return, mode, deterministic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from recurrl.envs.seeding import vector_env_seeds


class Actor(Protocol):
    def act(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        """Actions for every env; obs [N, ...], episode_starts [N] (True: this obs begins an episode)."""
        ...

    def observe(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        """After the env step: rewards [N], ended [N] (terminated or truncated)."""
        ...


def check_episode_counts(episodes: int, num_envs: int) -> None:
    """Shared by the Decision and PPO evaluators: checked before they build any env, so a bad count fails
    at once with one message for both."""
    if episodes <= 0 or num_envs <= 0:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes}, {num_envs}")


def episode_quotas(episodes: int, num_envs: int) -> np.ndarray:
    return np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])


def run_episodes(
    envs: gym.vector.VectorEnv, actor: Actor, episodes: int, seed: int = 0, slots: Slots | None = None
) -> dict[str, Any]:
    """Play `episodes` episodes -> {"returns", "lengths", "env_steps", "wall_time_s", "seeds"}.

    `slots` (data-parallel evaluation): `envs` plays only these env slots of a run over `slots.total`
    slots, with their quotas and seeds; the result then also says when each episode ended ("order"),
    so `merge_slots` can put the processes' parts together as one process would have played them."""
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    n = envs.num_envs
    quota = episode_quotas(episodes, n)
    env_seeds = vector_env_seeds(seed, n)
    if slots is not None:
        quota = episode_quotas(episodes, slots.total)[slots.indices]
        env_seeds = [vector_env_seeds(seed, slots.total)[i] for i in slots.indices]
    order: list[tuple[int, int]] = []  # (tick, slot) of each finished episode
    start_time = time.perf_counter()
    obs, _ = envs.reset(seed=env_seeds)
    starts = np.ones(n, dtype=bool)
    running, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    env_steps = 0
    while (done < quota).any():
        obs, reward, terminated, truncated, _ = envs.step(actor.act(obs, starts))
        env_steps += n
        ended = np.logical_or(terminated, truncated)
        actor.observe(np.asarray(reward), ended)
        running += reward
        length += 1
        for i in np.flatnonzero(ended):
            if done[i] < quota[i]:
                returns.append(float(running[i]))
                lengths.append(int(length[i]))
                order.append((env_steps // n, i if slots is None else slots.indices[i]))
                done[i] += 1
        running[ended] = 0.0
        length[ended] = 0
        starts = ended
    result = {
        "returns": returns,
        "lengths": lengths,
        "env_steps": env_steps,
        "wall_time_s": time.perf_counter() - start_time,
        "seeds": [seed],
    }
    return result if slots is None else {**result, "order": order}


@dataclass(frozen=True)
class Slots:
    """The env slots one process of a data-parallel evaluation plays: rank, rank + world_size, ...
    of `total` (each keeps the quota and the seed it has in a one-process run)."""

    total: int
    rank: int = 0
    world_size: int = 1

    @property
    def indices(self) -> list[int]:
        return list(range(self.rank, self.total, self.world_size))


def merge_slots(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' parts of one evaluation -> the result one process would give (episodes in the
    order they ended; the parts ran side by side, so the wall time is the slowest part's)."""
    ended = sorted(
        (when, returned, length)
        for part in parts
        for when, returned, length in zip(part["order"], part["returns"], part["lengths"], strict=True)
    )
    return {
        **{k: v for k, v in parts[0].items() if k not in ("returns", "lengths", "env_steps", "wall_time_s", "order")},
        "returns": [returned for _, returned, _ in ended],
        "lengths": [length for _, _, length in ended],
        "env_steps": sum(part["env_steps"] for part in parts),
        "wall_time_s": max(part["wall_time_s"] for part in parts),
    }


Normalizer = Callable[[np.ndarray], "np.ndarray | None"]


def summarize(result: dict[str, Any], normalize: Normalizer | None = None) -> dict[str, Any]:
    """Add the schema's statistics to a run's (or a pooled) returns and lengths."""
    returns = np.asarray(result["returns"], np.float64)
    normalized = normalize(returns) if normalize is not None else None
    return {
        **result,
        "episodes": int(len(returns)),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(np.mean(result["lengths"])),
        "normalized_scores": None if normalized is None else normalized.tolist(),
        "normalized_score_mean": None if normalized is None else float(normalized.mean()),
        "normalized_score_std": None if normalized is None else float(normalized.std()),
    }


def pool(runs: list[dict[str, Any]], normalize: Normalizer | None = None) -> dict[str, Any]:
    """Runs of the same policy over several evaluation seeds -> one summary over all their episodes."""
    keep = {k: v for k, v in runs[0].items() if k not in ("returns", "lengths", "env_steps", "wall_time_s", "seeds")}
    pooled = {
        **keep,
        "returns": [r for run in runs for r in run["returns"]],
        "lengths": [n for run in runs for n in run["lengths"]],
        "env_steps": sum(run["env_steps"] for run in runs),
        "wall_time_s": sum(run["wall_time_s"] for run in runs),
        "seeds": [s for run in runs for s in run["seeds"]],
        "wall_time_s_per_seed": [run["wall_time_s"] for run in runs],
    }
    return summarize(pooled, normalize)


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Several checkpoints (e.g. seeds of one config) -> mean over all episodes, and the spread of the
    per-checkpoint means ("over checkpoints")."""
    means = np.array([s["return_mean"] for s in summaries])
    pooled = np.array([x for s in summaries for x in s["returns"]])
    row = {
        "checkpoints": len(summaries),
        "return_mean": float(pooled.mean()),
        "return_std_episodes": float(pooled.std()),
        "return_std_checkpoints": float(means.std()),
    }
    if all(s.get("normalized_score_mean") is not None for s in summaries):
        norm = np.array([s["normalized_score_mean"] for s in summaries])
        pooled_norm = np.array([x for s in summaries for x in s["normalized_scores"]])
        row.update(
            normalized_score_mean=float(pooled_norm.mean()),
            normalized_score_std_episodes=float(pooled_norm.std()),
            normalized_score_std_checkpoints=float(norm.std()),
        )
    return row


def fmt(value: float, scale: float | None = None) -> str:
    """A number with the decimals its scale needs: 1305.6, 41.5, 9.5, 0.21, -0.0032."""
    scale = abs(value) if scale is None else abs(scale)
    decimals = 1 if scale == 0 or not math.isfinite(scale) else min(6, max(1, 1 - math.floor(math.log10(scale))))
    return f"{value:.{decimals}f}"


def mean_std(mean: float, std: float) -> str:
    scale = max(abs(mean), std)
    return f"{fmt(mean, scale)} +- {fmt(std, scale)}"


def format_summary(summary: dict[str, Any]) -> str:
    """One line: [target R: ]return m +- s[, normalized score m +- s] (N episodes, eval seed(s) S, T s)."""
    text = f"target {summary['target_return']:g}: " if summary.get("target_return") is not None else ""
    text += f"return {mean_std(summary['return_mean'], summary['return_std'])}"
    if summary.get("normalized_score_mean") is not None:
        text += f", normalized score {mean_std(summary['normalized_score_mean'], summary['normalized_score_std'])}"
    seeds = summary.get("seeds") or []
    label = f", eval seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}" if seeds else ""
    return text + f" ({summary['episodes']} episodes{label}, {summary['wall_time_s']:.1f} s)"
