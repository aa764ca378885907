"""Recurrent PPO: rollout/update consistency, GAE and truncation bootstrap, bad input, checkpoints, CLI."""

from __future__ import annotations

import json
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

import recurrl.envs  # noqa: F401  (registers CartPoleNoVel-v1, PendulumNoVel-v1)
from recurrl.agents.checkpoint import load_checkpoint
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint
from recurrl.agents.ppo.ppo import PPOTrainer, train_ppo
from recurrl.agents.ppo.rollout import RolloutBuffer
from recurrl.policies.actor_critic import ActorCritic, SpaceSpec


# ----------------------------------------------------------------------------- test envs
class ConstantRewardEnv(gym.Env):
    """Reward 1 every step, observation = a random vector; episodes only end by the time limit."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), 1.0, False, False, {}


class NaNEnv(ConstantRewardEnv):
    """Returns a NaN observation on its 4th step."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return super().reset(seed=seed)

    def step(self, action):
        self.t += 1
        obs, reward, terminated, truncated, info = super().step(action)
        if self.t == 4:
            obs[1] = np.nan
        return obs, reward, terminated, truncated, info


class ImageObsEnv(ConstantRewardEnv):
    """A 2-D Box observation: not flattened for PPO (Dict/Tuple/Discrete ones are: test_env_packages.py)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return np.stack([obs, obs]), info

    def step(self, action):
        obs, *rest = super().step(action)
        return np.stack([obs, obs]), *rest


class MultiBinaryEnv(ConstantRewardEnv):
    action_space = gym.spaces.MultiBinary(3)


for _id, _cls, _limit in [
    ("TestConstant-v0", ConstantRewardEnv, 5),
    ("TestNaN-v0", NaNEnv, 50),
    ("TestImageObs-v0", ImageObsEnv, 5),
    ("TestMultiBinary-v0", MultiBinaryEnv, 5),
]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=_limit)


def _config(tmp_path, **kw) -> PPOConfig:
    base = dict(
        env_id="CartPoleNoVel-v1",
        num_envs=4,
        num_steps=16,
        num_minibatches=2,
        update_epochs=2,
        hidden_dim=16,
        head_hidden=16,
        total_steps=128,
        run_dir=str(tmp_path / "run"),
        progress_bar=False,
        checkpoint_every=1,
    )
    base.update(kw)
    return PPOConfig(**base)


# ----------------------------------------------------------------------------- consistency
@pytest.mark.parametrize(
    "backbone,shared", [("mingru", True), ("minlstm", False), ("gru", False), ("mlp", True)]
)
def test_update_forward_reproduces_rollout_steps(tmp_path, backbone, shared) -> None:
    """Before any update, forward over the stored sequences (from the stored initial states, with
    resets at episode starts) gives exactly the rollout's log-probs and values: ratio == 1."""
    trainer = PPOTrainer(_config(tmp_path, backbone=backbone, shared_backbone=shared, num_steps=48))
    try:
        trainer.collect_rollout()  # two rollouts: the second starts from a carried, non-zero state
        trainer.collect_rollout()
        buffer = trainer.buffer
        assert buffer.episode_starts[1:].any(), "no episode ended inside the rollout; the test needs resets"
        if backbone != "mlp":
            assert any(s.abs().sum() > 0 for s in buffer.initial_state)
        advantages, returns = buffer.compute_returns(trainer._last_value(), 0.99, 0.95)
        batch = buffer.batch(advantages, returns)
        with torch.no_grad():
            dist, value, _ = trainer.policy(batch.obs, batch.initial_state, batch.episode_starts)
        torch.testing.assert_close(dist.log_prob(batch.actions), batch.log_probs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value, batch.values, atol=1e-5, rtol=1e-5)
        # The values also equal a per-tick replay with `step` (a separate critic's come from one forward).
        state, stepped = buffer.initial_state, []
        with torch.no_grad():
            for t in range(buffer.obs.shape[0]):
                _, v, state = trainer.policy.step(buffer.obs[t], state, buffer.episode_starts[t])
                stepped.append(v)
        torch.testing.assert_close(torch.stack(stepped), buffer.values, atol=1e-5, rtol=1e-5)
        # A minibatch of whole sequences picks the right initial states too.
        sub = batch.select(torch.tensor([2, 0]))
        with torch.no_grad():
            dist, _, _ = trainer.policy(sub.obs, sub.initial_state, sub.episode_starts)
        torch.testing.assert_close(dist.log_prob(sub.actions), sub.log_probs, atol=1e-5, rtol=1e-5)
    finally:
        trainer.envs.close()


