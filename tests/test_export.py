"""`recurrl export`: the exported ONNX step, run by onnxruntime with its state fed back, gives the actions
`predict` gives over full episodes (every backbone, Decision and PPO, batched too); bad input is one
line with nothing left behind; the latency report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_agents import decision_checkpoint, one_thread, ppo_checkpoint, single_env_returns

import recurrl
from recurrl.agents.checkpoint import save_checkpoint
from recurrl.agents.export import export_onnx
from recurrl.policies.backbones.base import Backbone

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


class OnnxAgent:
    """The exported step driven as its JSON says: state.* inputs start at zeros, next.* outputs go back."""

    def __init__(self, path: Path, batch: int = 1) -> None:
        self.info = json.loads(path.with_suffix(".json").read_text())
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in self.info["outputs"]]
        self.state = {
            i["name"]: np.zeros([batch, *i["shape"][1:]], dtype=np.dtype(i["dtype"]))
            for i in self.info["inputs"]
            if i["name"].startswith("state.")
        }

    def step(self, **inputs: np.ndarray) -> np.ndarray:
        out = dict(zip(self.outputs, self.session.run(None, {**inputs, **self.state}), strict=True))
        self.state = {"state." + k.removeprefix("next."): v for k, v in out.items() if k.startswith("next.")}
        return out["action"]


def compare_over_episodes(agent: Any, onnx: OnnxAgent, episodes: int = 2) -> tuple[float, int]:
    """Run `predict` in the env and the ONNX step on the same inputs each tick
    -> (max |action diff|, the longest episode's length)."""
    diffs: list[float] = []
    lengths: list[int] = []

    def hook(obs: Any, reward: float, start: bool, action: np.ndarray) -> None:
        feeds = {"observation": np.asarray(obs, np.float32).reshape(1, -1)}
        if "episode_start" in {i["name"] for i in onnx.info["inputs"]}:  # not for the stateless MLP
            feeds["episode_start"] = np.array([start])
        if onnx.info["kind"] == "decision":
            feeds.update(
                reward=np.array([reward], np.float32),
                target_return=np.array([agent.target_return], np.float32),
            )
        got = onnx.step(**feeds)[0]
        diffs.append(float(np.max(np.abs(got - action))))
        if start:
            lengths.append(0)
        lengths[-1] += 1

    single_env_returns(agent, episodes, seed=0, hook=hook)
    return max(diffs), max(lengths)


@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "lstm", "gru", "transformer", "mamba"])
def test_decision_onnx_step_matches_predict_over_full_episodes(
    tmp_path: Path, tiny_hopper_dataset_path: Path, backbone: str
) -> None:
    agent = recurrl.load(decision_checkpoint(tmp_path / "ckpt", tiny_hopper_dataset_path, backbone))
    info = export_onnx(agent, tmp_path / "out" / "step.onnx")
    names = [i["name"] for i in info["inputs"]]
    assert names[:4] == ["observation", "reward", "episode_start", "target_return"]
    assert sum(n.startswith("state.backbone.") for n in names) == {
        "lstm": 2,
        "transformer": 3,
        "mamba": 2,
    }.get(backbone, 1)
    diff, ticks = compare_over_episodes(agent, OnnxAgent(tmp_path / "out" / "step.onnx"))
    assert ticks > 20 and diff < 1e-4  # an episode outlasts the Transformer's 20-token KV window
    # Batched: three envs in one call of the same graph.
    onnx, state = OnnxAgent(tmp_path / "out" / "step.onnx", batch=3), None
    obs, reward = np.random.default_rng(0).normal(size=(3, 11)).astype(np.float32), np.ones(3, np.float32)
    for t in range(4):
        start = np.array([t == 0, t == 0, t in (0, 2)])
        action, state = agent.predict(obs, state, episode_start=start, reward=reward)
        got = onnx.step(
            observation=obs, reward=reward, episode_start=start, target_return=np.full(3, 3600.0, np.float32)
        )
        assert np.allclose(got, action, atol=1e-4)


@pytest.mark.parametrize(
    "model", [{"tokens": "triple"}, {"previous_actions": False}], ids=["triple", "no-prev"]
)
def test_discrete_decision_export(tmp_path: Path, tiny_pomdp_dataset_path: Path, model: dict) -> None:
    ckpt = decision_checkpoint(tmp_path / "ckpt", tiny_pomdp_dataset_path, "lstm", target=60.0, **model)
    agent = recurrl.load(ckpt)
    info = export_onnx(agent, tmp_path / "step.onnx")
    assert ("state.prev_action" in {i["name"] for i in info["inputs"]}) == ("tokens" in model)
    diff, ticks = compare_over_episodes(agent, OnnxAgent(tmp_path / "step.onnx"), episodes=3)
    assert diff == 0 and ticks > 5


