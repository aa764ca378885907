"""Throughput benchmark: our recurrent PPO against sb3-contrib RecurrentPPO(MlpLstmPolicy), side by side.

Both run the same env with matched n_envs, n_steps, minibatch size, epochs, hidden width and
separate actor/critic memories, for the same number of env steps, on the same torch thread count;
runs are interleaved (ours, sb3, adapter, ours, ...) so machine-load drift hits all of them alike.
Reported: env steps/s (wall clock of the training call, construction excluded) and env steps per
CPU-second of the process (robust to other load on a shared machine), medians over repeats, and the
ratios of medians. Optionally also sb3-contrib RecurrentPPO with our adapter (MinGRUPolicy).
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


def run_benchmark(
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
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_runs: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        config.run_dir = tmp
        for _ in range(repeats):
            for name, fn in contenders.items():
                wall_sps, cpu_sps = fn()
                runs[name].append(wall_sps)
                cpu_runs[name].append(cpu_sps)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_runs.items()}
    ours, sb3 = list(medians.values())[:2]
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
            "torch_threads": torch.get_num_threads(),
            "device": config.device,
        },
        "steps_per_s": runs,
        "median_steps_per_s": medians,
        "ratio_ours_over_sb3_lstm": ours / sb3,
        # Steps per CPU-second of this process: robust to other load on a shared machine.
        "steps_per_cpu_s": cpu_runs,
        "median_steps_per_cpu_s": cpu_medians,
        "cpu_ratio_ours_over_sb3_lstm": ours_cpu / sb3_cpu,
    }


def format_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"env {result['env_id']}: n_envs={s['num_envs']} n_steps={s['num_steps']} minibatch={s['minibatch_size']} "
        f"epochs={s['update_epochs']} hidden={s['hidden_dim']} backbone_options={s['backbone_options']} "
        f"steps={s['total_steps']} x{s['repeats']} "
        f"threads={s['torch_threads']} device={s['device']}",
        f"{'contender':<46} {'steps/s (wall)':>15} {'steps/CPU-s':>12}  wall runs",
    ]
    for name, median in result["median_steps_per_s"].items():
        runs = ", ".join(f"{v:.0f}" for v in result["steps_per_s"][name])
        lines.append(f"{name:<46} {median:>15.0f} {result['median_steps_per_cpu_s'][name]:>12.0f}  [{runs}]")
    lines.append(
        f"ratio recurrl PPO / sb3-contrib LSTM (medians): {result['ratio_ours_over_sb3_lstm']:.2f}x wall, "
        f"{result['cpu_ratio_ours_over_sb3_lstm']:.2f}x per CPU-second"
    )
    return "\n".join(lines)
