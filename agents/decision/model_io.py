"""Building a DecisionModel from a config + dataset, and rebuilding it from a checkpoint.

A Decision checkpoint's meta.json holds everything needed to act without the dataset: the model's
constructor arguments, the normalization statistics, the observation/action spaces the model was
trained for, the evaluation env id and kwargs, and the reference scores for normalized scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurrl.agents.checkpoint import CheckpointError, load_checkpoint, load_weights_strict
from recurrl.envs.episodes import OfflineDataset
from recurrl.envs.packages import import_env_packages
from recurrl.envs.scores import normalized_score
from recurrl.policies.decision import DecisionModel, DecisionModelConfig

from .config import DecisionConfig

KIND = "decision"


@dataclass
class EnvSpec:
    """What evaluation needs to know about the env: id, kwargs, spaces, reference scores."""

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    observation_space: dict[str, Any] | None = None  # space_to_json form
    action_space: dict[str, Any] | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None

    @classmethod
    def from_dataset(cls, dataset: OfflineDataset) -> EnvSpec:
        return cls(
            env_id=dataset.env_id,
            env_kwargs=dict(dataset.env_kwargs),
            observation_space=space_to_json(dataset.observation_space),
            action_space=space_to_json(dataset.action_space),
            ref_min_score=dataset.ref_min_score,
            ref_max_score=dataset.ref_max_score,
        )

    def normalized(self, returns: np.ndarray) -> np.ndarray | None:
        """D4RL-normalized scores of `returns` (envs.scores), or None without reference scores."""
        if self.ref_min_score is None or self.ref_max_score is None or self.ref_max_score == self.ref_min_score:
            return None
        return np.asarray(normalized_score(np.asarray(returns, np.float64), self.ref_min_score, self.ref_max_score))

    def check_env(self, env: gym.Env | gym.vector.VectorEnv) -> None:
        """Raise ValueError when the env's spaces differ from the ones the model was trained for."""
        if isinstance(env, gym.vector.VectorEnv):
            obs_space, act_space = env.single_observation_space, env.single_action_space
        else:
            obs_space, act_space = env.observation_space, env.action_space
        self.check_spaces(
            obs_space, act_space, f"env {self.env_id!r}", "evaluate on the env the data came from"
        )

    def check_spaces(self, obs_space: gym.Space, act_space: gym.Space, owner: str, advice: str) -> None:
        """Raise ValueError, naming `owner` and ending with `advice`, when these spaces are not this spec's."""
        for what, want, space in (
            ("observation", self.observation_space, obs_space),
            ("action", self.action_space, act_space),
        ):
            got = space_to_json(space)
            if want is not None and not spaces_match(want, got):
                raise ValueError(
                    f"the {what} space of {owner} ({_describe(got)}) does not match the dataset's / "
                    f"checkpoint's ({_describe(want)}); {advice}"
                )


def space_to_json(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": np.asarray(space.low, np.float64).reshape(-1).tolist(),
            "high": np.asarray(space.high, np.float64).reshape(-1).tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(
        f"the Decision agent supports Box and Discrete spaces, got {type(space).__name__}; flatten the space first"
    )


def spaces_match(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["type"] != b["type"]:
        return False
    if a["type"] == "Discrete":
        return a["n"] == b["n"] and a.get("start", 0) == b.get("start", 0)
    if list(a["shape"]) != list(b["shape"]):
        return False
    # Bounds of +-inf survive JSON as Infinity; compare with tolerance for float32 round-off.
    return bool(
        np.allclose(np.asarray(a["low"]), np.asarray(b["low"]), rtol=1e-5, atol=1e-6, equal_nan=True)
        and np.allclose(np.asarray(a["high"]), np.asarray(b["high"]), rtol=1e-5, atol=1e-6, equal_nan=True)
    )


def _describe(space: dict[str, Any]) -> str:
    if space["type"] == "Discrete":
        return f"Discrete({space['n']})"
    low, high = np.asarray(space["low"]), np.asarray(space["high"])
    return f"Box(shape={tuple(space['shape'])}, low in [{low.min():g}, {low.max():g}], high in [{high.min():g}, {high.max():g}])"


def model_kwargs(config: DecisionConfig, dataset: OfflineDataset) -> dict[str, Any]:
    """JSON-able DecisionModel constructor arguments for this config and dataset."""
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"dataset {dataset.name!r}: the Decision agent needs a Box observation space")
    discrete = isinstance(act_space, gym.spaces.Discrete)
    if not discrete and not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"dataset {dataset.name!r}: actions must be Box or Discrete, got {act_space}")
    options = dict(config.model.backbone_options)
    tokens_per_step = 3 if config.model.tokens == "triple" else 1
    if config.model.backbone == "transformer":
        # The Transformer attends over the training segment's tokens; at evaluation its KV cache
        # slides over the same number of tokens (3K for triple tokens).
        options.setdefault("max_context", tokens_per_step * (config.context_length + config.burn_in))
    stats = dataset.stats
    kwargs: dict[str, Any] = {
        "state_dim": int(np.prod(obs_space.shape)),
        "act_dim": int(act_space.n) if discrete else int(np.prod(act_space.shape)),
        "discrete": discrete,
        "backbone_name": config.model.backbone,
        "hidden_dim": config.model.hidden_dim,
        "num_layers": config.model.num_layers,
        "backbone_options": options,
        "tokens": config.model.tokens,
        "previous_actions": config.model.previous_actions,
        "max_timestep": config.model.max_timestep,
        "return_scale": config.model.return_scale,
        "dropout": config.model.dropout,
        "obs_mean": np.asarray(stats.obs_mean, np.float64).reshape(-1).tolist(),
        "obs_std": np.asarray(stats.obs_std, np.float64).reshape(-1).tolist(),
    }
    if not discrete:
        low, high = np.asarray(act_space.low).reshape(-1), np.asarray(act_space.high).reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(
                f"dataset {dataset.name!r}: continuous actions need finite bounds, got {act_space}"
            )
        kwargs["action_low"], kwargs["action_high"] = low.tolist(), high.tolist()
    return kwargs


def build_model(kwargs: dict[str, Any]) -> DecisionModel:
    args = dict(kwargs)
    for key in ("obs_mean", "obs_std", "action_low", "action_high"):
        if args.get(key) is not None:
            args[key] = np.asarray(args[key], np.float32)
    try:
        return DecisionModel(DecisionModelConfig(**args))
    except TypeError as error:
        raise CheckpointError(f"cannot build the Decision model from {sorted(kwargs)}: {error}") from error


def load_decision_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[DecisionModel, dict[str, Any]]:
    """Rebuild the model from a Decision checkpoint (verified) -> (model in eval mode, meta)."""
    tensors, meta, _ = load_checkpoint(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, not a Decision-agent checkpoint")
    if "model_kwargs" not in meta or "env" not in meta:
        raise CheckpointError(f"{path}: meta.json lacks model_kwargs/env; the checkpoint is incomplete")
    model = build_model(meta["model_kwargs"])
    load_weights_strict(model, tensors, str(path))
    # The packages that registered the evaluation env, so evaluation and `recurrl.load` can make it again.
    import_env_packages(meta.get("config", {}).get("env_packages", []), origin=f"{path}: env package")
    return model.to(device).eval(), meta


def env_spec_from_meta(meta: dict[str, Any]) -> EnvSpec:
    return EnvSpec(**meta["env"])
