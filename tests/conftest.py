"""Shared fixtures: small datasets on disk, an isolated Minari datasets folder, a TensorBoard log reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def scalar_steps() -> Callable[[Path, str], list[int]]:
    """Reads the steps TensorBoard shows for a tag in a run folder (after it purges the events a resumed
    run replaced): scalar_steps(run_dir, tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(run_dir: Path, tag: str) -> list[int]:
        events = EventAccumulator(str(run_dir))
        events.Reload()
        return [event.step for event in events.Scalars(tag)]

    return read


@pytest.fixture
def minari_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MINARI_DATASETS_PATH for one test."""
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_hopper_dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A D4RL-format hdf5 file: the first 12 episodes (~4k steps) of the embedded Hopper-v5 medium
    dataset, with env id and D4RL reference scores in its attributes. Load with envs.datasets.load_dataset."""
    from recurrl.envs.datasets import EMBEDDED_HOPPER_MEDIUM, export_hdf5, load_minari_dir

    dataset = load_minari_dir(EMBEDDED_HOPPER_MEDIUM, name="recurrl/hopper/medium-v0")
    dataset.episodes = dataset.episodes[:12]
    return export_hdf5(dataset, tmp_path_factory.mktemp("datasets") / "tiny-hopper-medium.hdf5")


@pytest.fixture(scope="session")
def tiny_pomdp_dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A D4RL-format hdf5 file of 8 CartPoleNoVel-v1 episodes by the noisy scripted expert (needs
    memory: the velocities are not observed). Load with envs.datasets.load_dataset."""
    from recurrl.envs.record import collect, make_policy

    policy = make_policy("scripted", "CartPoleNoVel-v1", num_envs=4, noise=0.3, seed=0)
    collection = collect("CartPoleNoVel-v1", policy, episodes=8, num_envs=4, seed=0, progress=False)
    from recurrl.envs.datasets import export_hdf5

    dataset = collection.to_offline_dataset("tiny-cartpole-novel")
    return export_hdf5(dataset, tmp_path_factory.mktemp("datasets") / "tiny-cartpole-novel.hdf5")
