"""`recurrl bench-decision`: speed of the Decision agent, minGRU against the Transformer side by side."""

from __future__ import annotations

import argparse
import json

from recurrl.scripts.options import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-decision",
        help="Decision-agent speed: train steps/s, per-tick inference (step vs window), eval wall time",
        description=(
            "Measure the Decision agent side by side for each backbone (medians of interleaved rounds):\n"
            "  train  optimizer steps/s at the same width, depth, batch and K\n"
            "  tick   per-tick inference: DT-minGRU's step (--tokens, fused) against the classic DT, a\n"
            "         Transformer re-encoding its last K steps (--baseline-tokens, triple); each backbone's\n"
            "         step and window are reported, for every --batch size\n"
            "  eval   wall time of N episodes with N parallel envs (give a trained CHECKPOINT for real lengths)\n"
            "  ddp    `recurrl train` under torchrun --nproc_per_node N against one process (steps/s, the\n"
            "         first --backbones entry, --steps per run, --threads per process)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from recurrl.agents.decision.benchmark import run as run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args)
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark options (read by agents.decision.benchmark)."""
    parser.add_argument(
        "what",
        choices=["train", "tick", "eval", "d3rlpy", "ddp"],
        help="d3rlpy: our DT-Transformer against d3rlpy's at DT's settings (needs d3rlpy installed)",
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="eval: a trained checkpoint (realistic episode lengths)"
    )
    parser.add_argument("--dataset", default="recurrl/hopper/medium-v0")
    parser.add_argument("--backbones", nargs="+", default=["mingru", "transformer"])
    parser.add_argument("--hidden-dim", type=positive_int, default=128)
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
    parser.add_argument("--steps", type=positive_int, default=10, help="train: steps per round")
    parser.add_argument("--ticks", type=positive_int, default=200, help="tick: ticks per round")
    parser.add_argument(
        "--batch", type=positive_int, nargs="+", default=[1, 10], help="tick: envs acting at once (each size measured)"
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
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