def test_fast_categorical_sampling_draws_from_the_distribution() -> None:
    """ActorCritic.sample (Gumbel-max) has the categorical's frequencies and log-probs."""
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.7])
    dist = Categorical(logits=probs.log().expand(20_000, 3), validate_args=False)
    action, log_prob = ActorCritic.sample(dist)
    frequencies = torch.bincount(action, minlength=3).float() / action.numel()
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)  # ~5 standard errors
    torch.testing.assert_close(log_prob, dist.log_prob(action))


def test_memory_matters_for_recurrent_policy_not_mlp() -> None:
    """The recurrent policy's output depends on earlier observations; the MLP control's does not."""
    torch.manual_seed(0)
    spec = SpaceSpec(obs_dim=2, action_kind="discrete", action_dim=2)
    obs = torch.randn(1, 6, 2)
    other = obs.clone()
    other[0, 0] += 1.0  # change only the first observation
    for backbone, differs in (("mingru", True), ("mlp", False)):
        policy = ActorCritic(spec, backbone=backbone, hidden_dim=8)
        _, v1, _ = policy(obs)
        _, v2, _ = policy(other)
        assert bool((v1[0, -1] - v2[0, -1]).abs() > 1e-6) == differs, backbone


# ----------------------------------------------------------------------------- GAE and truncation
def test_gae_matches_hand_computation_and_cuts_at_dones() -> None:
    buffer = RolloutBuffer(3, 1, 1, (), torch.device("cpu"))
    buffer.rewards[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    buffer.values[:, 0] = torch.tensor([0.5, 0.25, 1.0])
    buffer.dones[:, 0] = torch.tensor([0.0, 1.0, 0.0])
    gamma, lam, last = 0.9, 0.8, torch.tensor([2.0])
    adv, ret = buffer.compute_returns(last, gamma, lam)
    d2 = 3.0 + gamma * 2.0 - 1.0
    d1 = 2.0 - 0.25  # episode ended after step 1: no bootstrap from step 2
    d0 = 1.0 + gamma * 0.25 - 0.5
    expected = torch.tensor([d0 + gamma * lam * d1, d1, d2])
    torch.testing.assert_close(adv[:, 0], expected)
    torch.testing.assert_close(ret[:, 0], expected + buffer.values[:, 0])


@pytest.mark.parametrize("shared", [True, False])
def test_truncated_episodes_bootstrap_from_final_obs_with_pre_reset_state(tmp_path, shared) -> None:
    """On truncation the stored reward is r + gamma * V(final_obs), V from the state that saw the episode
    (per tick with a shared backbone; after the rollout, batched, with a separate critic)."""
    cfg = _config(
        tmp_path,
        env_id="TestConstant-v0",
        num_envs=2,
        num_steps=12,
        normalize_obs=False,
        gamma=0.9,
        shared_backbone=shared,
    )
    trainer = PPOTrainer(cfg)
    final_obs: dict[tuple[int, int], np.ndarray] = {}
    step_fn, t = trainer.envs.step, [0]

    def recording_step(actions):
        out = step_fn(actions)
        for i in np.flatnonzero(out[3]):
            final_obs[(t[0], int(i))] = out[4]["final_obs"][i]
        t[0] += 1
        return out

    trainer.envs.step = recording_step
    try:
        trainer.collect_rollout()
        buffer = trainer.buffer
        assert final_obs, "no truncation happened"
        assert torch.all(buffer.rewards[buffer.dones == 0] == 1.0)
        for (step, env), last_obs in final_obs.items():
            # Replay env's sequence up to `step`, then one more tick on the final observation.
            obs = torch.cat([buffer.obs[: step + 1, env], torch.as_tensor(last_obs)[None]])[None]
            starts = torch.cat([buffer.episode_starts[: step + 1, env], torch.tensor([False])])[None]
            init = tuple(s[env : env + 1] for s in buffer.initial_state)
            with torch.no_grad():
                _, values, _ = trainer.policy(obs, init, starts)
            expected = 1.0 + 0.9 * values[0, -1]
            torch.testing.assert_close(buffer.rewards[step, env], expected, atol=1e-5, rtol=1e-5)
            assert buffer.dones[step, env] == 1.0
    finally:
        trainer.envs.close()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "env_id,message", [("TestImageObs-v0", "1-D Box observation"), ("TestMultiBinary-v0", "MultiBinary")]
)
def test_unsupported_spaces_raise_at_construction(tmp_path, env_id, message) -> None:
    with pytest.raises(ValueError, match=message):
        PPOTrainer(_config(tmp_path, env_id=env_id))


def test_nan_from_env_is_reported_at_that_step(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"non-finite observation .* at global step 8 in vector env 0"):
        train_ppo(_config(tmp_path, env_id="TestNaN-v0", num_envs=2, num_minibatches=1))


def test_bad_config_values_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="divisible by num_minibatches"):
        PPOTrainer(_config(tmp_path, num_envs=3, num_minibatches=2))
    with pytest.raises(ValueError, match="unknown backbone"):
        PPOTrainer(_config(tmp_path, backbone="rnn9000"))
    with pytest.raises(ValueError, match="unknown environment id"):
        PPOTrainer(_config(tmp_path, env_id="NoSuchEnv-v0"))


