"""Write a recorded `Collection` as a Minari dataset (`minari.create_dataset_from_buffers`; Minari's
DataCollector would import jax), observations as float32; optionally gzip it and export a D4RL-format
hdf5 copy. `record_dataset` is the one path from a recording to a dataset, for `recurrl collect` and
for the suites alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurrl.envs.packages import split_env_id
from recurrl.envs.record import Collection


@contextlib.contextmanager
def datasets_path(path: str | os.PathLike | None) -> Iterator[None]:
    """Point MINARI_DATASETS_PATH at `path` for the duration (None: leave it as it is)."""
    if path is None:
        yield
        return
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved


def check_new_dataset(dataset_id: str, overwrite: bool) -> None:
    """Refuse an existing dataset id unless `overwrite`: called before recording, so a clash costs
    nothing instead of the whole recording."""
    from minari.storage import get_dataset_path

    path = Path(get_dataset_path(dataset_id))
    if path.exists() and not overwrite:
        raise ValueError(
            f"Minari dataset {dataset_id!r} already exists at {path}; pass --overwrite to replace it"
        )


def write_minari(
    collection: Collection,
    dataset_id: str,
    *,
    algorithm_name: str,
    description: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Create Minari dataset `dataset_id` under MINARI_DATASETS_PATH; returns its directory."""
    import minari
    from minari.storage import get_dataset_path

    check_new_dataset(dataset_id, overwrite)
    path = Path(get_dataset_path(dataset_id))
    if path.exists():
        minari.delete_dataset(dataset_id)
    env = gym.make(collection.env_id)
    obs_space = env.observation_space
    act_space = env.action_space
    obs_space, act_space = _float32_box(obs_space), _float32_box(act_space)  # arrays are stored as float32
    env.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari's nags about missing author/permalink
        minari.create_dataset_from_buffers(
            dataset_id,
            collection.to_episode_buffers(),
            # The registered id (Minari looks it up; 'module:' is imported): the stored specs name it.
            env=split_env_id(collection.env_id)[1],
            eval_env=split_env_id(collection.env_id)[1],
            algorithm_name=algorithm_name,
            author="recurrl collect",
            observation_space=obs_space,
            action_space=act_space,
            ref_min_score=ref_min_score if ref_max_score is not None else None,
            ref_max_score=ref_max_score,
            description=description,
        )
    return path


def compress_minari_dataset(path: str | os.PathLike) -> int:
    """Rewrite a Minari hdf5 dataset's arrays with gzip + shuffle (lossless); returns the new size in bytes.

    Minari writes uncompressed, chunked arrays; this is for datasets shipped in the repository.
    Readers need nothing special (h5py decompresses transparently).
    """
    import h5py

    main = Path(path) / "data" / "main_data.hdf5"
    if not main.is_file():
        raise ValueError(f"{path} is not a Minari hdf5 dataset directory (no data/main_data.hdf5)")
    tmp = main.with_name("main_data.compressed.hdf5")

    def copy_group(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(dict(source.attrs))
        for key, item in source.items():
            if isinstance(item, h5py.Group):
                copy_group(item, target.create_group(key, track_order=True))
            else:
                data = item[()]
                options = {"compression": "gzip", "compression_opts": 9, "shuffle": True} if data.ndim else {}
                target.create_dataset(key, data=data, **options)
                target[key].attrs.update(dict(item.attrs))

    with h5py.File(main, "r") as source, h5py.File(tmp, "w", track_order=True, libver="latest") as target:
        copy_group(source, target)
    tmp.replace(main)
    metadata_path = main.parent / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["dataset_size"] = round(main.stat().st_size / 1e6, 1)  # Minari's unit: MB
    metadata_path.write_text(json.dumps(metadata))
    return main.stat().st_size


def _float32_box(space: gym.Space) -> gym.Space:
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float64:
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        return gym.spaces.Box(low, high, space.shape, np.float32)
    return space


def record_dataset(
    collection: Collection,
    dataset_id: str,
    *,
    recipe: str,
    description: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    compress: bool = False,
    export_hdf5: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write `collection` as Minari dataset `dataset_id` (gzip with `compress`, plus a D4RL-format copy at
    `export_hdf5`) -> its summary (id, path, steps, episodes, returns, speed, recipe, hdf5)."""
    path = write_minari(
        collection,
        dataset_id,
        algorithm_name=recipe,
        description=description,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        overwrite=overwrite,
    )
    if compress:
        compress_minari_dataset(path)
    summary = summarize_collection(collection, dataset_id, path)
    summary["recipe"] = recipe
    if export_hdf5 is not None:
        from recurrl.envs.datasets import export_hdf5 as write_hdf5

        dataset = collection.to_offline_dataset(dataset_id, ref_min_score=ref_min_score, ref_max_score=ref_max_score)
        summary["hdf5"] = str(write_hdf5(dataset, export_hdf5))
    return summary


def summarize_collection(collection: Collection, dataset_id: str, path: Path | None) -> dict[str, Any]:
    returns = collection.returns
    return {
        "dataset_id": dataset_id,
        "path": None if path is None else str(path),
        "steps": collection.num_steps,
        "episodes": len(returns),
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "seconds": round(collection.seconds, 2),
        "steps_per_second": round(collection.num_steps / max(collection.seconds, 1e-9), 1),
        "cpu_seconds": round(collection.cpu_seconds, 2),
        "steps_per_cpu_second": round(collection.num_steps / max(collection.cpu_seconds, 1e-9), 1),
    }


def format_summary(s: dict[str, Any]) -> str:
    return (
        f"{s['dataset_id']}: {s['steps']} steps, {s['episodes']} episodes, return mean {s['return_mean']:.1f} "
        f"(min {s['return_min']:.1f}, max {s['return_max']:.1f}); {s['steps_per_second']:.0f} steps/s "
        f"over {s['seconds']:.1f} s ({s['steps_per_cpu_second']:.0f} steps per CPU-second of this process) "
        f"-> {s['path']}"
    )
