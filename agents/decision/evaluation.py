"""Evaluate a DecisionModel in N gymnasium envs at once.

Stateful mode (the point of the project): one batched `model.step` per env tick, the backbone state
carried per env through its whole episode and reset (via `episode_starts`) when that env's episode
starts. The Transformer backbone keeps a KV cache inside its context window.

Window mode (classic DT): every tick re-encodes each env's last K timesteps with `model.forward`,
left-padded, with `episode_starts` marking the first real step so padding is forgotten.

The vector env uses gymnasium's SAME_STEP autoreset: the step that ends an episode already returns
the first observation of the next one (the final observation goes to `info`), so the model's input
at the next tick is always the observation it should act on, and the env's row is marked as an
episode start. Each env runs a fixed quota of episodes (episodes / num_envs, spread evenly): taking
the first N episodes to finish would favour short (failed) episodes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from recurrl.envs.seeding import vector_env_seeds
from recurrl.policies.decision import DecisionModel

from .model_io import EnvSpec

Mode = Literal["stateful", "window"]


def make_vector_env(spec: EnvSpec, num_envs: int) -> gym.vector.VectorEnv:
    def make() -> gym.Env:
        return gym.make(spec.env_id, **spec.env_kwargs)

    envs = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    spec.check_env(envs)
    return envs


@torch.inference_mode()
def run_episodes(
    model: DecisionModel,
    spec: EnvSpec,
    target_return: float,
    episodes: int,
    num_envs: int = 10,
    seed: int = 0,
    mode: Mode = "stateful",
    context_length: int = 20,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Run `episodes` episodes conditioned on `target_return` -> returns, lengths, wall time."""
    if mode not in ("stateful", "window"):
        raise ValueError(f"evaluation mode must be 'stateful' or 'window', got {mode!r}")
    if episodes <= 0 or num_envs <= 0:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes}, {num_envs}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = min(num_envs, episodes)
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    envs = make_vector_env(spec, n)
    start_time = time.perf_counter()
    try:
        obs, _ = envs.reset(seed=vector_env_seeds(seed, n))
        policy = (
            _StatefulPolicy(model, n, device)
            if mode == "stateful"
            else _WindowPolicy(model, n, context_length, device)
        )
        rtg = np.full(n, float(target_return), dtype=np.float32)
        timesteps = np.zeros(n, dtype=np.int64)
        starts = np.ones(n, dtype=bool)
        done_count = np.zeros(n, dtype=np.int64)
        returns: list[float] = []
        lengths: list[int] = []
        env_steps = 0
        while (done_count < quota).any():
            action = policy.act(rtg, np.asarray(obs, np.float32).reshape(n, -1), timesteps, starts)
            obs, reward, terminated, truncated, info = envs.step(action)
            env_steps += n
            ended = np.logical_or(terminated, truncated)
            rtg = rtg - reward.astype(np.float32)  # DT: condition on the return still to collect
            timesteps = timesteps + 1
            if ended.any():
                finished = info["_episode"] & ended
                for i in np.flatnonzero(finished):
                    if done_count[i] < quota[i]:
                        returns.append(float(info["episode"]["r"][i]))
                        lengths.append(int(info["episode"]["l"][i]))
                        done_count[i] += 1
                rtg[ended] = target_return
                timesteps[ended] = 0
            starts = ended
    finally:
        envs.close()
        model.train(was_training)
    return {
        "target_return": float(target_return),
        "returns": returns,
        "lengths": lengths,
        "env_steps": env_steps,
        "wall_time_s": time.perf_counter() - start_time,
    }


class _StatefulPolicy:
    """Batched `model.step` with the backbone state carried per env."""

    def __init__(self, model: DecisionModel, n: int, device: torch.device) -> None:
        self.model, self.device = model, device
        self.state = model.initial_state(n, device)
        shape = (n,) if model.discrete else (n, model.act_dim)
        self.prev = torch.zeros(shape, dtype=torch.long if model.discrete else torch.float32, device=device)

    def act(self, rtg: np.ndarray, obs: np.ndarray, timesteps: np.ndarray, starts: np.ndarray) -> np.ndarray:
        d = self.device
        pred, self.state = self.model.step(
            torch.from_numpy(rtg).to(d).unsqueeze(-1),
            torch.from_numpy(obs).to(d),
            self.prev,
            torch.from_numpy(timesteps).to(d),
            self.state,
            torch.from_numpy(starts).to(d),
        )
        self.prev = pred.argmax(-1) if self.model.discrete else pred.float()
        return self.model.predictions_to_actions(pred).cpu().numpy()


