"""`recurrl bench`: training-step time, per-tick step latency and peak memory of every backbone.

Writes bench.json, bench.md and bench.png to --out and prints the markdown table.
"""

from __future__ import annotations

import argparse

from recurrl.scripts.options import check_output_dir, positive_float, positive_int


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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark backbones: training step time, per-tick step latency, peak memory",
        description=(
            "Measure on the current device: (a) training step time (forward+backward) per backbone and scan "
            "backend for each T, (b) per-tick step latency per batch size, including a Decision Transformer "
            "re-running its 60-token context, (c) peak memory of the training step. Rows are the minGRU scan "
            "alone, one recurrent layer (minGRU/minLSTM per scan vs nn.LSTM/nn.GRU and their cells) and full "
            "backbones (Mamba: its compiled CPU kernels [numba] vs mambapy's path [mambapy], train and step). "
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
    parser.add_argument("--train-batch", type=positive_int, help="batch size B of the training step (default 64)")
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
        "--budget", type=positive_float, help="seconds per configuration before stopping early (default 3, quick 0.3)"
    )
    parser.add_argument("--hidden-dim", type=positive_int, help="hidden (and input) width H (default 128)")
    parser.add_argument(
        "--dt-layers", type=positive_int, help="layers of the Decision-Transformer comparison (default 3)"
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from recurrl.agents.bench import BenchConfig, run_bench

    check_output_dir(args.out, "--out")
    overrides: dict = {}
    for arg, key in (
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
        ("threads", "threads"),
    ):
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
