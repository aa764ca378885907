"""The collector, behavior-policy loading and the `recurrl collect` / `recurrl dataset` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from recurrl.envs.behavior import (
    ALGOS,
    behavior_policies_dir,
    evaluate_policy,
    gym_alias,
    load_behavior_policy,
)
from recurrl.envs.datasets import load_dataset
from recurrl.envs.record import collect, collect_policy, make_policy
from recurrl.envs.suites import build_suite
from recurrl.scripts.cli import main

needs_zoo = pytest.mark.skipif(
    not (behavior_policies_dir() / "trpo" / "Hopper" / "model.zip").is_file(),
    reason="behavior policies not found (set RECURRL_BEHAVIOR_POLICIES or put ../shared beside the repo)",
)

# Measured returns on Hopper-v5 from the behavior-policies README: (mean, sd) over seeds 0-4.
DOCUMENTED_HOPPER_RETURNS = {
    "tqc": (3189, 564),
    "sac": (1096, 17),
    "ppo": (2441, 5),
    "trpo": (3624, 6),
    "a2c": (820, 88),
    "ars": (3290, 4),
}


def test_collect_exact_steps_with_parallel_envs() -> None:
    policy = make_policy("random", "CartPoleNoVel-v1", num_envs=3, seed=0)
    collection = collect("CartPoleNoVel-v1", policy, steps=101, num_envs=3, seed=0, progress=False)
    assert collection.num_steps == 101
    for obs, rewards, terms, truncs in zip(
        collection.observations,
        collection.rewards,
        collection.terminations,
        collection.truncations,
        strict=True,
    ):
        assert len(obs) == len(rewards) + 1  # Minari layout: T+1 observations
        assert terms[-1] or truncs[-1]  # every episode ends: done, or cut by the step budget
        assert not (terms[:-1].any() or truncs[:-1].any())


def test_collect_episodes_are_complete_and_seeded() -> None:
    def run() -> list:
        policy = make_policy("scripted", "PendulumNoVel-v1", num_envs=2, noise=0.5, seed=4)
        return collect("PendulumNoVel-v1", policy, episodes=3, num_envs=2, seed=4, progress=False)

    first, second = run(), run()
    assert len(first.rewards) == 3
    assert all(len(r) == 200 and t[-1] for r, t in zip(first.rewards, first.truncations, strict=True))
    for a, b in zip(first.observations, second.observations, strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same data


def test_collect_sharded_over_worker_processes() -> None:
    """--workers: exact budgets, the Minari layout, and each worker on its own seeds (no duplicate data)."""
    steps = collect_policy(
        "PendulumNoVel-v1", "scripted", noise=0.5, steps=801, num_envs=4, seed=0, workers=2, progress=False
    )
    assert steps.num_steps == 801 and all(
        len(o) == len(r) + 1 for o, r in zip(steps.observations, steps.rewards, strict=True)
    )
    firsts = {tuple(np.round(o[0], 6)) for o in steps.observations}
    assert len(firsts) == len(steps.observations)  # 4 envs over 2 workers: every episode starts elsewhere
    episodes = collect_policy(
        "PendulumNoVel-v1", "scripted", episodes=3, num_envs=2, workers=2, progress=False
    )
    assert len(episodes.rewards) == 3 and all(len(r) == 200 for r in episodes.rewards)
    with pytest.raises(ValueError, match="workers must be between 1 and num_envs"):
        collect_policy("PendulumNoVel-v1", "scripted", steps=10, num_envs=2, workers=3)


def test_collect_rejects_bad_amounts() -> None:
    policy = make_policy("random", "CartPoleNoVel-v1", num_envs=1)
    with pytest.raises(ValueError, match="exactly one of steps or episodes"):
        collect("CartPoleNoVel-v1", policy, num_envs=1)
    with pytest.raises(ValueError, match="must be positive"):
        collect("CartPoleNoVel-v1", policy, steps=0, num_envs=1)


def test_cli_collect_then_dataset_info(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hdf5 = tmp_path / "cartpole.hdf5"
    args = [
        "collect",
        "--env",
        "CartPoleNoVel-v1",
        "--policy",
        "scripted",
        "--noise",
        "0.2",
        "--episodes",
        "3",
    ]
    args += ["--num-envs", "2", "--datasets-path", str(tmp_path), "--export-hdf5", str(hdf5), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 3 and summary["steps_per_second"] > 0
    assert Path(summary["path"]) == tmp_path / "recurrl" / "cartpolenovel" / "scripted-v0"

    assert main(["dataset", "info", summary["path"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == summary["steps"] and info["env_id"] == "CartPoleNoVel-v1"
    assert info["observation_shape"] == [2] and info["ref_max_score"] is None
    assert main(["dataset", "info", str(hdf5)]) == 0
    assert f"steps        {summary['steps']}" in capsys.readouterr().out

    # the same id again is refused, before anything is recorded, unless --overwrite
    with monkeypatch.context() as patch:
        patch.setattr("recurrl.envs.record.collect_policy", lambda *a, **k: pytest.fail("recorded before refusing"))
        assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_cli_help_warns_that_policies_are_pickles(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["collect", "--help"])
    assert "only files you trust" in " ".join(capsys.readouterr().out.split())


@needs_zoo
def test_zoo_policy_loads_with_scoped_gym_alias() -> None:
    assert "gym" not in sys.modules
    policy = load_behavior_policy("trpo", "Hopper-v5")
    assert "gym" not in sys.modules  # the alias is undone after loading
    assert policy.normalizer is not None and policy.normalizer.mean.shape == (11,)
    obs = np.random.default_rng(0).normal(size=(5, 11))
    actions = policy(obs)
    assert actions.shape == (5, 3) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0
    # the fast deterministic path agrees with SB3's own prediction
    import torch

    normalized = torch.as_tensor(policy.normalizer(obs), dtype=torch.float32)
    expected = policy.policy._predict(normalized, deterministic=True).detach().numpy()
    np.testing.assert_allclose(actions, np.clip(expected, -1, 1), atol=1e-5)
    with gym_alias():
        import gym  # noqa: F401

        assert sys.modules["gym"] is sys.modules["gymnasium"]
    assert "gym" not in sys.modules


def test_unknown_behavior_policy() -> None:
    with pytest.raises(ValueError, match="unknown behavior policy"):
        load_behavior_policy("dqn", "Hopper-v5")
    with pytest.raises(FileNotFoundError, match=r"sac/Ant and .*sac/Ant-v5;"):
        load_behavior_policy("sac", "Ant-v5")
    with pytest.raises(FileNotFoundError, match="RECURRL_BEHAVIOR_POLICIES"):
        load_behavior_policy("sac", "Hopper-v5", root="/nonexistent")


@pytest.mark.slow
@needs_zoo
@pytest.mark.parametrize("algo", ALGOS)
def test_zoo_policies_reach_documented_return_on_hopper(algo: str) -> None:
    import torch

    torch.set_num_threads(1)
    mean, sd = DOCUMENTED_HOPPER_RETURNS[algo]
    returns = evaluate_policy(load_behavior_policy(algo, "Hopper-v5"), "Hopper-v5", [0, 1, 2, 3, 4])
    assert abs(returns.mean() - mean) <= 0.05 * mean + sd, (algo, returns)


@pytest.mark.slow
@needs_zoo
def test_d4rl_suite_tiers(minari_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.set_num_threads(1)
    results = build_suite("Hopper-v5", steps=3000, num_envs=4, export_dir=tmp_path, log=lambda _: None)
    assert set(results) == {"random", "medium", "medium-replay", "expert", "medium-expert"}
    tiers = {tier: load_dataset(f"recurrl/hopper/{tier}-v0") for tier in results}
    for tier, dataset in tiers.items():
        assert dataset.num_steps == (6000 if tier == "medium-expert" else 3000)
        assert (dataset.ref_min_score, dataset.ref_max_score) == (-20.272305, 3234.3)
        copy = load_dataset(results[tier]["hdf5"])
        assert copy.num_steps == dataset.num_steps
    means = {tier: d.stats.returns.mean() for tier, d in tiers.items()}
    assert means["random"] < means["medium-replay"] < means["expert"]
    assert means["random"] < means["medium"] < means["expert"]

    # Building a tier again is refused before any recording starts (it would be lost at the write).
    recorded = []
    monkeypatch.setattr("recurrl.envs.suites.collect_segments", lambda *a, **k: recorded.append(a))
    with pytest.raises(ValueError, match="already exists"):
        build_suite("Hopper-v5", steps=3000, tiers=("expert",), log=lambda _: None)
    assert recorded == []