@pytest.mark.parametrize(
    "env_id,options",
    [
        ("CartPoleNoVel-v1", {}),
        ("CartPoleNoVel-v1", {"backbone": "mlp"}),
        ("PendulumNoVel-v1", {"shared_backbone": False}),
    ],
    ids=["discrete-mingru", "discrete-mlp", "continuous-separate-critic"],
)
def test_ppo_onnx_step_matches_predict_over_full_episodes(tmp_path: Path, env_id: str, options: dict) -> None:
    agent = recurrl.load(ppo_checkpoint(tmp_path / "run", env_id, **options))
    info = export_onnx(agent, tmp_path / "ppo.onnx")
    names = ["observation"] + ([] if options.get("backbone") == "mlp" else ["episode_start", "state.actor.0"])
    assert [i["name"] for i in info["inputs"]] == names  # the actor's state only; the MLP has none
    diff, ticks = compare_over_episodes(agent, OnnxAgent(tmp_path / "ppo.onnx"))
    assert ticks >= 8 and diff < 1e-4
    assert ("log_std" in info) == (env_id == "PendulumNoVel-v1")


class NumpyBackbone(Backbone):
    """A backbone whose step leaves torch (as a compiled kernel does): a tracer cannot record it."""

    name = "numpy_rnn"

    def state_shapes(self) -> list:
        return [((self.hidden_dim,), torch.float32)]

    def _forward(self, x, state, episode_starts):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _step(self, x, state):  # type: ignore[no-untyped-def]
        h = torch.from_numpy(np.tanh(x.detach().numpy() + state[0].detach().numpy()))
        return h, (h,)


def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_hopper_dataset_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recurrl.scripts.cli import main

    ckpt = decision_checkpoint(tmp_path / "ckpt", tiny_hopper_dataset_path, "gru")
    out = tmp_path / "out"
    out.mkdir()
    agent = recurrl.load(ckpt)
    agent.model.backbone, agent.model.backbone_name = NumpyBackbone(16, 16), "numpy_rnn"
    with pytest.raises(
        ValueError,
        match=r"the 'numpy_rnn' backbone \(decision agent\) cannot be exported to ONNX: .*computes outside the torch ops",
    ):
        export_onnx(agent, out / "a.onnx")
    (tmp_path / "file").write_text("")
    save_checkpoint(tmp_path / "sac", {"w": torch.zeros(1)}, {"kind": "sac"})
    cases = [
        ([str(tmp_path / "sac"), str(out / "b.onnx")], "unknown checkpoint kind 'sac'"),
        ([str(ckpt), str(out / "c.txt")], "must end in .onnx"),
        ([str(ckpt), str(out)], "must end in .onnx"),
        ([str(ckpt), str(tmp_path / "d.onnx")], None),  # made below as a directory
        ([str(ckpt), str(tmp_path / "file" / "e.onnx")], "cannot write"),
        ([str(tmp_path / "nowhere"), str(out / "f.onnx")], "does not exist"),
    ]
    (tmp_path / "d.onnx").mkdir()
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("recurrl export: error:")
        assert (message or "is a directory") in err
    assert sorted(p.name for p in out.iterdir()) == []  # no half-written ONNX or JSON, no temporaries
    assert list((tmp_path / "d.onnx").iterdir()) == []


def test_cli_export_with_latency(
    tmp_path: Path, tiny_hopper_dataset_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recurrl.scripts.cli import main

    ckpt = decision_checkpoint(tmp_path / "run/checkpoints/last", tiny_hopper_dataset_path, "mingru")
    out = tmp_path / "policy.onnx"
    assert (
        main(["export", str(tmp_path / "run"), str(out), "--latency", "--ticks", "5", "--rounds", "2"]) == 0
    )
    text = capsys.readouterr().out
    assert f"wrote {out} and its description {out.with_suffix('.json')}" in text
    assert "per tick at B=1" in text and "onnxruntime" in text and "PyTorch" in text
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["kind"] == "decision" and info["checkpoint"] == str(tmp_path / "run") and ckpt.is_dir()
    assert [o["name"] for o in info["outputs"]][:2] == ["action", "next.returns_to_go"]
