"""Load offline datasets: one entry point, `load_dataset(source)`, for every format.

`source` is one of:
  (a) a Minari dataset id (`namespace/env/name-vN`) found under MINARI_DATASETS_PATH (default
      ~/.minari/datasets), fetched from Minari's remote with `download=True` when the network allows;
      the ids of datasets embedded in this package (`recurrl/hopper/medium-v0`) fall back to the
      embedded copy when no local Minari dataset of that id exists;
  (b) a path to a Minari dataset directory (the one holding `data/`, or `data/` itself);
  (c) a path to a D4RL-format hdf5 file: flat `observations, actions, rewards, terminals, timeouts`,
      optional `next_observations` and `infos/*`; episodes end at a terminal or a timeout.

Every loader validates what it reads (lengths, NaN/Inf, spaces against the evaluation env) and
raises ValueError rather than returning part of a dataset.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

import recurrl.envs  # noqa: F401  (registers the POMDP env ids that datasets may name)
from recurrl.envs.episodes import Episode, OfflineDataset
from recurrl.envs.scores import D4RL_ENV_IDS, d4rl_reference_scores, d4rl_task_name

DATA_DIR = Path(__file__).resolve().parent / "data"
# A D4RL-style Hopper-v5 "medium" dataset recorded by `recurrl collect` (see envs/data/README.md).
EMBEDDED_HOPPER_MEDIUM = DATA_DIR / "hopper-medium-v0"
# Minari ids that fall back to a copy shipped with the package when not found locally.
EMBEDDED_DATASETS: dict[str, Path] = {"recurrl/hopper/medium-v0": EMBEDDED_HOPPER_MEDIUM}

D4RL_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_MINARI_ID = re.compile(r"^([\w.-]+/)*[\w.-]+-v\d+$")


def minari_datasets_path() -> Path:
    """Where Minari keeps local datasets (MINARI_DATASETS_PATH, else ~/.minari/datasets)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def load_dataset(
    source: str | os.PathLike, *, download: bool = False, env_id: str | None = None
) -> OfflineDataset:
    """Load a Minari id, a Minari dataset directory or a D4RL-format hdf5 file (see module doc).

    `env_id` overrides the evaluation env (needed for hdf5 files that do not name one).
    """
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return load_hdf5(path, env_id=env_id)
    if path.is_dir():
        return load_minari_dir(path, env_id=env_id)
    text = str(source)
    if text.endswith((".hdf5", ".h5")) or text.startswith((".", "/", "~")) or not _MINARI_ID.match(text):
        raise FileNotFoundError(
            f"no dataset file or directory at {path}: give a D4RL-format .hdf5 file, a Minari dataset "
            f"directory, or a Minari id like 'mujoco/hopper/medium-v0' ({_how_to_get(None)})"
        )
    return load_minari_id(text, download=download, env_id=env_id)


def load_minari_id(dataset_id: str, *, download: bool = False, env_id: str | None = None) -> OfflineDataset:
    local = minari_datasets_path() / dataset_id
    if (local / "data").is_dir():
        return load_minari_dir(local, env_id=env_id, name=dataset_id)
    if dataset_id in EMBEDDED_DATASETS and EMBEDDED_DATASETS[dataset_id].is_dir():
        return load_minari_dir(EMBEDDED_DATASETS[dataset_id], env_id=env_id, name=dataset_id)
    if download:
        import minari

        try:
            minari.download_dataset(dataset_id)
        except Exception as error:  # network down, unknown id, incompatible version: all end the same way
            raise FileNotFoundError(
                f"could not download Minari dataset {dataset_id!r} ({type(error).__name__}: {error}); "
                f"{_how_to_get(dataset_id)}"
            ) from error
        return load_minari_dir(local, env_id=env_id, name=dataset_id)
    raise FileNotFoundError(
        f"dataset {dataset_id!r} not found: looked for a Minari dataset at {local} "
        f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '<unset>')}) and for a file or "
        f"directory named {dataset_id!r}; {_how_to_get(dataset_id)}"
    )


def _how_to_get(dataset_id: str | None) -> str:
    shown = dataset_id or "NAMESPACE/ENV/NAME-v0"
    collect = "recurrl collect --env ENV --policy ALGO --dataset-id " + shown
    if dataset_id and dataset_id.startswith("recurrl/"):
        parts = dataset_id.split("/")
        if len(parts) == 3 and parts[1] in D4RL_ENV_IDS:
            collect = f"recurrl collect --suite d4rl --env {D4RL_ENV_IDS[parts[1]]}"
    return (
        f"get it with `minari download {shown}` (or `recurrl dataset info {shown} --download`), "
        f"or record one with `{collect}`"
    )


# ---------------------------------------------------------------- Minari


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
    path: str | os.PathLike, *, env_id: str | None = None, name: str | None = None
) -> OfflineDataset:
    """Load a Minari dataset directory; observations are split into T steps + the final one.

    Datasets with at least CACHE_MIN_EPISODES episodes are read once and cached as a flat
    D4RL-format file under `dataset_cache_dir()` (see there to move or disable it).
    """
    data_dir = _minari_data_dir(Path(path))
    name = name or str(path)
    cache = _cache_path(data_dir)
    if cache is not None and cache.is_file():
        dataset = load_hdf5(cache, env_id=env_id)
        dataset.name = name
        return dataset
    dataset = _read_minari_dir(data_dir, env_id=env_id, name=name)
    if cache is not None and len(dataset.episodes) >= CACHE_MIN_EPISODES and env_id is None:
        try:
            export_hdf5(dataset, cache)
        except OSError:
            pass  # a read-only or full cache folder only costs speed next time
    return dataset


