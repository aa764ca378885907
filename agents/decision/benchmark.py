"""Speed measurements of the Decision agent (the README's numbers come from here).

    recurrl bench-decision train      # train steps/s, minGRU vs Transformer, same size
    recurrl bench-decision tick       # per-tick inference: step vs window re-encode
    recurrl bench-decision eval [CHECKPOINT]   # wall time of 10 Hopper episodes, 10 envs

Timings on a shared CPU are noisy: backbones are measured interleaved, in rounds, and medians are
reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from .config import DecisionConfig
from .model_io import build_model, model_kwargs


def _config(backbone: str, args: argparse.Namespace) -> DecisionConfig:
    config = DecisionConfig(
        dataset=args.dataset, context_length=args.context_length, batch_size=args.batch_size
    )
    config.model.backbone, config.model.hidden_dim, config.model.num_layers = (
        backbone,
        args.hidden_dim,
        args.num_layers,
    )
    config.model.tokens = args.tokens
    return config


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Optimizer steps/s of the full training step (sample, forward, backward, AdamW) per backbone."""
    from .trainer import DecisionTrainer, load_training_dataset

    dataset = load_training_dataset(args.dataset)
    trainers = {}
    runs_dir = tempfile.mkdtemp(prefix="recurrl-bench-")  # the trainer writes config.json there
    for name in args.backbones:
        config = _config(name, args)
        config.runs_dir, config.run_name = runs_dir, name
        trainers[name] = DecisionTrainer(config, dataset, show_progress=False)
    times: dict[str, list[float]] = {name: [] for name in args.backbones}
    for trainer in trainers.values():  # warm-up
        for _ in range(3):
            trainer.train_step()
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            times[name].append(args.steps / (time.perf_counter() - start))
    result = {
        name: {
            "steps_per_sec_median": statistics.median(v),
            "rounds": v,
            "parameters": trainers[name].model.num_parameters(),
        }
        for name, v in times.items()
    }
    if "mingru" in result and "transformer" in result:
        ratios = [a / b for a, b in zip(times["mingru"], times["transformer"], strict=True)]
        result["mingru_over_transformer_median_ratio"] = statistics.median(ratios)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return result


@torch.inference_mode()
def bench_tick(args: argparse.Namespace) -> dict[str, Any]:
    """Time per env tick for `--batch` envs: `model.step` (state carried) vs re-encoding the K-step window."""
    from .trainer import load_training_dataset

    dataset = load_training_dataset(args.dataset)
    k = args.context_length
    out: dict[str, Any] = {}
    models = {name: build_model(model_kwargs(_config(name, args), dataset)).eval() for name in args.backbones}
    s, a, b = models[args.backbones[0]].state_dim, models[args.backbones[0]].act_dim, args.batch
    rtg, obs, prev = torch.full((b, 1), 3600.0), torch.randn(b, s), torch.zeros(b, a)
    window = (
        torch.full((b, k, 1), 3600.0),
        torch.randn(b, k, s),
        torch.zeros(b, k, a),
        torch.arange(k).repeat(b, 1),
    )
    starts0 = torch.zeros(b, k, dtype=torch.bool)
    starts0[:, 0] = True

    def time_step(model) -> float:
        state = model.initial_state(b)
        first = torch.ones(b, dtype=torch.bool)
        not_first = torch.zeros(b, dtype=torch.bool)
        for t in range(k):  # fill a window's worth of context first (KV cache full for the transformer)
            _, state = model.step(rtg, obs, prev, torch.full((b,), t), state, first if t == 0 else not_first)
        start = time.perf_counter()
        for t in range(args.ticks):
            _, state = model.step(rtg, obs, prev, torch.full((b,), k + t), state, not_first)
        return (time.perf_counter() - start) / args.ticks

    def time_window(model) -> float:
        start = time.perf_counter()
        for _ in range(args.ticks):
            model(*window, starts0)
        return (time.perf_counter() - start) / args.ticks

    rounds: dict[str, list[float]] = {}
    with torch.inference_mode():  # as in evaluation: no autograd bookkeeping per tick
        for _ in range(args.rounds):
            for name, model in models.items():
                rounds.setdefault(f"{name}/step", []).append(time_step(model))
                rounds.setdefault(f"{name}/window", []).append(time_window(model))
    for key, values in rounds.items():
        out[key + "_us_median"] = 1e6 * statistics.median(values)
    if "mingru" in models and "transformer" in models:
        out["transformer_window_over_mingru_step"] = (
            out["transformer/window_us_median"] / out["mingru/step_us_median"]
        )
    return out


def bench_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of evaluating `episodes` Hopper episodes with `num_envs` parallel envs (stateful)."""
    from .evaluation import run_episodes
    from .model_io import EnvSpec, env_spec_from_meta, load_decision_checkpoint

    if args.checkpoint:
        model, meta = load_decision_checkpoint(args.checkpoint)
        spec, target = env_spec_from_meta(meta), meta["config"]["eval"]["target_returns"][0]
    else:
        from .trainer import load_training_dataset

        dataset = load_training_dataset(args.dataset)
        model = build_model(model_kwargs(_config("mingru", args), dataset)).eval()
        spec, target = EnvSpec.from_dataset(dataset), 3600.0
    out = {}
    for mode in args.modes:
        result = run_episodes(
            model,
            spec,
            target,
            args.episodes,
            args.num_envs,
            seed=0,
            mode=mode,
            context_length=args.context_length,
        )
        out[mode] = {
            "wall_time_s": result["wall_time_s"],
            "episodes": len(result["returns"]),
            "mean_length": sum(result["lengths"]) / len(result["lengths"]),
            "env_steps": result["env_steps"],
            "return_mean": sum(result["returns"]) / len(result["returns"]),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = {"train": bench_train, "tick": bench_tick, "eval": bench_eval}[args.what](args)
    out = {"benchmark": args.what, "threads": torch.get_num_threads(), **result}
    print(json.dumps(out, indent=2))
    return out
