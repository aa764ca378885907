"""`recurrl collect` from any policy: zoo folders for any env, SB3 model zips (with VecNormalize), recurrl
PPO checkpoints (state carried per env), and reference scores given on the command line."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recurrl.envs.behavior import load_behavior_policy
from recurrl.envs.datasets import load_dataset
from recurrl.envs.sb3_models import sb3_algo
from recurrl.scripts.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECURRL_BEHAVIOR_CACHE", str(tmp_path / "cache"))  # converted VecNormalize stats


@pytest.fixture(scope="module")
def pendulum_sb3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A briefly trained SB3 PPO on Pendulum-v1 (observations VecNormalized) -> (model.zip, vecnormalize.pkl)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sb3")
    envs = VecNormalize(make_vec_env("Pendulum-v1", 2, seed=0), norm_reward=False)
    model = PPO(
        "MlpPolicy", envs, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [16]}, seed=0
    )
    model.learn(256)
    model.save(folder / "model.zip")
    envs.save(str(folder / "vecnormalize.pkl"))
    return folder / "model.zip", folder / "vecnormalize.pkl"


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny recurrl PPO run (minGRU) on CartPoleNoVel-v1."""
    run = tmp_path_factory.mktemp("ppo") / "run"
    args = [
        "train-ppo",
        "--env",
        "CartPoleNoVel-v1",
        "--run-dir",
        str(run),
        "--no-progress",
        "--total-steps",
        "256",
    ]
    assert main([*args, "hidden_dim=16", "num_envs=4", "num_steps=64"]) == 0
    return run


def _collect(tmp_path: Path, *args: str) -> int:
    return main(["collect", "--datasets-path", str(tmp_path / "minari"), "--no-progress", *args])


def test_zoo_folder_for_any_env(tmp_path: Path, pendulum_sb3: tuple[Path, Path]) -> None:
    """ALGO/ENV_NAME/ found for an env outside the old table; its actions are the SB3 model's."""
    from stable_baselines3 import PPO

    folder = tmp_path / "zoo" / "ppo" / "Pendulum"
    folder.mkdir(parents=True)
    (folder / "model.zip").write_bytes(pendulum_sb3[0].read_bytes())
    (folder / "config.yml").write_text("policy: MlpPolicy\npolicy_kwargs: dict(net_arch=[16])\n")
    policy = load_behavior_policy("ppo", "Pendulum-v1", root=tmp_path / "zoo")
    assert policy.name == "ppo/Pendulum" and policy.normalizer is None
    obs = np.random.default_rng(0).uniform(-1, 1, size=(5, 3))
    expected, _ = PPO.load(pendulum_sb3[0], device="cpu").predict(obs, deterministic=True)
    np.testing.assert_allclose(policy(obs), expected, atol=1e-5)

    with pytest.raises(FileNotFoundError) as error:
        load_behavior_policy("ppo", "Acrobot-v1", root=tmp_path / "zoo")
    message = str(error.value)
    assert str(tmp_path / "zoo" / "ppo" / "Acrobot") in message and "has Pendulum" in message


def test_collect_from_an_sb3_zip_with_vecnormalize(tmp_path: Path, pendulum_sb3: tuple[Path, Path]) -> None:
    from stable_baselines3 import PPO

    from recurrl.envs.behavior import load_obs_normalizer

    zip_path, stats = pendulum_sb3
    args = ["--env", "Pendulum-v1", "--policy", str(zip_path), "--vecnormalize", str(stats), "--steps", "300"]
    assert _collect(tmp_path, *args, "--num-envs", "2", "--dataset-id", "test/pendulum/sb3-v0") == 0
    dataset = load_dataset(str(tmp_path / "minari" / "test" / "pendulum" / "sb3-v0"))
    assert dataset.num_steps == 300 and dataset.ref_min_score is None
    # The recorded actions are the model's on the normalized observations, not on the raw ones.
    episode = dataset.episodes[0]
    model, normalize = PPO.load(zip_path, device="cpu"), load_obs_normalizer(stats)
    expected, _ = model.predict(normalize(episode.observations[:20]).astype(np.float32), deterministic=True)
    np.testing.assert_allclose(episode.actions[:20], expected, atol=1e-5)
    raw, _ = model.predict(episode.observations[:20], deterministic=True)
    assert not np.allclose(raw, expected, atol=1e-3)


