"""Speed measurements of the Decision agent (the README's numbers come from here).

    recurrl bench-decision train      # train steps/s, minGRU vs Transformer, same size
    recurrl bench-decision tick       # per-tick inference: minGRU step vs classic DT's window re-encode
    recurrl bench-decision eval [CHECKPOINT]   # wall time of 10 Hopper episodes, 10 envs
    recurrl bench-decision ddp        # torchrun --nproc_per_node 2 against one process (ddp_benchmark.py)

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


def _config(backbone: str, args: argparse.Namespace, tokens: str | None = None) -> DecisionConfig:
    """The model under test. `tokens` defaults to `--tokens`, else DT's triple layout (train, eval)."""
    config = DecisionConfig(
        dataset=args.dataset,
        context_length=args.context_length,
        batch_size=args.batch_size,
        device=getattr(args, "device", "auto"),
    )
    config.model.backbone, config.model.hidden_dim, config.model.num_layers = (
        backbone,
        args.hidden_dim,
        args.num_layers,
    )
    config.model.tokens = tokens or args.tokens or "triple"
    return config


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Optimizer steps/s of the full training step (sample, forward, backward, AdamW) per backbone."""
    from .trainer import DecisionTrainer, load_training_dataset

    dataset = load_training_dataset(args.dataset)
    trainers = {}
    runs_dir = tempfile.mkdtemp(prefix="recurrl-bench-")  # the trainer writes config.json there
    amp = getattr(args, "amp", "on")
    variants = [(name, None) for name in args.backbones] if amp != "both" else [
        (name, suffix) for name in args.backbones for suffix in ("bf16", "fp32")
    ]
    for name, suffix in variants:
        key = name if suffix is None else f"{name}-{suffix}"
        config = _config(name, args)
        config.runs_dir, config.run_name = runs_dir, key
        config.amp = amp == "on" or suffix == "bf16"
        trainers[key] = DecisionTrainer(config, dataset, show_progress=False)
    times: dict[str, list[float]] = {name: [] for name in trainers}
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
            "amp": trainers[name].amp,  # bf16 autocast in effect (on a GPU only)
        }
        for name, v in times.items()
    }
    for suffix in ("", "-bf16", "-fp32"):
        if f"mingru{suffix}" in result and f"transformer{suffix}" in result:
            ratios = [a / b for a, b in zip(times[f"mingru{suffix}"], times[f"transformer{suffix}"], strict=True)]
            result[f"mingru_over_transformer{suffix.replace('-', '_')}_median_ratio"] = statistics.median(ratios)
    result["device"] = str(next(iter(trainers.values())).device)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return result


@torch.inference_mode()  # as in evaluation: no autograd bookkeeping per tick
def bench_tick(args: argparse.Namespace) -> dict[str, Any]:
    """Time per env tick, for each `--batch` size: the model's `step` (state carried) and re-encoding
    the last K steps (`window`, classic DT), for every backbone in `--backbones`.

    The Transformer is the classic DT baseline and uses `--baseline-tokens` (triple, as DT); the other
    backbones use `--tokens` (fused by default, the project's CPU layout). Same width, depth and K on
    both sides. Every (backbone, mode, batch) is timed once per round, rounds interleave them all, and
    medians over rounds are reported (a shared CPU is noisy).
    """
    from .trainer import load_training_dataset

    dataset = load_training_dataset(args.dataset)
    k, ticks = args.context_length, args.ticks
    tokens = {
        name: args.baseline_tokens if name == "transformer" else (args.tokens or "fused")
        for name in args.backbones
    }
    models = {
        name: build_model(model_kwargs(_config(name, args, tokens[name]), dataset)).eval()
        for name in args.backbones
    }
    # minGRU/minLSTM step compiled (numba_step.py, the default on CPU) and eager (scan="loop"): the
    # same model config's two acting paths, to show what the compiled step buys. Timed for `step` only.
    eager = {}
    for name in args.backbones:
        if name in ("mingru", "minlstm"):
            config = _config(name, args, tokens[name])
            config.model.backbone_options["scan"] = "loop"
            eager[f"{name}-eager"] = build_model(model_kwargs(config, dataset)).eval()
    first_model = next(iter(models.values()))
    s, a = first_model.state_dim, first_model.act_dim

    def tick_inputs(b: int) -> dict[str, Any]:
        """Fixed inputs for `b` envs, built outside the timed loops (only the model is timed)."""
        starts0 = torch.zeros(b, k, dtype=torch.bool)
        starts0[:, 0] = True
        return {
            "rtg": torch.full((b, 1), 3600.0),
            "obs": torch.randn(b, s),
            "prev": torch.zeros(b, a),
            "first": torch.ones(b, dtype=torch.bool),
            "not_first": torch.zeros(b, dtype=torch.bool),
            "times": [torch.full((b,), t) for t in range(k + ticks)],
            "window": (
                torch.full((b, k, 1), 3600.0),
                torch.randn(b, k, s),
                torch.zeros(b, k, a),
                torch.arange(k).repeat(b, 1),
                starts0,
            ),
        }

    def time_step(model, x: dict[str, Any], n: int) -> float:
        state = model.initial_state(x["rtg"].shape[0])
        times = x["times"]
        # Fill a window's worth of context first (untimed): the Transformer's KV cache is then full.
        for t in range(k):
            starts = x["first"] if t == 0 else x["not_first"]
            _, state = model.step(x["rtg"], x["obs"], x["prev"], times[t], state, starts)
        start = time.perf_counter()
        for t in range(k, k + n):
            _, state = model.step(x["rtg"], x["obs"], x["prev"], times[t], state, x["not_first"])
        return (time.perf_counter() - start) / n

    def time_window(model, x: dict[str, Any], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            model(*x["window"])
        return (time.perf_counter() - start) / n

    modes = {"step": time_step, "window": time_window}
    inputs = {b: tick_inputs(b) for b in args.batch}
    cases = [(b, name, mode) for b in args.batch for name in models for mode in modes]
    cases += [(b, name, "step") for b in args.batch for name in eager]
    models |= eager
    for b, name, mode in cases:  # warm-up: first calls allocate and pick kernels
        modes[mode](models[name], inputs[b], max(1, ticks // 10))
    rounds: dict[tuple[int, str, str], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for b, name, mode in cases:
            rounds[(b, name, mode)].append(modes[mode](models[name], inputs[b], ticks))

    medians: dict[str, dict[str, float]] = {}
    for (b, name, mode), values in rounds.items():
        medians.setdefault(f"batch={b}", {})[f"{name}/{mode}"] = round(1e6 * statistics.median(values), 1)
    out: dict[str, Any] = {
        "setup": {
            "hidden_dim": args.hidden_dim,
            "num_layers": args.num_layers,
            "context_length": k,
            "tokens": tokens,
            "ticks_per_round": ticks,
            "rounds": args.rounds,
            "parameters": {name: model.num_parameters() for name, model in models.items()},
        },
        "median_us_per_tick": medians,
    }
    for name in models:
        if name != "transformer" and "transformer" in models:  # also "<name>-eager"
            out[f"transformer_window_over_{name}_step"] = {
                key: round(row["transformer/window"] / row[f"{name}/step"], 2) for key, row in medians.items()
            }
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


def bench_d3rlpy(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps/s of our DT-Transformer against d3rlpy's at DT's settings (d3rlpy_baseline.py)."""
    try:
        import d3rlpy  # noqa: F401
    except ImportError as error:
        raise ValueError(f"bench-decision d3rlpy needs d3rlpy ({error}); see agents/decision/d3rlpy_baseline.py") from error
    from .d3rlpy_baseline import bench_vs_d3rlpy

    return bench_vs_d3rlpy(args.dataset, args.steps, args.rounds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .ddp_benchmark import bench_ddp

    benches = {"train": bench_train, "tick": bench_tick, "eval": bench_eval, "d3rlpy": bench_d3rlpy, "ddp": bench_ddp}
    result = benches[args.what](args)
    out = {"benchmark": args.what, "threads": torch.get_num_threads(), **result}
    print(json.dumps(out, indent=2))
    return out
