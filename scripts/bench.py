"""`recurrl bench backbones|decision|ppo`: the benchmarks (agents/bench/), one subcommand each.

recurrl bench backbones --quick                 # training step, per-tick step, peak memory per backbone
recurrl bench decision train|tick|eval|d3rlpy|ddp   # the Decision agent, minGRU against the Transformer
recurrl bench ppo throughput|adapter            # recurrent PPO against sb3-contrib's RecurrentPPO
"""

from __future__ import annotations

import argparse

from recurrl.scripts.options import (
    check_output_dir,
    check_output_file,
    nonnegative_int,
    positive_float,
    positive_int,
)

THREADS_HELP = "torch CPU threads (default: torch's choice)"
JSON_HELP = "also write the result as JSON to PATH"


def _save_json(args: argparse.Namespace, result: dict) -> int:
    """--json PATH: the result written there too."""
    if args.json:
        from recurrl.agents.bench.report import write_json

        write_json(args.json, result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: backbones (train/step time, memory), decision (the Decision agent), ppo (vs sb3-contrib)",
        description="Speed benchmarks, measured side by side (interleaved rounds, medians). See docs/benchmarks.md.",
    )
    which = parser.add_subparsers(dest="benchmark", metavar="WHAT", required=True)
    _register_backbones(which)
    _register_decision(which)
    _register_ppo(which)


# --------------------------------------------------------------------------- backbones
def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 64,256, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 64,256, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# (option, BenchConfig field) for the options that override a BenchConfig default when given
BACKBONE_OPTIONS = (
    ("seq_lens", "seq_lens"),
    ("batch_sizes", "step_batch_sizes"),
    ("train_batch", "batch_size"),
    ("backbones", "backbones"),
    ("scans", "scans"),
    ("levels", "levels"),
    ("repeats", "repeats"),
    ("ticks", "ticks"),
    ("budget", "budget_s"),
    ("hidden_dim", "hidden_dim"),
    ("dt_layers", "dt_layers"),
    ("threads", "num_threads"),
)


