"""docs/walkthrough.md, run: an env and an SB3 policy -> a dataset -> a trained, evaluated and exported
Decision agent, in four `recurrl` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recurrl.scripts.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_four_commands_from_an_sb3_policy_to_an_exported_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")  # recurrl[export]
    import torch
    from stable_baselines3 import PPO

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = PPO(
        "MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [16]}
    )
    model.learn(256)
    model.save("their_model.zip")  # what the user brings

    # 1. collect
    refs = ["--ref-min-score", "-1500", "--ref-max-score", "-150"]
    collect = ["collect", "--env", "Pendulum-v1", "--policy", "their_model.zip", "--episodes", "6", *refs]
    out = _run([*collect, "--num-envs", "2", "--no-progress"], capsys)
    assert out.startswith("recurrl/pendulum/their_model-v0: 1200 steps, 6 episodes")
    # 2. train (a tiny budget)
    small = ["model.hidden_dim=16", "model.num_layers=1", "batch_size=8", "eval.every=0", "eval.episodes=2"]
    train = ["train", "--dataset", "recurrl/pendulum/their_model-v0", "--run-name", "walk", "--steps", "20"]
    out = _run([*train, "--no-progress", *small], capsys)
    assert "on recurrl/pendulum/their_model-v0 (6 episodes, 1,200 steps)" in out
    assert "normalized score (last checkpoint, step 20" in out  # the reference scores collect stored
    checkpoint = tmp_path / "runs/walk/checkpoints/last"
    assert (checkpoint / "meta.json").is_file() and (checkpoint / "model.safetensors").is_file()
    # 3. evaluate
    out = _run(["evaluate", "runs/walk", "--episodes", "2", "--num-envs", "2"], capsys)
    line = next(x for x in out.splitlines() if x.startswith("runs/walk/checkpoints/last [stateful, step 20]"))
    returned = float(line.split("return ")[1].split()[0])
    assert -2000 < returned <= 0 and "normalized score" in line  # Pendulum's returns are in [-16.3 * 200, 0]
    # 4. export
    _run(["export", "runs/walk", "agent.onnx"], capsys)
    # The exported step acts as the checkpoint does: one tick from a fresh state.
    import json

    import recurrl

    spec = json.loads(Path("agent.json").read_text())
    feeds = {
        i["name"]: np.zeros([1 if d == "batch" else d for d in i["shape"]], dtype=i["dtype"])
        for i in spec["inputs"]
    }
    obs = np.array([[0.6, 0.8, -1.0]], dtype=np.float32)
    feeds.update(
        observation=obs, episode_start=np.array([True]), target_return=np.float32([spec["target_return"]])
    )
    action = onnxruntime.InferenceSession("agent.onnx").run(["action"], feeds)[0]
    expected, _ = recurrl.load("runs/walk").predict(obs)
    np.testing.assert_allclose(action, expected, atol=1e-5)
