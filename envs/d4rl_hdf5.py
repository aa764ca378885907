"""The D4RL-format hdf5 reader and writer: flat `observations, actions, rewards, terminals, timeouts`,
optional `next_observations` and `infos/*`; episodes end at a terminal or a timeout. The env id and the
reference scores travel as file attributes (D4RL's own files name neither: pass env_id)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from recurrl.envs.dataset_checks import (
    ENV_ID_HINT,
    DataWarning,
    check_array_shapes,
    check_env_spaces,
    check_supported_spaces,
    make_dataset_env,
    make_episode,
    optional_float,
)
from recurrl.envs.episodes import Episode, OfflineDataset
from recurrl.envs.scores import D4RL_ENV_IDS, d4rl_reference_scores, d4rl_task_name

D4RL_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def load_hdf5(
    path: str | os.PathLike, *, env_id: str | None = None, clip_actions: bool = False
) -> OfflineDataset:
    """Load a D4RL-format hdf5 file; episodes end where `terminals` or `timeouts` is set.

    `env_id` names the evaluation env (for files that do not); actions outside its action space are an
    error unless `clip_actions` clips them to the bounds."""
    path = Path(path)
    name = str(path)
    arrays, next_obs, attrs = _read_hdf5(name, path)
    obs, actions, rewards, terminals, timeouts = _step_arrays(name, arrays, next_obs)

    env_id, ref_min, ref_max, env_kwargs = _hdf5_env_and_scores(name, path, attrs, env_id)
    env = make_dataset_env(name, env_id, env_kwargs)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    check_supported_spaces(name, obs_space, act_space)
    check_array_shapes(name, env_id, obs_space, act_space, obs, actions)
    discrete = isinstance(act_space, gym.spaces.Discrete)

    episodes = _split_episodes(name, obs, actions, rewards, terminals, timeouts, next_obs, discrete)
    dataset = OfflineDataset(
        name=name,
        episodes=episodes,
        env_id=env_id,
        observation_space=obs_space,
        action_space=act_space,
        env_kwargs=env_kwargs,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
    )
    check_env_spaces(dataset, clip_actions)
    return dataset


def _read_hdf5(name: str, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, Any]]:
    """The required arrays, `next_observations` (None when absent) and the file attributes, read into
    memory so the file is closed before any checks; an unreadable file is a ValueError naming it."""
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in D4RL_REQUIRED_KEYS if key not in file]
            if missing:
                raise ValueError(
                    f"{name}: missing required key(s) {missing}; a D4RL-format file needs "
                    f"{list(D4RL_REQUIRED_KEYS)} (found {sorted(file.keys())})"
                )
            arrays = {key: file[key][()] for key in D4RL_REQUIRED_KEYS}
            next_obs = file["next_observations"][()] if "next_observations" in file else None
            attrs = {key: _attr(value) for key, value in file.attrs.items()}
    except OSError as error:
        raise ValueError(
            f"{name}: cannot read the hdf5 file ({error}); it is truncated, corrupt or not hdf5"
        ) from error
    return arrays, next_obs, attrs


def _step_arrays(
    name: str, arrays: dict[str, np.ndarray], next_obs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(observations, actions, rewards, terminals, timeouts) with the flags as flat bools and [N, 1]
    rewards flattened; a ValueError when the arrays are not one entry per step, or hold no steps."""
    obs, actions, rewards = arrays["observations"], arrays["actions"], arrays["rewards"]
    terminals = arrays["terminals"].astype(bool).reshape(-1)
    timeouts = arrays["timeouts"].astype(bool).reshape(-1)
    rewards = rewards.reshape(-1) if rewards.ndim == 2 and rewards.shape[1] == 1 else rewards
    lengths = {"observations": len(obs), "actions": len(actions), "rewards": len(rewards)}
    lengths |= {"terminals": len(terminals), "timeouts": len(timeouts)}
    if next_obs is not None:
        lengths["next_observations"] = len(next_obs)
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"{name}: arrays have mismatched lengths {lengths}; all must have one entry per step"
        )
    if len(rewards) == 0:
        raise ValueError(f"{name}: the file holds no steps")
    if rewards.ndim != 1:
        raise ValueError(f"{name}: rewards must be one number per step, got shape {rewards.shape}")
    return obs, actions, rewards, terminals, timeouts