# ----------------------------------------------------------------------------- training, checkpoints, resume
def test_train_checkpoint_evaluate_and_resume(tmp_path) -> None:
    cfg = _config(tmp_path, total_steps=128)  # 2 iterations of 4 envs x 16 steps
    summary = train_ppo(cfg)
    assert summary["global_step"] == 128
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == "ppo" and meta["iteration"] == 2
    assert meta["obs_norm"]["enabled"] and len(meta["obs_norm"]["mean"]) == 2
    assert any(abs(m) > 0 for m in meta["obs_norm"]["mean"])
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert events

    result = evaluate_ppo_checkpoint(ckpt, episodes=3, seeds=(0,), num_envs=2)
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and result["return_mean"] > 0
    again = evaluate_ppo_checkpoint(ckpt, episodes=3, seeds=(0,), num_envs=2)
    assert again["returns"] == result["returns"]  # deterministic and seeded

    resumed = PPOTrainer(_config(tmp_path, total_steps=256), resume=True)
    assert resumed.global_step == 128 and resumed.iteration == 2
    weights = {k: v.clone() for k, v in resumed.policy.state_dict().items()}
    summary = resumed.train()
    assert summary["global_step"] == 256
    assert any(not torch.equal(v, weights[k]) for k, v in resumed.policy.state_dict().items())

    with pytest.raises(ValueError, match="hidden_dim"):
        PPOTrainer(_config(tmp_path, hidden_dim=32), resume=True)


