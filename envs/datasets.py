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
raises ValueError rather than returning part of a dataset. One reader per format: envs.minari_dir,
envs.d4rl_hdf5 (which also writes that format); their shared checks are envs.dataset_checks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from recurrl.envs.d4rl_hdf5 import export_hdf5, load_hdf5
from recurrl.envs.episodes import OfflineDataset
from recurrl.envs.minari_dir import load_minari_dir
from recurrl.envs.scores import D4RL_ENV_IDS

DATA_DIR = Path(__file__).resolve().parent / "data"
# A D4RL-style Hopper-v5 "medium" dataset recorded by `recurrl collect` (see envs/data/README.md).
EMBEDDED_HOPPER_MEDIUM = DATA_DIR / "hopper-medium-v0"
# Minari ids that fall back to a copy shipped with the package when not found locally.
EMBEDDED_DATASETS: dict[str, Path] = {"recurrl/hopper/medium-v0": EMBEDDED_HOPPER_MEDIUM}

_MINARI_ID = re.compile(r"^([\w.-]+/)*[\w.-]+-v\d+$")


def minari_datasets_path() -> Path:
    """Where Minari keeps local datasets (MINARI_DATASETS_PATH, else ~/.minari/datasets)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def load_dataset(
    source: str | os.PathLike, *, download: bool = False, env_id: str | None = None, clip_actions: bool = False
) -> OfflineDataset:
    """Load a Minari id, a Minari dataset directory or a D4RL-format hdf5 file (see module doc).

    `env_id` overrides the evaluation env (needed for datasets that do not name one). Actions outside
    that env's action space are an error, or clipped to its bounds (with a warning) by `clip_actions`.
    """
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return load_hdf5(path, env_id=env_id, clip_actions=clip_actions)
    if path.is_dir():
        return load_minari_dir(path, env_id=env_id, clip_actions=clip_actions)
    text = str(source)
    if text.endswith((".hdf5", ".h5")) or text.startswith((".", "/", "~")) or not _MINARI_ID.match(text):
        raise FileNotFoundError(
            f"no dataset file or directory at {path}: give a D4RL-format .hdf5 file, a Minari dataset "
            f"directory, or a Minari id like 'mujoco/hopper/medium-v0' ({_how_to_get(None)})"
        )
    return load_minari_id(text, download=download, env_id=env_id, clip_actions=clip_actions)


def load_minari_id(
    dataset_id: str, *, download: bool = False, env_id: str | None = None, clip_actions: bool = False
) -> OfflineDataset:
    local = minari_datasets_path() / dataset_id
    options: dict[str, Any] = {"env_id": env_id, "name": dataset_id, "clip_actions": clip_actions}
    if (local / "data").is_dir():
        return load_minari_dir(local, **options)
    if dataset_id in EMBEDDED_DATASETS and EMBEDDED_DATASETS[dataset_id].is_dir():
        return load_minari_dir(EMBEDDED_DATASETS[dataset_id], **options)
    if download:
        check_download_support()
        import minari

        try:
            minari.download_dataset(dataset_id)
        except Exception as error:  # network down, unknown id, incompatible version: all end the same way
            raise FileNotFoundError(
                f"could not download Minari dataset {dataset_id!r} ({type(error).__name__}: {error}); "
                f"{_how_to_get(dataset_id)}"
            ) from error
        return load_minari_dir(local, **options)
    raise FileNotFoundError(
        f"dataset {dataset_id!r} not found: looked for a Minari dataset at {local} "
        f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '<unset>')}) and for a file or "
        f"directory named {dataset_id!r}; {_how_to_get(dataset_id)}"
    )


# What Minari's remote (Hugging Face, its default since 0.5) needs beyond minari itself.
DOWNLOAD_PACKAGES = ("huggingface_hub",)


def check_download_support() -> None:
    """--download needs the `download` extra; say so before trying (Minari's own error names its extra)."""
    import importlib.util

    missing = [name for name in DOWNLOAD_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--download fetches from Minari's remote, which needs {', '.join(missing)} (not installed): "
            "pip install 'recurrl[download]'"
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


__all__ = ["EMBEDDED_HOPPER_MEDIUM", "dataset_summary", "export_hdf5", "load_dataset", "load_hdf5", "load_minari_dir"]
