"""Evaluate a DecisionModel in N gymnasium envs at once (the episode runner is agents.evaluation's).

Stateful mode (the point of the project): one batched `model.step` per env tick, the backbone state
carried per env through its whole episode and reset (via `episode_starts`) when that env's episode
starts. The Transformer backbone keeps a KV cache inside its context window.

Window mode (classic DT): every tick re-encodes each env's last K timesteps with `model.forward`,
left-padded, with `episode_starts` marking the first real step so padding is forgotten.

Both condition on the return still to collect (DT): the target minus the rewards so far, and on the
timestep within the episode; `DecisionActor` carries both per env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recurrl.agents import evaluation
from recurrl.agents.distributed import Distributed
from recurrl.envs.vector import make_vector_env
from recurrl.policies.decision import DecisionModel

from .model_io import EnvSpec, env_spec_from_meta, load_decision_checkpoint

Mode = Literal["stateful", "window"]


class DecisionActor:
    """The Decision agent as an `agents.evaluation.Actor`: return-to-go and timestep per env, and the
    stateful (`model.step`, state carried) or window (`model.forward` over the last K steps) policy."""

    def __init__(
        self, model: DecisionModel, n: int, target_return: float, mode: Mode, context_length: int, device: torch.device
    ) -> None:
        self.model, self.target = model, float(target_return)
        self.rtg = np.full(n, self.target, dtype=np.float32)
        self.timesteps = np.zeros(n, dtype=np.int64)
        self.policy = (
            _StatefulPolicy(model, n, device) if mode == "stateful" else _WindowPolicy(model, n, context_length, device)
        )

    def act(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(len(self.rtg), -1)
        return self.policy.act(self.rtg, obs, self.timesteps, episode_starts)

    def observe(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        self.rtg = self.rtg - rewards.astype(np.float32)  # DT: condition on the return still to collect
        self.timesteps = self.timesteps + 1
        self.rtg[ended] = self.target
        self.timesteps[ended] = 0


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
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run `episodes` episodes conditioned on `target_return` -> returns, lengths, wall time.
    `shard` = (rank, world_size): play only that process's env slots (agents.evaluation.Slots)."""
    if mode not in ("stateful", "window"):
        raise ValueError(f"evaluation mode must be 'stateful' or 'window', got {mode!r}")
    evaluation.check_episode_counts(episodes, num_envs)
    n = min(num_envs, episodes)
    slots = None if shard is None else evaluation.Slots(n, *shard)
    if slots is not None:
        n = len(slots.indices)
        if n == 0:  # more processes than env slots: this one has nothing to play
            empty = {"returns": [], "lengths": [], "order": [], "env_steps": 0, "wall_time_s": 0.0}
            return {"target_return": float(target_return), **empty, "seeds": [seed]}
    was_training = model.training
    model.eval()
    envs = make_vector_env(spec.env_id, n, env_kwargs=spec.env_kwargs)
    try:
        spec.check_env(envs)
        actor = DecisionActor(model, n, target_return, mode, context_length, torch.device(device))
        result = evaluation.run_episodes(envs, actor, episodes, seed, slots)
    finally:
        envs.close()
        model.train(was_training)
    return {"target_return": float(target_return), **result}


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
    dist: Distributed | None = None,
) -> dict[str, Any]:
    """Evaluate for each target return -> {"targets": [summary per target], "score": ...}.

    `score` (used to pick the best checkpoint) is the best mean normalized score over the targets,
    or the best mean return when the dataset has no reference scores. With `dist` (data-parallel), each
    process plays its share of the env slots and every process gets the whole result.
    """
    per_target = []
    for target in target_returns:
        if dist is None or not dist.enabled:
            result = run_episodes(model, spec, target, episodes, num_envs, seed, mode, context_length, device)
        else:
            shard = (dist.rank, dist.world_size)
            part = run_episodes(model, spec, target, episodes, num_envs, seed, mode, context_length, device, shard)
            result = evaluation.merge_slots(dist.all_gather(part, "gathering the evaluation episodes"))
        per_target.append(summarize(result, spec))
    key = "normalized_score_mean" if per_target[0]["normalized_score_mean"] is not None else "return_mean"
    return {"mode": mode, "targets": per_target, "score": max(t[key] for t in per_target)}


def summarize(result: dict[str, Any], spec: EnvSpec) -> dict[str, Any]:
    return evaluation.summarize(result, spec.normalized)


def evaluate_checkpoint(
    path: str | Path,
    target_returns: list[float] | None = None,
    modes: tuple[Mode, ...] = ("stateful",),
    episodes: int = 10,
    num_envs: int = 10,
    seeds: tuple[int, ...] = (0,),
    context_length: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """A Decision checkpoint, per mode and target return, pooled over the evaluation seeds."""
    model, meta = load_decision_checkpoint(path, device)
    spec = env_spec_from_meta(meta)
    config = meta["config"]
    targets = target_returns or config["eval"]["target_returns"]
    k = context_length or config["context_length"]
    out: dict[str, Any] = {
        "kind": "decision",
        "checkpoint": str(path),
        "step": meta["step"],
        "dataset": meta.get("dataset"),
        "dataset_stats": meta.get("dataset_stats"),
        "env_id": spec.env_id,
        "modes": {},
        "num_parameters": model.num_parameters(),
    }
    for mode in modes:
        out["modes"][mode] = [
            evaluation.pool(
                [run_episodes(model, spec, t, episodes, num_envs, s, mode, k, device) for s in seeds], spec.normalized
            )
            for t in targets
        ]
    return out


def aggregate_checkpoints(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across Decision checkpoints (e.g. seeds of one config): one row per (mode, target return)."""
    keys = sorted({(m, t["target_return"]) for r in results for m, ts in r["modes"].items() for t in ts})
    rows = []
    for mode, target in keys:
        summaries = [t for r in results for t in r["modes"].get(mode, []) if t["target_return"] == target]
        rows.append({"mode": mode, "target_return": target, **evaluation.aggregate(summaries)})
    return rows


format_summary = evaluation.format_summary