def test_periodic_evaluation_logs_and_leaves_training_unchanged(tmp_path, scalar_steps) -> None:
    """eval_every: deterministic episodes every N env steps (SB3's EvalCallback tags), the same numbers
    `recurrl evaluate` gives for the checkpoint of that step, and training bit-identical to a run without."""
    cfg = _config(tmp_path, total_steps=256, eval_every=128, eval_episodes=3)  # iterations of 64 steps
    summary = train_ppo(cfg)
    assert [e["step"] for e in summary["evaluations"]] == [128, 256]
    last = evaluate_ppo_checkpoint(tmp_path / "run/checkpoints/last", episodes=3, seeds=(cfg.seed + 10_000,))
    assert summary["evaluations"][-1]["mean_reward"] == pytest.approx(last["return_mean"])
    assert scalar_steps(tmp_path / "run", "eval/mean_reward") == [128, 256]
    assert scalar_steps(tmp_path / "run", "eval/mean_ep_length") == [128, 256]

    plain = train_ppo(_config(tmp_path / "plain", total_steps=256))
    assert "evaluations" in plain and plain["evaluations"] == []
    (weights_a, meta_a, _), (weights_b, meta_b, _) = (
        load_checkpoint(tmp_path / run / "checkpoints/last") for run in ("run", "plain/run")
    )
    state_a, state_b = meta_a["train_state"], meta_b["train_state"]
    assert state_a["history"] == state_b["history"] and state_a["episode_returns"] == state_b["episode_returns"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    # A killed run logs past its last checkpoint; the resumed run must replace those events, not add to them.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "run")) as stray:
        stray.add_scalar("eval/mean_reward", 1e6, 320)
    resumed = PPOTrainer(_config(tmp_path, total_steps=384, eval_every=128, eval_episodes=3), resume=True)
    assert [e["step"] for e in resumed.train()["evaluations"]] == [128, 256, 384]
    assert scalar_steps(tmp_path / "run", "eval/mean_reward") == [128, 256, 384]

    with pytest.raises(ValueError, match="eval_every"):
        PPOTrainer(_config(tmp_path, eval_every=-1))


def test_sigint_stops_after_the_iteration_and_saves_it(tmp_path) -> None:
    cfg = _config(tmp_path, total_steps=64 * 6, checkpoint_every=100)
    trainer = PPOTrainer(cfg)
    original = trainer.update

    def update(batch):
        if trainer.iteration == 2:  # Ctrl-C during the second update
            os.kill(os.getpid(), signal.SIGINT)
        return original(batch)

    trainer.update = update  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    meta = json.loads((tmp_path / "run/checkpoints/last/meta.json").read_text())
    assert meta["iteration"] == 2 and meta["global_step"] == 2 * 64
    resumed = PPOTrainer(_config(tmp_path, total_steps=64 * 6, checkpoint_every=100), resume=True)
    assert resumed.train()["global_step"] == 6 * 64


def test_resume_without_checkpoint_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        PPOTrainer(_config(tmp_path), resume=True)


def test_continuous_actions_async_envs_separate_backbones(tmp_path) -> None:
    cfg = _config(
        tmp_path,
        env_id="PendulumNoVel-v1",
        vectorization="async",
        num_envs=2,
        num_minibatches=1,
        shared_backbone=False,
        normalize_reward=True,
        clip_vloss=True,
        total_steps=64,
    )
    summary = train_ppo(cfg)
    assert summary["global_step"] == 64
    result = evaluate_ppo_checkpoint(summary["checkpoint"], episodes=1, num_envs=1)
    assert -2000 < result["return_mean"] < 0 and result["lengths"] == [200]


def test_cli_train_ppo_uses_preset_and_overrides(tmp_path, capsys) -> None:
    from recurrl.scripts.cli import main

    run_dir = tmp_path / "cli"
    code = main(
        [
            "train-ppo",
            "--env",
            "CartPoleNoVel-v1",
            "--backbone",
            "mlp",
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--total-steps",
            "64",
            "num_envs=2",
            "num_steps=32",
            "update_epochs=1",
        ]
    )
    assert code == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["backbone"] == "mlp" and saved["gamma"] == 0.98  # the preset's value
    # The preset's minGRU options do not reach the MLP control, and the user is told.
    assert saved["backbone_options"] == {}
    out, err = capsys.readouterr()
    assert json.loads(out)["global_step"] == 64
    assert "backbone_options {'mlp_ratio': 0} are set for mingru; mlp runs with its defaults" in err
    assert main(["train-ppo", "--run-dir", str(run_dir), "no_such_key=1"]) == 2


def test_preset_backbone_options_stay_with_their_backbone() -> None:
    from recurrl.scripts.cli import build_parser
    from recurrl.scripts.train_ppo import build_config

    def config(*argv: str) -> PPOConfig:
        return build_config(build_parser().parse_args(["train-ppo", "--env", "CartPoleNoVel-v1", *argv]))

    assert config().backbone_options == {"mlp_ratio": 0}
    assert config("--backbone", "mingru").backbone_options == {"mlp_ratio": 0}
    assert config("--backbone", "lstm").backbone_options == {}
    assert config("--backbone", "minlstm", "backbone_options.mlp_ratio=1").backbone_options == {
        "mlp_ratio": 1
    }


@pytest.mark.parametrize("env_id", ["CartPoleNoVel-v1", "PendulumNoVel-v1", "Hopper-v5"])
def test_presets_load_and_run_one_iteration(tmp_path, env_id) -> None:
    from recurrl.agents.config import load_config
    from recurrl.configs import ppo_preset

    preset = ppo_preset(env_id)
    assert preset is not None, f"no preset for {env_id}"
    small = ["num_envs=2", "num_steps=8", "num_minibatches=1", "update_epochs=1", "total_steps=16"]
    cfg = load_config(PPOConfig, [preset], [*small, f"run_dir={tmp_path / 'run'}", "progress_bar=false"])
    assert cfg.env_id == env_id
    assert train_ppo(cfg)["global_step"] == 16


@pytest.mark.slow
def test_memory_learns_cartpole_novel_where_mlp_cannot(tmp_path) -> None:
    """The POMDP memory test (as sb3-contrib's): with the preset, minGRU PPO passes the MLP control's
    ceiling within 30k steps (measured, seeds 1-3: best mean return 196-218 by 30k; MLP stays under ~50 for 200k)."""
    from recurrl.agents.config import load_config
    from recurrl.configs import ppo_preset

    best = {}
    for backbone in ("mingru", "mlp"):
        overrides = [f"backbone={backbone}", "total_steps=30720", "seed=1", "progress_bar=false"]
        if backbone == "mlp":
            overrides.append("backbone_options={}")  # the preset's options are minGRU's
        cfg = load_config(
            PPOConfig, [ppo_preset("CartPoleNoVel-v1")], [*overrides, f"run_dir={tmp_path / backbone}"]
        )
        best[backbone] = train_ppo(cfg)["best_ep_rew_mean"]
    assert best["mingru"] >= 120, best
    assert best["mlp"] <= 80, best


@pytest.mark.slow
def test_throughput_benchmark_runs_both_side_by_side() -> None:
    from recurrl.agents.bench.ppo import throughput
    from recurrl.agents.bench.report import ppo_throughput_table

    small = ["num_envs=2", "num_steps=16", "num_minibatches=1", "update_epochs=1", "hidden_dim=8"]
    result = throughput(total_steps=50, repeats=1, overrides=small, include_adapter=True)
    assert result["settings"]["total_steps"] == 64  # rounded up to whole rollouts for both sides
    assert len(result["median_steps_per_s"]) == 3
    assert all(v > 0 for v in result["median_steps_per_s"].values())
    assert result["ratio_ours_over_sb3_lstm"] > 0 and result["cpu_ratio_ours_over_sb3_lstm"] > 0
    assert "ratio recurrl PPO / sb3-contrib LSTM" in ppo_throughput_table(result)
