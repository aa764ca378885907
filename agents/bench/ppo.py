"""`recurrl bench ppo throughput|adapter`: our recurrent PPO against sb3-contrib's RecurrentPPO.

throughput: env steps/s of recurrl PPO, RecurrentPPO(MlpLstmPolicy) and (optionally) RecurrentPPO with
our adapter policy, side by side. Both run the same env with matched n_envs, n_steps, minibatch size,
epochs, hidden width and separate actor/critic memories, for the same number of env steps, on the same
torch thread count; runs are interleaved (ours, sb3, adapter, ours, ...) so machine-load drift hits all
of them alike. Reported: env steps/s (wall clock of the training call, construction excluded) and env
steps per CPU-second of the process (robust to other load on a shared machine), medians over repeats,
and the ratios of medians.

adapter: a learning-quality check of the sb3-contrib adapter: RecurrentPPO with MinGRUPolicy against
RecurrentPPO's own MlpLstmPolicy, same hyperparameters (the RL Zoo's ppo_lstm CartPoleNoVel-v1 preset),
same seeds, same budget; both scored by sb3's `evaluate_policy` on deterministic actions.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from typing import Any

import torch

from recurrl.agents.config import load_config
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.ppo import PPOTrainer

from .timing import interleaved_rounds, medians

# Matched settings (the CleanRL/SB3 recurrent CartPole scale).
DEFAULTS = {
    "num_envs": 8,
    "num_steps": 128,
    "num_minibatches": 4,
    "update_epochs": 4,
    "hidden_dim": 64,
}
# The POMDP presets' minGRU / minLSTM: one block without the MLP sub-block (configs/ppo/*NoVel*.yaml).
MINRNN_OPTIONS = {"backbone_options.mlp_ratio": 0}


def _ours(config: PPOConfig) -> tuple[float, float]:
    # A directory per repeat: a run never reuses another's (agents/run_dir.py).
    config = dataclasses.replace(config, run_dir=tempfile.mkdtemp(prefix="ours-", dir=config.run_dir))
    trainer = PPOTrainer(config)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return trainer.global_step / (time.perf_counter() - wall), trainer.global_step / (
        time.process_time() - cpu
    )


def _sb3(config: PPOConfig, policy: Any) -> tuple[float, float]:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    import recurrl.envs  # noqa: F401  (registers the POMDP ids)

    vec_env = make_vec_env(config.env_id, n_envs=config.num_envs, seed=config.seed)
    model = RecurrentPPO(
        policy,
        vec_env,
        n_steps=config.num_steps,
        batch_size=config.batch_size // config.num_minibatches,
        n_epochs=config.update_epochs,
        learning_rate=config.learning_rate,
        policy_kwargs={
            "lstm_hidden_size": config.hidden_dim,
            "n_lstm_layers": config.num_layers,
            "enable_critic_lstm": not config.shared_backbone,
            "shared_lstm": config.shared_backbone,
            "net_arch": {"pi": [config.head_hidden], "vf": [config.head_hidden]},
        },
        seed=config.seed,
        device=config.device,
        verbose=0,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=config.total_steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    vec_env.close()
    return model.num_timesteps / wall, model.num_timesteps / cpu


def throughput(
    env_id: str = "CartPoleNoVel-v1",
    backbone: str = "mingru",
    total_steps: int = 20_000,
    repeats: int = 3,
    overrides: list[str] | None = None,
    include_adapter: bool = True,
) -> dict[str, Any]:
    """Interleaved repeats of each contender -> steps/s per run, medians and ratios."""
    defaults = {**DEFAULTS, **(MINRNN_OPTIONS if backbone in ("mingru", "minlstm") else {})}
    settings = [f"{k}={v}" for k, v in defaults.items()]
    settings += [f"env_id={env_id}", f"backbone={backbone}", f"total_steps={total_steps}"]
    settings += ["progress_bar=false", "shared_backbone=false", "anneal_lr=false", "checkpoint_every=1000000"]
    config = load_config(PPOConfig, None, settings + list(overrides or []))
    config.validate()
    if config.total_steps % config.batch_size:
        # Both sides run whole rollouts; round up so they do the same number of env steps.
        config.total_steps += config.batch_size - config.total_steps % config.batch_size

    from recurrl.policies.integrations.sb3 import RecurrentBackbonePolicy

    class AdapterPolicy(RecurrentBackbonePolicy):
        default_backbone = backbone

    contenders: dict[str, Any] = {
        f"recurrl PPO ({backbone})": lambda: _ours(config),
        "sb3-contrib RecurrentPPO (MlpLstmPolicy)": lambda: _sb3(config, "MlpLstmPolicy"),
    }
    if include_adapter and backbone != "mlp":
        contenders[f"sb3-contrib RecurrentPPO + adapter ({backbone})"] = lambda: _sb3(config, AdapterPolicy)
    with tempfile.TemporaryDirectory() as tmp:
        config.run_dir = tmp
        measured = interleaved_rounds(contenders, repeats, warmup=0)
    runs = {name: [wall for wall, _ in values] for name, values in measured.items()}
    cpu_runs = {name: [cpu for _, cpu in values] for name, values in measured.items()}
    wall_medians, cpu_medians = medians(runs), medians(cpu_runs)
    ours, sb3 = list(wall_medians.values())[:2]
    ours_cpu, sb3_cpu = list(cpu_medians.values())[:2]
    return {
        "env_id": config.env_id,
        "settings": {
            "num_envs": config.num_envs,
            "num_steps": config.num_steps,
            "minibatch_size": config.batch_size // config.num_minibatches,
            "update_epochs": config.update_epochs,
            "hidden_dim": config.hidden_dim,
            "backbone_options": dict(config.backbone_options),
            "total_steps": config.total_steps,
            "repeats": repeats,
            "num_threads": torch.get_num_threads(),
            "device": config.device,
        },
        "steps_per_s": runs,
        "median_steps_per_s": wall_medians,
        "ratio_ours_over_sb3_lstm": ours / sb3,
        # Steps per CPU-second of this process: robust to other load on a shared machine.
        "steps_per_cpu_s": cpu_runs,
        "median_steps_per_cpu_s": cpu_medians,
        "cpu_ratio_ours_over_sb3_lstm": ours_cpu / sb3_cpu,
    }


def zoo_cartpole_novel_kwargs(learning_rate: float = 1e-3) -> dict[str, Any]:
    """RL Zoo ppo_lstm hyperparameters for CartPoleNoVel-v1 (linear schedules written out)."""
    return {
        "n_steps": 32,
        "batch_size": 256,
        "n_epochs": 20,
        "gamma": 0.98,
        "gae_lambda": 0.8,
        "ent_coef": 0.0,
        "learning_rate": lambda progress: learning_rate * progress,
        "clip_range": lambda progress: 0.2 * progress,
        "policy_kwargs": {
            "ortho_init": False,
            "activation_fn": torch.nn.ReLU,
            "lstm_hidden_size": 64,
            "enable_critic_lstm": True,
            "net_arch": {"pi": [64], "vf": [64]},
        },
    }


def train_and_score(
    policy: Any, env_id: str, total_steps: int, seed: int, eval_episodes: int, learning_rate: float = 1e-3
) -> dict[str, Any]:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    import recurrl.envs  # noqa: F401  (registers the POMDP ids)

    env = VecNormalize(make_vec_env(env_id, n_envs=8, seed=seed), gamma=0.98)
    model = RecurrentPPO(policy, env, seed=seed, verbose=0, **zoo_cartpole_novel_kwargs(learning_rate))
    start = time.perf_counter()
    model.learn(total_timesteps=total_steps)
    wall = time.perf_counter() - start
    eval_env = VecNormalize(
        make_vec_env(env_id, n_envs=1, seed=seed + 1000), training=False, norm_reward=False
    )
    eval_env.obs_rms = env.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    env.close()
    eval_env.close()
    return {"seed": seed, "mean_return": float(mean), "std_return": float(std), "wall_s": wall}


def adapter_returns(
    env_id: str = "CartPoleNoVel-v1",
    total_steps: int = 100_000,
    seeds: tuple[int, ...] = (0,),
    eval_episodes: int = 20,
    adapter_learning_rate: float = 3e-4,
    num_threads: int = 1,
) -> dict[str, Any]:
    """The LSTM runs the Zoo's lr 1e-3; minGRU runs 3e-4 (with 1e-3 its updates overshoot: seed 0
    scored 261 at 100k steps, against 500 with 3e-4; see the README)."""
    from recurrl.policies.integrations.sb3 import MinGRUPolicy

    torch.set_num_threads(num_threads)
    results: dict[str, list[dict[str, Any]]] = {
        "MinGRUPolicy (adapter)": [],
        "MlpLstmPolicy (sb3-contrib)": [],
    }
    for seed in seeds:
        results["MinGRUPolicy (adapter)"].append(
            train_and_score(MinGRUPolicy, env_id, total_steps, seed, eval_episodes, adapter_learning_rate)
        )
        results["MlpLstmPolicy (sb3-contrib)"].append(
            train_and_score("MlpLstmPolicy", env_id, total_steps, seed, eval_episodes)
        )
    summary = {name: statistics.mean(r["mean_return"] for r in runs) for name, runs in results.items()}
    return {
        "env_id": env_id,
        "total_steps": total_steps,
        "seeds": list(seeds),
        "adapter_learning_rate": adapter_learning_rate,
        "runs": results,
        "mean_return": summary,
    }
