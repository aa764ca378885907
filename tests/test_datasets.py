"""Loading offline datasets: Minari ids and directories, D4RL hdf5, scores, and bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from recurrl.envs.datasets import (
    EMBEDDED_HOPPER_MEDIUM,
    dataset_summary,
    export_hdf5,
    load_dataset,
)
from recurrl.envs.episodes import OfflineDataset
from recurrl.envs.minari_writer import write_minari
from recurrl.envs.record import collect, make_policy
from recurrl.envs.scores import d4rl_reference_scores, normalized_score


def _cartpole_collection(episodes: int = 4):
    policy = make_policy("scripted", "CartPoleNoVel-v1", num_envs=2, noise=0.4, seed=1)
    return collect("CartPoleNoVel-v1", policy, episodes=episodes, num_envs=2, seed=1, progress=False)


def _assert_same_episodes(a: OfflineDataset, b: OfflineDataset) -> None:
    assert len(a.episodes) == len(b.episodes)
    for x, y in zip(a.episodes, b.episodes, strict=True):
        for field in (
            "observations",
            "actions",
            "rewards",
            "terminations",
            "truncations",
            "final_observation",
        ):
            left, right = getattr(x, field), getattr(y, field)
            assert left.dtype == right.dtype, field
            np.testing.assert_array_equal(left, right, err_msg=field)
    assert a.env_id == b.env_id
    assert (a.ref_min_score, a.ref_max_score) == (b.ref_min_score, b.ref_max_score)


def test_collect_minari_round_trip(minari_path: Path) -> None:
    collection = _cartpole_collection()
    path = write_minari(
        collection, "test/cartpole/scripted-v0", algorithm_name="scripted", description="test"
    )
    assert path == minari_path / "test" / "cartpole" / "scripted-v0"

    by_id = load_dataset("test/cartpole/scripted-v0")  # a Minari id under a temporary MINARI_DATASETS_PATH
    assert by_id.env_id == "CartPoleNoVel-v1"
    assert len(by_id.episodes) == 4
    for episode, obs, actions, rewards in zip(
        by_id.episodes, collection.observations, collection.actions, collection.rewards, strict=True
    ):
        # Minari keeps T+1 observations: T at which actions were taken, then the final one.
        np.testing.assert_array_equal(episode.observations, obs[:-1])
        np.testing.assert_array_equal(episode.final_observation, obs[-1])
        np.testing.assert_array_equal(episode.actions, actions)
        np.testing.assert_allclose(episode.rewards, rewards)
        assert episode.terminations[-1] or episode.truncations[-1]
        assert not (episode.terminations[:-1].any() or episode.truncations[:-1].any())
    _assert_same_episodes(by_id, load_dataset(path))  # the dataset directory
    _assert_same_episodes(by_id, load_dataset(path / "data"))  # or its data/ folder
    assert by_id.make_env().observation_space.shape == (2,)


def test_hdf5_export_gives_identical_episodes(minari_path: Path, tmp_path: Path) -> None:
    write_minari(_cartpole_collection(), "test/cartpole/x-v0", algorithm_name="scripted", description="test")
    original = load_dataset("test/cartpole/x-v0")
    for compression in (None, "gzip"):
        copy = load_dataset(
            export_hdf5(original, tmp_path / f"copy-{compression}.hdf5", compression=compression)
        )
        _assert_same_episodes(original, copy)
        with h5py.File(tmp_path / f"copy-{compression}.hdf5") as file:
            assert file["observations"].shape == (original.num_steps, 2)
            np.testing.assert_array_equal(file["next_observations"][0], original.episodes[0].observations[1])


def test_embedded_hopper_medium_is_the_fallback(minari_path: Path) -> None:
    assert EMBEDDED_HOPPER_MEDIUM.is_dir()
    dataset = load_dataset("recurrl/hopper/medium-v0")
    assert dataset.env_id == "Hopper-v5"
    assert dataset.num_steps == 100_000
    assert (dataset.ref_min_score, dataset.ref_max_score) == d4rl_reference_scores("hopper")
    assert dataset.episodes[0].observations.shape[1:] == (11,)
    assert dataset.episodes[0].actions.shape[1:] == (3,)
    mean = dataset.stats.returns.mean()
    assert 25 < dataset.normalized_score(mean) < 55  # "medium": about a third of expert
    summary = dataset_summary(dataset)
    assert summary["episodes"] == len(dataset.episodes) and summary["steps"] == 100_000


def test_tiny_fixtures_load(tiny_hopper_dataset_path: Path, tiny_pomdp_dataset_path: Path) -> None:
    hopper = load_dataset(tiny_hopper_dataset_path)
    assert len(hopper.episodes) == 12 and hopper.env_id == "Hopper-v5"
    assert hopper.ref_max_score == 3234.3
    pomdp = load_dataset(tiny_pomdp_dataset_path)
    assert pomdp.env_id == "CartPoleNoVel-v1" and len(pomdp.episodes) == 8
    assert pomdp.episodes[0].actions.dtype == np.int64


def test_normalized_scores_against_hand_computed_values() -> None:
    # 100 * (R - min) / (max - min), computed by hand from D4RL's reference returns
    assert normalized_score(1000.0, *d4rl_reference_scores("Hopper-v5")) == pytest.approx(
        31.34889040, abs=1e-6
    )
    assert normalized_score(6000.0, *d4rl_reference_scores("halfcheetah")) == pytest.approx(
        50.58468328, abs=1e-6
    )
    assert normalized_score(2000.0, *d4rl_reference_scores("walker2d-medium-v2")) == pytest.approx(
        43.53113075, abs=1e-6
    )
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    np.testing.assert_allclose(normalized_score(np.array([0.0, 10.0]), 0.0, 20.0), [0.0, 50.0])


def test_no_reference_scores_is_an_explicit_error(tiny_pomdp_dataset_path: Path) -> None:
    dataset = load_dataset(tiny_pomdp_dataset_path)
    with pytest.raises(ValueError, match="no reference scores"):
        dataset.normalized_score(100.0)
    with pytest.raises(ValueError, match="no reference scores"):
        normalized_score(1.0, None, 5.0)
    with pytest.raises(ValueError, match="no D4RL reference scores"):
        d4rl_reference_scores("CartPole-v1")


def test_d4rl_file_name_gives_env_and_scores(tiny_hopper_dataset_path: Path, tmp_path: Path) -> None:
    # A file as D4RL ships it: no attributes; the task name in the file name selects env and scores.
    path = tmp_path / "hopper-medium-v2.hdf5"
    path.write_bytes(tiny_hopper_dataset_path.read_bytes())
    with h5py.File(path, "a") as file:
        for key in list(file.attrs):
            del file.attrs[key]
    dataset = load_dataset(path)
    assert dataset.env_id == "Hopper-v5"
    assert (dataset.ref_min_score, dataset.ref_max_score) == (-20.272305, 3234.3)
    anonymous = tmp_path / "data.hdf5"
    path.rename(anonymous)
    with pytest.raises(ValueError, match="env_id"):
        load_dataset(anonymous)
    assert load_dataset(anonymous, env_id="Hopper-v5").ref_max_score is None


def _write_d4rl(path: Path, steps: int = 30, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(steps, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(steps, 3)).astype(np.float32),
        "rewards": rng.normal(size=steps).astype(np.float32),
        "terminals": np.zeros(steps, dtype=bool),
        "timeouts": np.zeros(steps, dtype=bool),
    }
    arrays["terminals"][9] = True
    arrays["timeouts"][19] = True
    arrays.update(overrides)
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            if value is not None:
                file[key] = value
        file.attrs["env_id"] = "Hopper-v5"
    return path


def test_d4rl_split_on_terminals_and_timeouts(tmp_path: Path) -> None:
    dataset = load_dataset(_write_d4rl(tmp_path / "d.hdf5"))
    assert [len(e) for e in dataset.episodes] == [10, 10, 10]
    assert dataset.episodes[0].terminations[-1] and not dataset.episodes[0].truncations[-1]
    assert dataset.episodes[1].truncations[-1] and not dataset.episodes[1].terminations[-1]
    # the steps after the last boundary: a cut-off episode, marked as a truncation
    assert dataset.episodes[2].truncations[-1] and not dataset.episodes[2].terminations.any()
    assert dataset.episodes[0].final_observation is None  # no next_observations in the file


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timeouts": None}, r"missing required key\(s\) \['timeouts'\]"),
        ({"rewards": np.zeros(29, dtype=np.float32)}, "mismatched lengths"),
        ({"observations": np.full((30, 11), np.nan, dtype=np.float32)}, "observations contain NaN or Inf"),
        ({"rewards": np.array([0.0] * 29 + [np.inf], dtype=np.float32)}, "rewards contain NaN or Inf"),
        ({"observations": np.zeros((30, 7), dtype=np.float32)}, r"observations have shape \(7,\)"),
        ({"actions": np.zeros((30, 6), dtype=np.float32)}, r"actions have shape \(6,\)"),
    ],
)
def test_bad_hdf5_is_a_clear_error(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _write_d4rl(tmp_path / "bad.hdf5", **overrides)
    with pytest.raises(ValueError, match=message):
        load_dataset(path)


def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_d4rl(tmp_path / "whole.hdf5", steps=2000)
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt or not hdf5"):
        load_dataset(cut)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(ValueError, match="truncated, corrupt or not hdf5"):
        load_dataset(garbage)


def test_minari_dataset_for_another_env_is_rejected(minari_path: Path) -> None:
    path = write_minari(
        _cartpole_collection(2), "test/cartpole/y-v0", algorithm_name="scripted", description="t"
    )
    with pytest.raises(ValueError, match="observations have shape"):
        load_dataset(path, env_id="Hopper-v5")


def test_missing_dataset_names_what_was_looked_for_and_both_ways_to_get_it(minari_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("mujoco/hopper/expert-v0")
    message = str(error.value)
    assert str(minari_path / "mujoco" / "hopper" / "expert-v0") in message
    assert "minari download mujoco/hopper/expert-v0" in message
    assert "recurrl collect" in message
    with pytest.raises(FileNotFoundError, match=r"recurrl collect --suite d4rl --env Walker2d-v5"):
        load_dataset("recurrl/walker2d/medium-v0")
    with pytest.raises(FileNotFoundError, match="no dataset file or directory"):
        load_dataset("./nowhere.hdf5")
    with pytest.raises(ValueError, match="not a Minari dataset directory"):
        load_dataset(minari_path)


def test_large_minari_datasets_are_cached_flat(
    minari_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recurrl.envs.minari_dir as datasets_module

    monkeypatch.setenv("RECURRL_DATASET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets_module, "CACHE_MIN_EPISODES", 2)
    write_minari(_cartpole_collection(3), "test/cartpole/c-v0", algorithm_name="scripted", description="t")
    first = load_dataset("test/cartpole/c-v0")
    cached = list((tmp_path / "cache").glob("*.hdf5"))
    assert len(cached) == 1
    second = load_dataset("test/cartpole/c-v0")  # now read from the flat copy
    assert second.name == "test/cartpole/c-v0"
    _assert_same_episodes(first, second)
    monkeypatch.setenv("RECURRL_DATASET_CACHE", "off")
    _assert_same_episodes(first, load_dataset("test/cartpole/c-v0"))
