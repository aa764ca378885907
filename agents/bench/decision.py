"""`recurrl bench decision train|tick|eval|d3rlpy|ddp`: speed of the Decision agent, side by side.

    recurrl bench decision train      # train steps/s, minGRU vs Transformer, same size
    recurrl bench decision tick       # per-tick inference: minGRU step vs classic DT's window re-encode
    recurrl bench decision eval [CHECKPOINT]   # wall time of 10 Hopper episodes, 10 envs
    recurrl bench decision d3rlpy     # our DT-Transformer against d3rlpy's (d3rlpy.py)
    recurrl bench decision ddp        # torchrun --nproc_per_node 2 against one process (ddp.py)

Timings on a shared CPU are noisy: backbones are measured interleaved, in rounds, and medians are
reported (timing.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from recurrl.agents.decision.config import DecisionConfig
from recurrl.agents.decision.model_io import build_model, model_kwargs

from .timing import interleaved_rounds, median_ratio, medians, rate_per_s


@dataclass
class TickInputs:
    """Fixed inputs of `batch` envs for timing a Decision model's ticks, built outside the timed loops
    (only the model is timed): one return-to-go, observation and previous action for every tick."""

    rtg: torch.Tensor  # [B, 1]
    obs: torch.Tensor  # [B, S]
    prev: torch.Tensor  # [B, A], or [B] indices for a discrete model
    first: torch.Tensor  # [B] bool, all True: the tick that starts the episode
    later: torch.Tensor  # [B] bool, all False
    times: list[torch.Tensor]  # [B] timesteps 0 .. context_length + ticks - 1

    @classmethod
    def make(
        cls, model: Any, batch: int, context_length: int, ticks: int, target_return: float
    ) -> TickInputs:
        prev = torch.zeros(batch, dtype=torch.long) if model.discrete else torch.zeros(batch, model.act_dim)
        return cls(
            rtg=torch.full((batch, 1), target_return),
            obs=torch.randn(batch, model.state_dim),
            prev=prev,
            first=torch.ones(batch, dtype=torch.bool),
            later=torch.zeros(batch, dtype=torch.bool),
            times=[torch.full((batch,), t) for t in range(context_length + ticks)],
        )


def step_seconds_per_tick(model: Any, x: TickInputs, context_length: int, ticks: int) -> float:
    """Seconds per `model.step` over `ticks` ticks, the state carried, after `context_length` untimed
    ticks from a fresh state (a window's worth of context: the Transformer's KV cache is then full)."""
    state = model.initial_state(x.rtg.shape[0])
    for t in range(context_length):
        _, state = model.step(x.rtg, x.obs, x.prev, x.times[t], state, x.first if t == 0 else x.later)
    start = time.perf_counter()
    for t in range(context_length, context_length + ticks):
        _, state = model.step(x.rtg, x.obs, x.prev, x.times[t], state, x.later)
    return (time.perf_counter() - start) / ticks


def _config(backbone: str, args: argparse.Namespace, tokens: str | None = None) -> DecisionConfig:
    """The model under test. `tokens` defaults to `--tokens`, else DT's triple layout (train, eval)."""
    config = DecisionConfig(
        dataset=args.dataset,
        context_length=args.context_length,
        batch_size=args.batch_size,
        device=getattr(args, "device", "auto"),
    )
    config.model.backbone, config.model.num_layers = backbone, args.num_layers
    config.model.hidden_dim = _width(backbone, args)
    config.model.tokens = tokens or args.tokens or "triple"
    return config