def _read_minari_dir(data_dir: Path, *, env_id: str | None, name: str) -> OfflineDataset:
    from minari.dataset.minari_storage import MinariStorage

    try:
        storage = MinariStorage.read(data_dir)
        metadata = storage.metadata
        _check_supported_spaces(name, storage.observation_space, storage.action_space)
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
            _make_episode(
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
        raise ValueError(f"{name}: the dataset names no environment; pass env_id= (or --env-id)")
    dataset = OfflineDataset(
        name=name,
        episodes=episodes,
        env_id=env_id or spec_id,
        observation_space=obs_space,
        action_space=act_space,
        env_kwargs={} if env_id else spec_kwargs,
        ref_min_score=_optional_float(metadata.get("ref_min_score")),
        ref_max_score=_optional_float(metadata.get("ref_max_score")),
    )
    _check_env_spaces(dataset)
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


# ---------------------------------------------------------------- D4RL hdf5


def load_hdf5(path: str | os.PathLike, *, env_id: str | None = None) -> OfflineDataset:
    """Load a D4RL-format hdf5 file; episodes end where `terminals` or `timeouts` is set."""
    path = Path(path)
    name = str(path)
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

    env_id, ref_min, ref_max, env_kwargs = _hdf5_env_and_scores(name, path, attrs, env_id)
    env = gym.make(env_id, **env_kwargs)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    _check_supported_spaces(name, obs_space, act_space)
    discrete = isinstance(act_space, gym.spaces.Discrete)

    # Episode boundaries: after each terminal/timeout; steps after the last one form a cut-off episode.
    ends = np.flatnonzero(terminals | timeouts) + 1
    if len(ends) == 0 or ends[-1] != len(rewards):
        ends = np.append(ends, len(rewards))
        timeouts = timeouts.copy()
        timeouts[-1] = True  # the recording stopped here: a truncation, not a termination
    starts = np.concatenate([[0], ends[:-1]])
    episodes = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        episodes.append(
            _make_episode(
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
    _check_env_spaces(dataset)
    return dataset


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _hdf5_env_and_scores(
    name: str, path: Path, attrs: dict[str, Any], env_id: str | None
) -> tuple[str, float | None, float | None, dict[str, Any]]:
    """Env id, reference scores and env kwargs: from the file's attributes (written by `export_hdf5`),
    else from a D4RL task name in the file name (hopper-medium-v2.hdf5 -> Hopper-v5, D4RL scores)."""
    ref_min = _optional_float(attrs.get("ref_min_score"))
    ref_max = _optional_float(attrs.get("ref_max_score"))
    env_kwargs = json.loads(attrs["env_kwargs"]) if "env_kwargs" in attrs else {}
    if env_id is None and "env_id" in attrs:
        env_id = str(attrs["env_id"])
    task = d4rl_task_name(path.name)
    if env_id is None and task is not None:
        env_id = D4RL_ENV_IDS[task]
    if env_id is None:
        raise ValueError(
            f"{name}: cannot tell which environment this dataset is for (no 'env_id' attribute and no "
            "halfcheetah/hopper/walker2d in the file name); pass env_id= (or --env-id)"
        )
    if ref_min is None and ref_max is None and "env_id" not in attrs and task is not None:
        ref_min, ref_max = d4rl_reference_scores(task)  # a D4RL file: D4RL's reference returns apply
    return env_id, ref_min, ref_max, env_kwargs


# ---------------------------------------------------------------- validation


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_supported_spaces(name: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"{name}: only Box observation spaces are supported, got {obs_space}")
    if not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ValueError(f"{name}: only Box or Discrete action spaces are supported, got {act_space}")


def _make_episode(
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


def _check_env_spaces(dataset: OfflineDataset) -> None:
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


# ---------------------------------------------------------------- export and summary


def export_hdf5(dataset: OfflineDataset, path: str | os.PathLike, *, compression: str | None = None) -> Path:
    """Write a D4RL-format copy (flat arrays + env id and reference scores as file attributes).

    `next_observations` is written when every episode has its final observation (Minari data does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_name(path.name + ".tmp")
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
    return path


def dataset_summary(dataset: OfflineDataset) -> dict[str, Any]:
    """What `recurrl dataset info` prints: sizes, returns, shapes, reference scores."""
    stats = dataset.stats
    summary: dict[str, Any] = {
        "name": dataset.name,
        "env_id": dataset.env_id,
        "episodes": len(dataset.episodes),
        "steps": dataset.num_steps,
        "return_min": float(stats.returns.min()),
        "return_mean": float(stats.returns.mean()),
        "return_max": float(stats.returns.max()),
        "length_mean": float(stats.lengths.mean()),
        "terminated_episodes": int(sum(bool(e.terminations[-1]) for e in dataset.episodes)),
        "observation_shape": list(dataset.episodes[0].observations.shape[1:]),
        "action_shape": list(dataset.episodes[0].actions.shape[1:]),
        "action_space": str(dataset.action_space),
        "ref_min_score": dataset.ref_min_score,
        "ref_max_score": dataset.ref_max_score,
    }
    if dataset.ref_min_score is not None and dataset.ref_max_score is not None:
        summary["normalized_return_mean"] = float(dataset.normalized_score(stats.returns.mean()))
    return summary
