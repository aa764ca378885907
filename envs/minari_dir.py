"""The Minari dataset-directory reader (the layout `minari download` and `recurrl collect` write):
metadata.json plus data/main_data.hdf5 with one group per episode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from recurrl.envs.d4rl_hdf5 import export_hdf5, load_hdf5
from recurrl.envs.dataset_checks import (
    ENV_ID_HINT,
    check_env_spaces,
    check_supported_spaces,
    make_episode,
    optional_float,
)
from recurrl.envs.episodes import OfflineDataset


def _minari_data_dir(path: Path) -> Path:
    """Accept the dataset root (holding data/) or the data directory itself."""
    if (path / "data" / "metadata.json").is_file():
        return path / "data"
    if (path / "metadata.json").is_file():
        return path
    raise ValueError(
        f"{path} is not a Minari dataset directory: no data/metadata.json or metadata.json in it "
        "(a Minari dataset directory is what `minari download` or `recurrl collect` writes)"
    )


# Minari's hdf5 layout keeps one group per episode; HDF5's per-object cost (~0.5-1.5 ms per episode
# on 2 cores) makes datasets of many short episodes slow to read (1M random Hopper steps = 45k
# episodes: ~70 s). Those are cached once as a flat D4RL-format file, which loads in seconds.
CACHE_MIN_EPISODES = 2000


def dataset_cache_dir() -> Path | None:
    """RECURRL_DATASET_CACHE (a folder, or 'off'), else ~/.cache/recurrl/datasets."""
    value = os.environ.get("RECURRL_DATASET_CACHE")
    if value and value.lower() in ("0", "off", "none", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "recurrl" / "datasets"


def _cache_path(data_dir: Path) -> Path | None:
    import hashlib

    root = dataset_cache_dir()
    main = data_dir / "main_data.hdf5"
    if root is None or not main.is_file():
        return None
    stat = main.stat()  # a rewritten dataset gets a new key: stale copies are never read
    key = f"{data_dir.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return root / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".hdf5")


def load_minari_dir(
    path: str | os.PathLike, *, env_id: str | None = None, name: str | None = None, clip_actions: bool = False
) -> OfflineDataset:
    """Load a Minari dataset directory; observations are split into T steps + the final one.

    `env_id` overrides the evaluation env the dataset names; actions outside its action space are an
    error unless `clip_actions` clips them to the bounds.

    Datasets with at least CACHE_MIN_EPISODES episodes are read once and cached as a flat
    D4RL-format file under `dataset_cache_dir()` (see there to move or disable it).
    """
    data_dir = _minari_data_dir(Path(path))
    name = name or str(path)
    cache = _cache_path(data_dir)
    if cache is not None and cache.is_file():
        dataset = load_hdf5(cache, env_id=env_id, clip_actions=clip_actions)
        dataset.name = name
        return dataset
    dataset = _read_minari_dir(data_dir, env_id=env_id, name=name, clip_actions=clip_actions)
    # The cache holds the data as recorded: never a copy read for another env or with clipped actions.
    if cache is not None and len(dataset.episodes) >= CACHE_MIN_EPISODES and env_id is None and not clip_actions:
        try:
            export_hdf5(dataset, cache)
        except (OSError, ValueError):
            pass  # a read-only or full cache folder only costs speed next time
    return dataset


def _read_minari_dir(data_dir: Path, *, env_id: str | None, name: str, clip_actions: bool) -> OfflineDataset:
    from minari.dataset.minari_storage import MinariStorage

    try:
        storage = MinariStorage.read(data_dir)
        metadata = storage.metadata
        check_supported_spaces(name, storage.observation_space, storage.action_space)
        if metadata.get("data_format") == "hdf5" and not _is_image(storage.observation_space):
            raw_episodes = _read_minari_hdf5(data_dir / "main_data.hdf5", storage.total_episodes)
        else:
            raw_episodes = list(storage.get_episodes(range(storage.total_episodes)))
    except (OSError, KeyError, AssertionError) as error:
        raise ValueError(
            f"{name}: cannot read the Minari dataset at {data_dir} ({error}); it may be corrupt"
        ) from error
    except ValueError as error:
        if str(error).startswith(name):
            raise
        raise ValueError(f"{name}: cannot read the Minari dataset at {data_dir}: {error}") from error
    if not raw_episodes:
        raise ValueError(f"{name}: the Minari dataset at {data_dir} has no episodes")

    obs_space, act_space = storage.observation_space, storage.action_space
    episodes = []
    for index, raw in enumerate(raw_episodes):
        obs = np.asarray(raw["observations"])
        steps = len(raw["rewards"])
        if len(obs) != steps + 1:
            raise ValueError(
                f"{name}: episode {index} has {len(obs)} observations for {steps} rewards; Minari stores "
                "T+1 observations per episode of T steps"
            )
        episodes.append(
            make_episode(
                name,
                index,
                observations=obs[:-1],
                actions=raw["actions"],
                rewards=raw["rewards"],
                terminations=raw["terminations"],
                truncations=raw["truncations"],
                final_observation=obs[-1],
                discrete=isinstance(act_space, gym.spaces.Discrete),
            )
        )

    spec_json = metadata.get("eval_env_spec") or metadata.get("env_spec")
    spec_id, spec_kwargs = _env_from_spec_json(spec_json) if spec_json else (None, {})
    if env_id is None and spec_id is None:
        raise ValueError(f"{name}: the dataset names no evaluation env; name one with {ENV_ID_HINT}")
    dataset = OfflineDataset(
        name=name,
        episodes=episodes,
        env_id=env_id or spec_id,
        observation_space=obs_space,
        action_space=act_space,
        env_kwargs={} if env_id else spec_kwargs,
        ref_min_score=optional_float(metadata.get("ref_min_score")),
        ref_max_score=optional_float(metadata.get("ref_max_score")),
    )
    check_env_spaces(dataset, clip_actions)
    return dataset


_EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def _read_minari_hdf5(path: Path, total_episodes: int) -> list[dict[str, np.ndarray]]:
    """Read every episode's arrays straight from Minari's hdf5 file.

    Same arrays as Minari's `get_episodes`, without decoding infos or building per-episode objects:
    HDF5's per-object cost dominates (about 0.1-0.5 ms per array), so this matters for datasets of
    many short episodes. Uses h5py's low-level API to skip the high-level wrappers.
    """
    episodes = []
    with h5py.File(path, "r") as file:
        for index in range(total_episodes):
            group = h5py.h5g.open(file.id, f"episode_{index}".encode())
            episode = {}
            for key in _EPISODE_KEYS:
                dataset = h5py.h5d.open(group, key.encode())
                array = np.empty(dataset.shape, dtype=dataset.dtype)
                if array.size:
                    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
                episode[key] = array
            episodes.append(episode)
    return episodes


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _env_from_spec_json(spec_json: str) -> tuple[str, dict[str, Any]]:
    spec = json.loads(spec_json)
    return spec["id"], dict(spec.get("kwargs") or {})