def test_sb3_zip_is_unpickled_once_per_process(
    tmp_path: Path, pendulum_sb3: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory's up-front check and the policy built in the same process share one load; a rewritten
    zip is read again."""
    from recurrl.envs import sb3_models

    real, loads = sb3_models.load_sb3_model, []
    monkeypatch.setattr(sb3_models, "load_sb3_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    sb3_models._cached_model.cache_clear()
    zip_path = tmp_path / "model.zip"
    zip_path.write_bytes(pendulum_sb3[0].read_bytes())
    factory = sb3_models.sb3_policy_factory(zip_path, None, None)
    factory("Pendulum-v1", num_envs=1)
    factory("Pendulum-v1", num_envs=1)
    assert len(loads) == 1
    stat = zip_path.stat()
    os.utime(zip_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    factory("Pendulum-v1", num_envs=1)
    assert len(loads) == 2


def test_sb3_zip_errors_are_one_line(
    tmp_path: Path, pendulum_sb3: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    zip_path = pendulum_sb3[0]
    not_sb3 = tmp_path / "other.zip"
    with zipfile.ZipFile(not_sb3, "w") as archive:
        archive.writestr("data", "{}")
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    cases = [
        (["--env", "Acrobot-v1", "--policy", str(zip_path)], "trained on observation space"),
        (["--env", "Pendulum-v1", "--policy", str(not_sb3)], "not a Stable-Baselines3 model zip"),
        (["--env", "Pendulum-v1", "--policy", str(text)], "not a Stable-Baselines3 model zip"),
        (["--env", "Pendulum-v1", "--policy", str(tmp_path / "missing.zip")], "no such file"),
        (
            ["--env", "Pendulum-v1", "--policy", "random", "--algo", "ppo"],
            "--algo and --vecnormalize are for",
        ),
        (["--env", "Pendulum-v1", "--policy", "random", "--ref-min-score", "0"], "give both --ref-min-score"),
    ]
    for args, expected in cases:
        assert _collect(tmp_path, *args, "--steps", "10") == 2, args
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.hdf5"))  # no dataset, not even part of one


def test_vecnormalize_width_mismatch_is_one_line(
    tmp_path: Path, pendulum_sb3: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    wide = tmp_path / "acrobot-vecnormalize.pkl"  # Acrobot observes 6 numbers, Pendulum 3
    VecNormalize(make_vec_env("Acrobot-v1", 1)).save(str(wide))
    args = [
        "--env",
        "Pendulum-v1",
        "--policy",
        str(pendulum_sb3[0]),
        "--vecnormalize",
        str(wide),
        "--steps",
        "10",
    ]
    assert _collect(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert "shape (6,)" in err and "shape (3,)" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.hdf5"))


def test_algorithm_is_read_from_the_zip(tmp_path: Path) -> None:
    from stable_baselines3 import A2C, DQN, SAC

    for algorithm, env_id, name in (
        (A2C, "CartPole-v1", "a2c"),
        (DQN, "CartPole-v1", "dqn"),
        (SAC, "Pendulum-v1", "sac"),
    ):
        path = tmp_path / f"{name}.zip"
        algorithm("MlpPolicy", env_id, policy_kwargs={"net_arch": [8]}).save(path)
        assert sb3_algo(path) == name


def test_collect_from_a_recurrl_ppo_checkpoint_carries_state(tmp_path: Path, ppo_run: Path) -> None:
    """Replaying each recorded episode through `predict` from a fresh state gives the recorded actions
    (state carried per env, reset at episode starts); without the state the actions differ."""
    import recurrl

    args = ["--env", "CartPoleNoVel-v1", "--policy", str(ppo_run), "--episodes", "4", "--num-envs", "2"]
    assert _collect(tmp_path, *args, "--dataset-id", "test/cartpole/ppo-v0") == 0
    dataset = load_dataset(str(tmp_path / "minari" / "test" / "cartpole" / "ppo-v0"))
    assert len(dataset.episodes) == 4
    agent = recurrl.load(ppo_run)
    stateless_differs = False
    for episode in dataset.episodes:
        state, replayed, stateless = None, [], []
        for t, obs in enumerate(episode.observations):
            action, state = agent.predict(obs[None], state, episode_start=t == 0)
            replayed.append(int(action[0]))
            stateless.append(int(agent.predict(obs[None])[0][0]))
        np.testing.assert_array_equal(episode.actions, replayed)
        stateless_differs |= replayed != stateless
    assert stateless_differs


def test_reference_scores_from_the_command_line(tmp_path: Path) -> None:
    from recurrl.agents.decision.model_io import EnvSpec

    refs = ["--ref-min-score", "-1500", "--ref-max-score", "-150"]
    assert _collect(tmp_path, "--env", "Pendulum-v1", "--policy", "random", "--steps", "200", *refs) == 0
    dataset = load_dataset(str(tmp_path / "minari" / "recurrl" / "pendulum" / "random-v0"))
    assert (dataset.ref_min_score, dataset.ref_max_score) == (-1500.0, -150.0)
    assert EnvSpec.from_dataset(dataset).normalized(np.array([-150.0, -825.0])).tolist() == [100.0, 50.0]


def test_without_reference_scores_train_and_evaluate_say_returns_are_raw(tmp_path: Path, capsys) -> None:
    from recurrl.scripts.train import RAW_RETURNS_NOTE

    assert _collect(tmp_path, "--env", "Pendulum-v1", "--policy", "random", "--episodes", "2") == 0
    dataset = str(tmp_path / "minari" / "recurrl" / "pendulum" / "random-v0")
    small = ["model.hidden_dim=8", "model.num_layers=1", "batch_size=4", "eval.every=0", "eval.episodes=1"]
    train = ["train", "--dataset", dataset, "--runs-dir", str(tmp_path), "--run-name", "raw", "--steps", "2"]
    assert main([*train, "--no-progress", *small, "eval.num_envs=1"]) == 0
    out = capsys.readouterr().out
    assert RAW_RETURNS_NOTE in out and "normalized score (" not in out.replace(RAW_RETURNS_NOTE, "")
    assert main(["evaluate", str(tmp_path / "raw"), "--episodes", "1", "--num-envs", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        RAW_RETURNS_NOTE in out and "return " in out and "normalized" not in out.replace(RAW_RETURNS_NOTE, "")
    )
