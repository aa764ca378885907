"""Checks every dataset reader applies, so no format returns part of a dataset: supported spaces, one
episode's arrays (lengths, NaN/Inf), and the data against its evaluation env's spaces."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from recurrl.envs.episodes import Episode, OfflineDataset


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def check_supported_spaces(name: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"{name}: only Box observation spaces are supported, got {obs_space}")
    if not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ValueError(f"{name}: only Box or Discrete action spaces are supported, got {act_space}")


def make_episode(
    name: str,
    index: int,
    *,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    final_observation: np.ndarray | None,
    discrete: bool,
) -> Episode:
    where = f"{name}: episode {index}"
    steps = len(rewards)
    if steps == 0:
        raise ValueError(f"{where} is empty")
    lengths = {
        "observations": len(observations),
        "actions": len(actions),
        "terminations": len(terminations),
        "truncations": len(truncations),
    }
    if any(length != steps for length in lengths.values()):
        raise ValueError(f"{where}: mismatched lengths {lengths} for {steps} rewards")
    observations = np.asarray(observations, dtype=np.float32)
    rewards = np.asarray(rewards, dtype=np.float32).reshape(steps)
    if not np.isfinite(observations).all():
        raise ValueError(f"{where}: observations contain NaN or Inf")
    if final_observation is not None:
        final_observation = np.asarray(final_observation, dtype=np.float32)
        if not np.isfinite(final_observation).all():
            raise ValueError(f"{where}: the final observation contains NaN or Inf")
    if not np.isfinite(rewards).all():
        raise ValueError(f"{where}: rewards contain NaN or Inf")
    actions = np.asarray(actions)
    if discrete:
        actions = actions.reshape(steps).astype(np.int64)
    else:
        actions = actions.astype(np.float32).reshape(steps, -1)
        if not np.isfinite(actions).all():
            raise ValueError(f"{where}: actions contain NaN or Inf")
    return Episode(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminations=np.asarray(terminations, dtype=bool).reshape(steps),
        truncations=np.asarray(truncations, dtype=bool).reshape(steps),
        final_observation=final_observation,
    )


def check_env_spaces(dataset: OfflineDataset) -> None:
    """The data must fit the evaluation env: observation shape, action shape or number of actions."""
    try:
        env = dataset.make_env()
    except gym.error.Error as error:
        raise ValueError(
            f"{dataset.name}: cannot make its evaluation env {dataset.env_id!r}: {error}"
        ) from error
    env_obs, env_act = env.observation_space, env.action_space
    env.close()
    obs_shape = dataset.episodes[0].observations.shape[1:]
    if obs_shape != env_obs.shape:
        raise ValueError(
            f"{dataset.name}: observations have shape {obs_shape} but env {dataset.env_id} observes "
            f"{env_obs.shape}; the dataset was recorded on another environment (pass the right env_id)"
        )
    if isinstance(env_act, gym.spaces.Discrete):
        if not isinstance(dataset.action_space, gym.spaces.Discrete) or dataset.action_space.n != env_act.n:
            raise ValueError(
                f"{dataset.name}: action space {dataset.action_space} does not match env {env_act}"
            )
        top = max(int(e.actions.max()) for e in dataset.episodes)
        low = min(int(e.actions.min()) for e in dataset.episodes)
        if low < 0 or top >= env_act.n:
            raise ValueError(
                f"{dataset.name}: actions range over [{low}, {top}], env has {env_act.n} actions"
            )
    else:
        act_shape = dataset.episodes[0].actions.shape[1:]
        if not isinstance(env_act, gym.spaces.Box) or act_shape != env_act.shape:
            raise ValueError(
                f"{dataset.name}: actions have shape {act_shape} but env {dataset.env_id} takes {env_act}; "
                "the dataset was recorded on another environment"
            )