def _width(backbone: str, args: argparse.Namespace) -> int:
    """The backbone's width: its --widths entry, else --hidden-dim."""
    return dict(getattr(args, "widths", None) or []).get(backbone, args.hidden_dim)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Optimizer steps/s of the full training step (sample, forward, backward, AdamW) per backbone."""
    from recurrl.agents.decision.trainer import DecisionTrainer, load_training_dataset

    dataset = load_training_dataset(args.dataset)
    trainers = {}
    runs_dir = tempfile.mkdtemp(prefix="recurrl-bench-")  # the trainer writes config.json there
    amp = getattr(args, "amp", "on")
    suffixes: tuple[str | None, ...] = ("bf16", "fp32") if amp == "both" else (None,)
    for name in args.backbones:
        for suffix in suffixes:
            key = name if suffix is None else f"{name}-{suffix}"
            config = _config(name, args)
            config.runs_dir, config.run_name = runs_dir, key
            config.amp = amp == "on" or suffix == "bf16"
            trainers[key] = DecisionTrainer(config, dataset, show_progress=False)
    times = interleaved_rounds(
        {name: lambda t=trainer: rate_per_s(t.train_step, args.steps) for name, trainer in trainers.items()},
        args.rounds,
        warmup_cases={
            name: lambda t=trainer: rate_per_s(t.train_step, 3) for name, trainer in trainers.items()
        },
    )
    result: dict[str, Any] = {
        name: {
            "steps_per_sec_median": median,
            "rounds": times[name],
            "parameters": trainers[name].model.num_parameters(),
            "hidden_dim": trainers[name].config.model.hidden_dim,
            "amp": trainers[name].amp,  # bf16 autocast in effect (on a GPU only)
        }
        for name, median in medians(times).items()
    }
    for suffix in ("", "-bf16", "-fp32"):
        if f"mingru{suffix}" in result and f"transformer{suffix}" in result:
            ratio = median_ratio(times[f"mingru{suffix}"], times[f"transformer{suffix}"])
            result[f"mingru_over_transformer{suffix.replace('-', '_')}_median_ratio"] = ratio
    result["device"] = str(next(iter(trainers.values())).device)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return result


def _window_inputs(model: Any, batch: int, k: int, target_return: float) -> tuple[torch.Tensor, ...]:
    """The last K steps of `batch` envs, as classic DT re-encodes them every tick."""
    starts = torch.zeros(batch, k, dtype=torch.bool)
    starts[:, 0] = True
    return (
        torch.full((batch, k, 1), target_return),
        torch.randn(batch, k, model.state_dim),
        torch.zeros(batch, k, model.act_dim),
        torch.arange(k).repeat(batch, 1),
        starts,
    )


def window_seconds_per_tick(model: Any, window: tuple[torch.Tensor, ...], ticks: int) -> float:
    start = time.perf_counter()
    for _ in range(ticks):
        model(*window)
    return (time.perf_counter() - start) / ticks


@torch.inference_mode()  # as in evaluation: no autograd bookkeeping per tick
def bench_tick(args: argparse.Namespace) -> dict[str, Any]:
    """Time per env tick, for each `--batch` size: the model's `step` (state carried) and re-encoding
    the last K steps (`window`, classic DT), for every backbone in `--backbones`.

    The Transformer is the classic DT baseline and uses `--baseline-tokens` (triple, as DT); the other
    backbones use `--tokens` (fused by default, the project's CPU layout). Same width, depth and K on
    both sides. Every (backbone, mode, batch) is timed once per round, rounds interleave them all, and
    medians over rounds are reported (a shared CPU is noisy).
    """
    from recurrl.agents.decision.trainer import load_training_dataset

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
    steps = {b: TickInputs.make(first_model, b, k, ticks, 3600.0) for b in args.batch}
    windows = {b: _window_inputs(first_model, b, k, 3600.0) for b in args.batch}

    def case(b: int, name: str, mode: str, n: int):
        model = (models | eager)[name]
        if mode == "step":
            return lambda: step_seconds_per_tick(model, steps[b], k, n)
        return lambda: window_seconds_per_tick(model, windows[b], n)

    keys = [(b, name, mode) for b in args.batch for name in models for mode in ("step", "window")]
    keys += [(b, name, "step") for b in args.batch for name in eager]
    # warm-up: first calls allocate and pick kernels
    rounds = interleaved_rounds(
        {key: case(*key, ticks) for key in keys},
        args.rounds,
        warmup_cases={key: case(*key, max(1, ticks // 10)) for key in keys},
    )
    models |= eager
    per_tick: dict[str, dict[str, float]] = {}
    for (b, name, mode), median in medians(rounds).items():
        per_tick.setdefault(f"batch={b}", {})[f"{name}/{mode}"] = round(1e6 * median, 1)
    out: dict[str, Any] = {
        "setup": {
            "hidden_dim": args.hidden_dim,
            "widths": {name: _width(name, args) for name in args.backbones},
            "num_layers": args.num_layers,
            "context_length": k,
            "tokens": tokens,
            "ticks_per_round": ticks,
            "rounds": args.rounds,
            "parameters": {name: model.num_parameters() for name, model in models.items()},
        },
        "median_us_per_tick": per_tick,
    }
    for name in models:
        if name != "transformer" and "transformer" in models:  # also "<name>-eager"
            out[f"transformer_window_over_{name}_step"] = {
                key: round(row["transformer/window"] / row[f"{name}/step"], 2)
                for key, row in per_tick.items()
            }
    return out


def bench_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of evaluating `episodes` Hopper episodes with `num_envs` parallel envs (stateful)."""
    from recurrl.agents.decision.evaluation import run_episodes
    from recurrl.agents.decision.model_io import EnvSpec, env_spec_from_meta, load_decision_checkpoint

    if args.checkpoint:
        model, meta = load_decision_checkpoint(args.checkpoint)
        spec, target = env_spec_from_meta(meta), meta["config"]["eval"]["target_returns"][0]
    else:
        from recurrl.agents.decision.trainer import load_training_dataset

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
    """Training steps/s of our DT-Transformer against d3rlpy's at DT's settings (d3rlpy.py)."""
    try:
        import d3rlpy  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"recurrl bench decision d3rlpy needs d3rlpy ({error}); see agents/bench/d3rlpy.py"
        ) from error
    from .d3rlpy import bench_vs_d3rlpy

    return bench_vs_d3rlpy(args.dataset, args.steps, args.rounds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The sub-mode `args.what` -> its result, with the thread count it ran with."""
    from .ddp import bench_ddp

    benches = {
        "train": bench_train,
        "tick": bench_tick,
        "eval": bench_eval,
        "d3rlpy": bench_d3rlpy,
        "ddp": bench_ddp,
    }
    result = benches[args.what](args)
    return {"benchmark": args.what, "threads": torch.get_num_threads(), **result}
