"""Checks every dataset reader applies, so no format returns part of a dataset: supported spaces, one
episode's arrays (lengths, NaN/Inf), and the data against its evaluation env (which must exist, and
whose spaces the arrays must fit: shapes, number of actions, action bounds)."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from recurrl.envs.episodes import Episode, OfflineDataset

CLIP_HINT = "clip_actions=True (recurrl train / recurrl dataset: --clip-actions)"
ENV_ID_HINT = "env_id= (recurrl train / recurrl dataset: --env-id ENV)"


class DataWarning(UserWarning):
    """The data loads, but probably not as its author meant (e.g. no episode boundaries)."""


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


def make_dataset_env(name: str, env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """The dataset's evaluation env, or a ValueError that says why it cannot be made and what to do."""
    import recurrl.envs  # noqa: F401  (registers the POMDP env ids that datasets may name)

    try:
        return gym.make(env_id, **(env_kwargs or {}))
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound) as error:
        raise ValueError(
            f"{name}: its evaluation env {env_id!r} is not registered with gymnasium ({error}); import the "
            f"package that registers it, or name a registered env with {ENV_ID_HINT}"
        ) from error
    except (gym.error.DependencyNotInstalled, ImportError) as error:
        raise ValueError(
            f"{name}: its evaluation env {env_id!r} needs a package that is not installed: {error}"
        ) from error
    except (gym.error.Error, TypeError) as error:  # e.g. keyword arguments the env does not take
        raise ValueError(
            f"{name}: cannot make its evaluation env {env_id!r} with {env_kwargs or {}}: {error}"
        ) from error


def _mismatch(name: str, what: str, shape: tuple, env_id: str, space: gym.Space, detail: str = "") -> ValueError:
    """The error for data whose per-step `what` (observations/actions) does not fit the env's space."""
    kind = "observation" if what == "observations" else "action"
    expected = "one integer per step" if isinstance(space, gym.spaces.Discrete) else f"shape {space.shape}"
    return ValueError(
        f"{name}: {what} have shape {tuple(shape)} per step{detail}, but env {env_id}'s {kind} space is {space} "
        f"({expected}); the data was recorded on another env (name the right one with {ENV_ID_HINT})"
    )


def check_array_shapes(
    name: str, env_id: str, obs_space: gym.Space, act_space: gym.Space, observations: Any, actions: Any
) -> None:
    """Flat per-step arrays [N, ...] against the env's spaces, before they are cut into episodes."""
    obs_shape, act_shape = tuple(observations.shape[1:]), tuple(actions.shape[1:])
    if obs_shape != obs_space.shape:
        raise _mismatch(name, "observations", obs_shape, env_id, obs_space)
    if isinstance(act_space, gym.spaces.Discrete):
        dtype = np.asarray(actions).dtype
        integral = dtype.kind in "iub" or bool(np.all(np.mod(actions, 1) == 0))
        if act_shape not in ((), (1,)) or not integral:
            raise _mismatch(name, "actions", act_shape, env_id, act_space, f" ({dtype})")
    elif act_shape != act_space.shape:
        raise _mismatch(name, "actions", act_shape, env_id, act_space)


def check_env_spaces(dataset: OfflineDataset, clip_actions: bool = False) -> None:
    """The data must fit the evaluation env: observation shape, action shape or number of actions, and
    the action bounds (values outside are an error, or clipped to the bounds with `clip_actions`)."""
    env = make_dataset_env(dataset.name, dataset.env_id, dataset.env_kwargs)
    env_obs, env_act = env.observation_space, env.action_space
    env.close()
    name, env_id = dataset.name, dataset.env_id
    first = dataset.episodes[0]
    if first.observations.shape[1:] != env_obs.shape:
        raise _mismatch(name, "observations", first.observations.shape[1:], env_id, env_obs)
    if isinstance(env_act, gym.spaces.Discrete):
        if not isinstance(dataset.action_space, gym.spaces.Discrete) or dataset.action_space.n != env_act.n:
            raise ValueError(
                f"{name}: the data's action space {dataset.action_space} does not match env {env_id}'s "
                f"{env_act}; {ENV_ID_HINT} names the right env"
            )
        top = max(int(e.actions.max()) for e in dataset.episodes)
        low = min(int(e.actions.min()) for e in dataset.episodes)
        if low < int(env_act.start) or top >= int(env_act.start) + env_act.n:
            raise ValueError(
                f"{name}: actions range over [{low}, {top}], outside env {env_id}'s action space {env_act}"
            )
        return
    if not isinstance(env_act, gym.spaces.Box) or first.actions.shape[1:] != env_act.shape:
        raise _mismatch(name, "actions", first.actions.shape[1:], env_id, env_act)
    check_action_bounds(dataset, env_act, clip_actions)


def check_action_bounds(dataset: OfflineDataset, space: gym.spaces.Box, clip: bool) -> None:
    """Actions outside the env's bounds: an error naming the first one, or clipped with a warning.

    A small tolerance (1e-5 relative) lets through float rounding of data recorded at the bounds."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    tol = 1e-5 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    tol = np.where(np.isfinite(tol), tol, 0.0)
    count, first = 0, None
    for index, episode in enumerate(dataset.episodes):
        outside = (episode.actions < low - tol) | (episode.actions > high + tol)
        if not outside.any():
            continue
        count += int(outside.sum())
        if first is None:
            step, dim = (int(i) for i in np.argwhere(outside)[0])
            first = (
                f"first at episode {index}, step {step}: action[{dim}] = {episode.actions[step, dim]:g}, bounds "
                f"[{low[dim]:g}, {high[dim]:g}]"
            )
        if clip:
            episode.actions = np.clip(episode.actions, low, high).astype(np.float32)
    if count == 0:
        return
    what = f"{count} action value(s) outside env {dataset.env_id}'s action space {space} ({first})"
    if not clip:
        raise ValueError(
            f"{dataset.name}: {what}; fix the data, or clip them to the bounds with {CLIP_HINT}"
        )
    warnings.warn(DataWarning(f"{dataset.name}: clipped {what}"), stacklevel=2)
