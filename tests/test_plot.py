"""`recurrl plot`: learning curves from runs' TensorBoard logs, seeds of one experiment as mean and band."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from recurrl.agents.curves import group_curves, plot_learning_curves, read_curve

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(path: Path, config: dict, scalars: dict[str, list[tuple[int, float]]]) -> Path:
    """A run directory as the trainers leave it: config.json and TensorBoard events."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    writer = SummaryWriter(str(path))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    return path


def decision_config(seed: int, backbone: str = "mingru", **kw: object) -> dict:
    model = {"backbone": backbone, "hidden_dim": 16}
    return {
        "dataset": "d4rl/hopper",
        "model": model,
        "seed": seed,
        "run_name": f"{backbone}-s{seed}",
        "runs_dir": "runs",
        **kw,
    }


def ppo_config(seed: int) -> dict:
    return {
        "env_id": "CartPoleNoVel-v1",
        "total_steps": 512,
        "backbone": "gru",
        "seed": seed,
        "run_dir": f"runs/ppo-s{seed}",
    }


def test_seeds_of_one_experiment_are_one_mean_and_band(tmp_path: Path) -> None:
    score = "eval/normalized_score"
    runs = [
        fake_run(
            tmp_path / "a0",
            decision_config(0),
            {score: [(10, 10.0), (20, 20.0), (30, 30.0)], "eval/return": [(10, 1.0)]},
        ),
        fake_run(
            tmp_path / "a1", decision_config(1), {score: [(10, 20.0), (20, 30.0), (30, 35.0), (30, 40.0)]}
        ),
        fake_run(tmp_path / "b0", decision_config(0, "lstm"), {score: [(10, 5.0), (30, 7.0)]}),
    ]
    groups = group_curves([read_curve(r) for r in runs])
    assert [g.label for g in groups] == ["mingru on d4rl/hopper (2 seeds)", "lstm on d4rl/hopper"]
    mingru, lstm = groups
    assert mingru.steps.tolist() == [10, 20, 30] and mingru.mean.tolist() == [
        15.0,
        25.0,
        35.0,
    ]  # step 30 logged twice: last
    assert mingru.std.tolist() == [5.0, 5.0, 5.0] and lstm.std.tolist() == [0.0, 0.0]
    out = tmp_path / "plots" / "curves.png"
    plot_learning_curves(runs, out)
    assert out.read_bytes()[:8] == PNG and [p.name for p in out.parent.iterdir()] == ["curves.png"]


def test_fallback_tags_interpolation_and_mixed_kinds(tmp_path: Path) -> None:
    returns_only = fake_run(tmp_path / "dt", decision_config(0), {"eval/return": [(5, 100.0), (10, 200.0)]})
    assert read_curve(returns_only).tag == "eval/return"  # data without reference scores
    train_only = fake_run(tmp_path / "p0", ppo_config(0), {"rollout/ep_rew_mean": [(128, 10.0), (256, 30.0)]})
    assert read_curve(train_only).kind == "ppo" and read_curve(train_only).tag == "rollout/ep_rew_mean"
    evaluated = fake_run(
        tmp_path / "p1",
        ppo_config(1),
        {"rollout/ep_rew_mean": [(100, 1.0)], "eval/mean_reward": [(0, 0.0), (200, 40.0), (400, 50.0)]},
    )
    assert read_curve(evaluated).tag == "eval/mean_reward"
    # Seeds logged at other steps: each is interpolated onto the steps both cover.
    other = fake_run(
        tmp_path / "p2", {**ppo_config(2), "run_dir": "x"}, {"eval/mean_reward": [(100, 20.0), (300, 60.0)]}
    )
    (group,) = group_curves([read_curve(evaluated), read_curve(other)])
    assert group.steps.tolist() == [100, 200, 300] and np.allclose(group.mean, [20.0, 40.0, 52.5])
    out = tmp_path / "mixed.svg"  # Decision and PPO runs side by side: one panel per metric
    assert len(plot_learning_curves([returns_only, train_only, evaluated], out)) == 3
    assert out.read_text().lstrip().startswith("<?xml")


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recurrl.scripts.cli import main

    good = fake_run(tmp_path / "good", decision_config(0), {"eval/return": [(1, 1.0)]})
    fake_run(tmp_path / "empty", decision_config(1), {"train/loss": [(1, 0.5)]})
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"lr": 1}))
    cases = [
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(tmp_path / "noconfig")], "not a recurrl run directory (no config.json)"),
        ([str(tmp_path / "odd")], "cannot tell whether this is a Decision or a PPO run"),
        (
            [str(good), str(tmp_path / "empty")],
            "no eval/normalized_score or eval/return in its TensorBoard logs (has: train/loss)",
        ),
        ([str(good), "-o", str(tmp_path / "c.txt")], "written as .png, .pdf or .svg"),
        ([str(good), "-o", str(tmp_path / "good" / "config.json" / "c.png")], "cannot write"),
    ]
    for argv, message in cases:
        assert main(["plot", *argv, *([] if "-o" in argv else ["-o", str(tmp_path / "c.png")])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_cli_plot_on_tiny_decision_and_ppo_runs(
    tmp_path: Path, tiny_hopper_dataset_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recurrl.scripts.cli import main

    small = ["model.hidden_dim=16", "model.num_layers=1", "batch_size=8", "eval.every=10"]
    small += ["eval.episodes_during_training=1", "eval.episodes=1", "eval.num_envs=1"]
    for seed in (0, 1):
        args = [
            "--dataset",
            str(tiny_hopper_dataset_path),
            "--runs-dir",
            str(tmp_path),
            "--run-name",
            f"dt-s{seed}",
        ]
        assert main(["train", *args, "--steps", "20", "--seed", str(seed), "--no-progress", *small]) == 0
    ppo = [
        "--env",
        "CartPoleNoVel-v1",
        "--run-dir",
        str(tmp_path / "ppo"),
        "--no-progress",
        "--total-steps",
        "512",
    ]
    assert (
        main(
            [
                "train-ppo",
                *ppo,
                "hidden_dim=16",
                "num_envs=4",
                "num_steps=64",
                "eval_every=256",
                "eval_episodes=2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "curves.png"
    runs = [str(tmp_path / name) for name in ("dt-s0", "dt-s1", "ppo")]
    assert main(["plot", *runs, "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mingru on tiny-hopper-medium (2 seeds): eval/normalized_score")
    assert lines[0].endswith("at step 20")
    assert lines[1].startswith("mingru on CartPoleNoVel-v1: eval/mean_reward") and lines[1].endswith(
        "at step 512"
    )
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