def _split_episodes(
    name: str,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    next_obs: np.ndarray | None,
    discrete: bool,
) -> list[Episode]:
    """The flat steps cut into episodes after each terminal/timeout; steps after the last one form a
    cut-off episode (marked truncated, since the recording stopped there)."""
    ends = np.flatnonzero(terminals | timeouts) + 1
    if len(ends) == 0 and len(rewards) > 1:
        warnings.warn(
            DataWarning(
                f"{name}: no step is marked in 'terminals' or 'timeouts', so all {len(rewards):,} steps are read as "
                "one episode; if the file holds several, their last steps must be marked there"
            ),
            stacklevel=3,  # load_hdf5's caller, as before this was split out of load_hdf5
        )
    if len(ends) == 0 or ends[-1] != len(rewards):
        ends = np.append(ends, len(rewards))
        timeouts = timeouts.copy()
        timeouts[-1] = True  # the recording stopped here: a truncation, not a termination
    starts = np.concatenate([[0], ends[:-1]])
    episodes = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        episodes.append(
            make_episode(
                name,
                index,
                observations=obs[start:end],
                actions=actions[start:end],
                rewards=rewards[start:end],
                terminations=terminals[start:end],
                truncations=timeouts[start:end],
                final_observation=None if next_obs is None else next_obs[end - 1],
                discrete=discrete,
            )
        )
    return episodes


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _hdf5_env_and_scores(
    name: str, path: Path, attrs: dict[str, Any], env_id: str | None
) -> tuple[str, float | None, float | None, dict[str, Any]]:
    """Env id, reference scores and env kwargs: from the file's attributes (written by `export_hdf5`),
    else from a D4RL task name in the file name (hopper-medium-v2.hdf5 -> Hopper-v5, D4RL scores)."""
    ref_min = optional_float(attrs.get("ref_min_score"))
    ref_max = optional_float(attrs.get("ref_max_score"))
    env_kwargs = json.loads(attrs["env_kwargs"]) if "env_kwargs" in attrs else {}
    if env_id is None and "env_id" in attrs:
        env_id = str(attrs["env_id"])
    task = d4rl_task_name(path.name)
    if env_id is None and task is not None:
        env_id = D4RL_ENV_IDS[task]
    if env_id is None:
        raise ValueError(
            f"{name}: cannot tell which environment this dataset is for (no 'env_id' attribute and no "
            f"halfcheetah/hopper/walker2d in the file name); name one with {ENV_ID_HINT}"
        )
    if ref_min is None and ref_max is None and "env_id" not in attrs and task is not None:
        ref_min, ref_max = d4rl_reference_scores(task)  # a D4RL file: D4RL's reference returns apply
    return env_id, ref_min, ref_max, env_kwargs


def export_hdf5(dataset: OfflineDataset, path: str | os.PathLike, *, compression: str | None = None) -> Path:
    """Write a D4RL-format copy (flat arrays + env id and reference scores as file attributes).

    `next_observations` is written when every episode has its final observation (Minari data does).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the hdf5 file {str(path)!r}: it is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file where a parent folder should be
        raise ValueError(f"cannot write the hdf5 file {str(path)!r}: {error}") from error
    episodes = dataset.episodes
    arrays: dict[str, np.ndarray] = {
        "observations": np.concatenate([e.observations for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "terminals": np.concatenate([e.terminations for e in episodes]),
        "timeouts": np.concatenate([e.truncations for e in episodes]),
    }
    if all(e.final_observation is not None for e in episodes):
        arrays["next_observations"] = np.concatenate(
            [np.concatenate([e.observations[1:], e.final_observation[None]]) for e in episodes]
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as file:
            for key, value in arrays.items():
                file.create_dataset(key, data=value, compression=compression)
            file.attrs["env_id"] = dataset.env_id
            file.attrs["env_kwargs"] = json.dumps(dataset.env_kwargs)
            file.attrs["dataset_id"] = dataset.name
            for key in ("ref_min_score", "ref_max_score"):
                if getattr(dataset, key) is not None:
                    file.attrs[key] = getattr(dataset, key)
        tmp.replace(path)  # atomic: a crash never leaves a half-written file under the final name
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
    return path