class _WindowPolicy:
    """Classic DT: re-encode each env's last K timesteps with `model.forward` at every tick."""

    def __init__(self, model: DecisionModel, n: int, context_length: int, device: torch.device) -> None:
        self.model, self.k, self.device = model, context_length, device
        self.rtg = torch.zeros(n, context_length, 1, device=device)
        self.obs = torch.zeros(n, context_length, model.state_dim, device=device)
        act_shape = (n, context_length) if model.discrete else (n, context_length, model.act_dim)
        self.actions = torch.zeros(
            act_shape, dtype=torch.long if model.discrete else torch.float32, device=device
        )
        self.timesteps = torch.zeros(n, context_length, dtype=torch.long, device=device)
        self.valid = torch.zeros(n, dtype=torch.long, device=device)  # real steps in each window

    def act(self, rtg: np.ndarray, obs: np.ndarray, timesteps: np.ndarray, starts: np.ndarray) -> np.ndarray:
        d = self.device
        starts_t = torch.from_numpy(starts).to(d)
        self.valid = torch.where(starts_t, torch.zeros_like(self.valid), self.valid)
        # Shift every window left by one step and write this tick at the end (action still unknown).
        for buf in (self.rtg, self.obs, self.actions, self.timesteps):
            buf.copy_(torch.roll(buf, shifts=-1, dims=1))
        self.rtg[:, -1, 0] = torch.from_numpy(rtg).to(d)
        self.obs[:, -1] = torch.from_numpy(obs).to(d)
        self.actions[:, -1] = 0
        self.timesteps[:, -1] = torch.from_numpy(timesteps).to(d)
        self.valid = (self.valid + 1).clamp(max=self.k)
        first = self.k - self.valid  # index of the first real step of each window
        episode_starts = torch.arange(self.k, device=d)[None, :] == first[:, None]
        pred, _ = self.model(self.rtg, self.obs, self.actions, self.timesteps, episode_starts)
        last = pred[:, -1]
        self.actions[:, -1] = last.argmax(-1) if self.model.discrete else last.float()
        return self.model.predictions_to_actions(last).cpu().numpy()


def evaluate_model(
    model: DecisionModel,
    spec: EnvSpec,
    target_returns: list[float],
    episodes: int,
    num_envs: int = 10,
    seed: int = 0,
    mode: Mode = "stateful",
    context_length: int = 20,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Evaluate for each target return -> {"targets": [summary per target], "score": ...}.

    `score` (used to pick the best checkpoint) is the best mean normalized score over the targets,
    or the best mean return when the dataset has no reference scores.
    """
    per_target = []
    for target in target_returns:
        result = run_episodes(model, spec, target, episodes, num_envs, seed, mode, context_length, device)
        per_target.append(summarize(result, spec))
    key = "normalized_score_mean" if per_target[0]["normalized_score_mean"] is not None else "return_mean"
    return {"mode": mode, "targets": per_target, "score": max(t[key] for t in per_target)}


def summarize(result: dict[str, Any], spec: EnvSpec) -> dict[str, Any]:
    returns = np.asarray(result["returns"], np.float64)
    normalized = spec.normalized(returns)
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


def format_summary(summary: dict[str, Any]) -> str:
    text = f"target {summary['target_return']:g}: return {summary['return_mean']:.1f} +- {summary['return_std']:.1f}"
    if summary["normalized_score_mean"] is not None:
        text += f", normalized score {summary['normalized_score_mean']:.1f} +- {summary['normalized_score_std']:.1f}"
    return text + f" ({summary['episodes']} episodes, {summary['wall_time_s']:.1f} s)"