def _register_backbones(which: argparse._SubParsersAction) -> None:
    parser = which.add_parser(
        "backbones",
        help="training step time, per-tick step latency and peak memory of every backbone",
        description=(
            "Measure on the current device: (a) training step time (forward+backward) per backbone and scan "
            "backend for each T, (b) per-tick step latency per batch size, including a Decision Transformer "
            "re-running its 60-token context, (c) peak memory of the training step. Rows are the minGRU scan "
            "alone, one recurrent layer (minGRU/minLSTM per scan vs nn.LSTM/nn.GRU and their cells) and full "
            "backbones (Mamba: its compiled CPU kernels [numba] vs mambapy's path [mambapy], train and step). "
            "Writes bench.json, bench.md and bench.png to --out and prints the markdown table. "
            "On a busy CPU pass --threads 1."
        ),
    )
    parser.add_argument("--out", default="results/bench", help="results folder (default: results/bench)")
    parser.add_argument("--quick", action="store_true", help="small subset: T=64,256, B=1,16, few repeats")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument(
        "--seq-lens", type=_int_list, help="training sequence lengths T (default 64,256,1024,4096)"
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, help="batch sizes for step latency (default 1,16,256)"
    )
    parser.add_argument(
        "--train-batch", type=positive_int, help="batch size B of the training step (default 64)"
    )
    parser.add_argument("--backbones", type=_name_list, help="comma-separated backbone names (default: all)")
    parser.add_argument(
        "--scans", type=_name_list, help="minGRU/minLSTM scan backends (default auto,loop,log,numba,triton)"
    )
    parser.add_argument(
        "--levels", type=_name_list, help="comma-separated subset of scan,layer,backbone (default: all three)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, help="timed training steps per configuration (default 7, quick 3)"
    )
    parser.add_argument(
        "--ticks", type=positive_int, help="timed step ticks per configuration (default 200, quick 20)"
    )
    parser.add_argument(
        "--budget",
        type=positive_float,
        help="seconds per configuration before stopping early (default 3, quick 0.3)",
    )
    parser.add_argument("--hidden-dim", type=positive_int, help="hidden (and input) width H (default 128)")
    parser.add_argument(
        "--dt-layers", type=positive_int, help="layers of the Decision-Transformer comparison (default 3)"
    )
    parser.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    import torch

    from recurrl.agents.bench.backbone_config import BenchConfig
    from recurrl.agents.bench.backbones import run_bench

    check_output_dir(args.out, "--out")
    overrides: dict = {}
    for arg, key in BACKBONE_OPTIONS:
        value = getattr(args, arg)
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
    overrides["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides["memory"] = not args.no_memory
    config = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_bench(config, args.out, progress=not args.no_progress)
    print(result["markdown"])
    print(f"wrote {args.out}/bench.json, bench.md, bench.png ({result['meta']['wall_s']} s)")
    return 0


# --------------------------------------------------------------------------- decision
def _register_decision(which: argparse._SubParsersAction) -> None:
    parser = which.add_parser(
        "decision",
        help="Decision-agent speed: train steps/s, per-tick inference (step vs window), eval wall time",
        description=(
            "Measure the Decision agent side by side for each backbone (medians of interleaved rounds):\n"
            "  train   optimizer steps/s at the same width, depth, batch and K\n"
            "  tick    per-tick inference: DT-minGRU's step (--tokens, fused) against the classic DT, a\n"
            "          Transformer re-encoding its last K steps (--baseline-tokens, triple); each backbone's\n"
            "          step and window are reported, for every --batch size\n"
            "  eval    wall time of N episodes with N parallel envs (give a trained CHECKPOINT for real lengths)\n"
            "  d3rlpy  our DT-Transformer against d3rlpy's at DT's settings (needs d3rlpy installed)\n"
            "  ddp     `recurrl train` under torchrun --nproc_per_node N against one process (steps/s, the\n"
            "          first --backbones entry, --steps per run, --threads per process)\n"
            "The result is printed as JSON (--json PATH also writes it)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=["train", "tick", "eval", "d3rlpy", "ddp"], help="what to measure")
    parser.add_argument(
        "checkpoint", nargs="?", help="eval: a trained checkpoint (realistic episode lengths)"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    parser.add_argument("--dataset", default="recurrl/hopper/medium-v0")
    parser.add_argument("--backbones", nargs="+", default=["mingru", "transformer"])
    parser.add_argument("--hidden-dim", type=positive_int, default=128)
    parser.add_argument(
        "--widths",
        nargs="+",
        type=backbone_width,
        default=[],
        metavar="BACKBONE=WIDTH",
        help="train, tick: another width for some backbones, e.g. the widths `recurrl compare --match-params` "
        "printed (lstm=60 transformer=52); the others keep --hidden-dim",
    )
    parser.add_argument("--num-layers", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--context-length", type=positive_int, default=20)
    parser.add_argument(
        "--tokens",
        choices=["triple", "fused"],
        default=None,
        help="token layout of the models under test (default: fused for tick, the CPU layout; "
        "triple, DT's, for train and eval)",
    )
    parser.add_argument(
        "--baseline-tokens",
        choices=["triple", "fused"],
        default="triple",
        help="tick: token layout of the Transformer baseline (classic DT: triple)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=10, help="train, d3rlpy, ddp: steps per round (run)"
    )
    parser.add_argument("--ticks", type=positive_int, default=200, help="tick: ticks per round")
    parser.add_argument(
        "--batch",
        type=positive_int,
        nargs="+",
        default=[1, 10],
        help="tick: envs acting at once (each size measured)",
    )
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--episodes", type=positive_int, default=10)
    parser.add_argument("--num-envs", type=positive_int, default=10)
    parser.add_argument("--modes", nargs="+", default=["stateful"])
    parser.add_argument(
        "--amp",
        choices=["on", "off", "both"],
        default="on",
        help="train, ddp: bf16 autocast on a GPU (the config default, on; ignored on the CPU); both: "
        "each backbone with and without it (rows NAME-bf16 and NAME-fp32)",
    )
    parser.add_argument("--device", default="auto", help="train, ddp: auto | cpu | cuda")
    parser.add_argument("--nproc", type=int, default=2, help="ddp: processes under torchrun")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP)
    parser.set_defaults(func=run_decision)


def backbone_width(text: str) -> tuple[str, int]:
    """'lstm=60' -> ('lstm', 60), for --widths."""
    name, sep, width = text.partition("=")
    if not sep or not name or not width.isdigit() or int(width) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BACKBONE=WIDTH with a positive width, e.g. lstm=60")
    return name, int(width)


def run_decision(args: argparse.Namespace) -> int:
    import torch

    from recurrl.agents.bench.decision import run
    from recurrl.agents.bench.report import print_json

    check_output_file(args.json, "--json")
    stray = [name for name, _ in args.widths if name not in args.backbones]
    if stray:
        raise ValueError(f"--widths names {', '.join(stray)}, not among --backbones ({' '.join(args.backbones)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print_json(result)
    return _save_json(args, result)


# --------------------------------------------------------------------------- ppo
def _register_ppo(which: argparse._SubParsersAction) -> None:
    parser = which.add_parser(
        "ppo",
        help="recurrent PPO against sb3-contrib RecurrentPPO: throughput (env steps/s) or adapter (returns)",
        description=(
            "throughput: env steps/s of this PPO, sb3-contrib RecurrentPPO(MlpLstmPolicy) and RecurrentPPO with our "
            "adapter policy, side by side (trailing key=value pairs override the PPO config, e.g. num_steps=32). "
            "adapter: train RecurrentPPO with our MinGRUPolicy and with its MlpLstmPolicy (RL Zoo CartPoleNoVel-v1 "
            "hyperparameters; minGRU at lr 3e-4, LSTM at the Zoo's 1e-3) and compare evaluation returns."
        ),
    )
    parser.add_argument("what", choices=["throughput", "adapter"], help="what to measure")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="throughput: PPO config overrides")
    parser.add_argument(
        "--env", default="CartPoleNoVel-v1", help="gymnasium env id (default CartPoleNoVel-v1)"
    )
    parser.add_argument(
        "--backbone", default="mingru", help="throughput: our PPO's backbone (default mingru)"
    )
    parser.add_argument(
        "--total-steps",
        type=positive_int,
        help="env steps per run (default: throughput 20000, adapter 100000)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="throughput: repeats (medians are reported)"
    )
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0], help="adapter: seeds")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP)
    parser.set_defaults(func=run_ppo)


def run_ppo(args: argparse.Namespace) -> int:
    from recurrl.agents.bench import ppo
    from recurrl.agents.bench.report import ppo_adapter_table, ppo_throughput_table

    check_output_file(args.json, "--json")
    if args.what == "adapter":
        steps = args.total_steps or 100_000
        result = ppo.adapter_returns(args.env, steps, tuple(args.seeds), num_threads=args.threads or 1)
        print(ppo_adapter_table(result))
    else:
        overrides = list(args.overrides) + ([f"num_threads={args.threads}"] if args.threads else [])
        result = ppo.throughput(args.env, args.backbone, args.total_steps or 20_000, args.repeats, overrides)
        print(ppo_throughput_table(result))
    return _save_json(args, result)
