"""`recurrl evaluate --video`: evaluation episodes filmed headless (MP4/GIF), for Decision and PPO
checkpoints; rendering that does not work is one line and leaves no file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recurrl.scripts.cli import main


@pytest.fixture(autouse=True)
def gl_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """--video sets MUJOCO_GL=egl for its process (here: pytest's); undone after each test."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def dt_checkpoint(runs: Path, tiny_hopper_dataset_path: Path) -> Path:
    """A tiny Decision agent on Hopper-v5 (an untrained Hopper falls within ~100 steps: a short film)."""
    small = ["model.hidden_dim=16", "model.num_layers=1", "batch_size=8", "eval.every=0", "eval.episodes=1"]
    args = ["--dataset", str(tiny_hopper_dataset_path), "--runs-dir", str(runs), "--run-name", "dt"]
    assert main(["train", *args, "--steps", "10", "--no-progress", *small, "eval.num_envs=1"]) == 0
    return runs / "dt/checkpoints/last"


def test_a_decision_episode_is_filmed_as_mp4(dt_checkpoint: Path, tmp_path: Path, capsys) -> None:
    import imageio.v2 as imageio

    videos = tmp_path / "videos"
    assert (
        main(["evaluate", str(dt_checkpoint), "--episodes", "1", "--num-envs", "1", "--video", str(videos)])
        == 0
    )
    out = capsys.readouterr().out
    mp4 = videos / "dt-last-episode0.mp4"
    assert f"video: {mp4}" in out and "return" in out
    assert [p.name for p in videos.iterdir()] == [mp4.name]  # one episode by default, no temporary files
    reader = imageio.get_reader(mp4)
    assert reader.count_frames() > 1 and reader.get_meta_data()["fps"] == 125  # Hopper's render_fps
    assert np.asarray(reader.get_data(0)).std() > 0  # a picture, not a blank frame


@pytest.mark.slow  # ~40 s: MuJoCo renders in software here (~0.3 s a frame under load)
def test_ppo_episodes_are_filmed_as_gif(runs: Path, tmp_path: Path) -> None:
    import imageio.v2 as imageio

    ppo = ["--env", "Hopper-v5", "--run-dir", str(runs / "ppo"), "--no-progress", "--total-steps", "128"]
    assert main(["train-ppo", *ppo, "hidden_dim=16", "num_envs=2", "num_steps=64", "num_minibatches=1"]) == 0
    videos = tmp_path / "videos"
    args = ["evaluate", str(runs / "ppo/checkpoints/last"), "--episodes", "1", "--num-envs", "1"]
    assert main([*args, "--video", str(videos), "--video-format", "gif", "--video-episodes", "2"]) == 0
    gifs = sorted(p.name for p in videos.iterdir())
    assert gifs == ["ppo-last-episode0.gif", "ppo-last-episode1.gif"]
    assert all(len(imageio.mimread(videos / g)) > 1 for g in gifs)


def test_rendering_unavailable_is_one_line_and_writes_nothing(
    dt_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    def broken(self):  # noqa: ANN001, ANN202  (what a missing GL backend does, e.g. osmesa without libOSMesa)
        raise AttributeError("'NoneType' object has no attribute 'glGetError'")

    monkeypatch.setattr(MujocoEnv, "render", broken)
    videos = tmp_path / "videos"
    args = ["evaluate", str(dt_checkpoint), "--episodes", "1", "--video", str(videos)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MUJOCO_GL=egl" in err and "osmesa" in err and len(err.strip().splitlines()) == 1
    assert not videos.exists() or not any(videos.iterdir())


def test_a_failure_mid_episode_leaves_no_partial_video(
    dt_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    real, calls = MujocoEnv.render, []

    def fails_later(self):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) > 4:  # the check's frame and a few recorded ones, then the renderer dies
            raise ValueError("renderer lost")
        return real(self)

    monkeypatch.setattr(MujocoEnv, "render", fails_later)
    videos = tmp_path / "videos"
    args = ["evaluate", str(dt_checkpoint), "--episodes", "1", "--video", str(videos)]
    assert main(args) == 2
    assert list(videos.iterdir()) == []
