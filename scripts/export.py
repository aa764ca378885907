"""`recurrl export`: a checkpoint's per-tick step as ONNX, the recurrent state as explicit inputs/outputs."""

from __future__ import annotations

import argparse

from recurrl.scripts.options import check_output_file, finite_float, positive_int

DESCRIPTION = """\
Write the per-tick step of a Decision or PPO checkpoint (observation normalization included) as an
ONNX graph whose recurrent state is explicit inputs and outputs, and OUT.json beside it naming every
input and output, its shape and what it means. Per tick: feed the observation (and, for a Decision
agent, the previous reward and the target return), episode_start, and the state the last tick
returned (zeros at the start). A run directory stands for its checkpoints/last.

  recurrl export runs/<name> policy.onnx
  recurrl export runs/<name>/checkpoints/best policy.onnx --latency    # ONNX vs PyTorch per tick, B=1

Needs onnx and onnxruntime: pip install 'recurrl[export]'.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint's per-tick step as ONNX (state as explicit inputs/outputs)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint or run directory")
    parser.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write (OUT.json goes beside it)")
    parser.add_argument(
        "--target-return",
        type=finite_float,
        help="Decision agents: the target return the JSON names as default (the graph takes it as an input)",
    )
    parser.add_argument(
        "--latency", action="store_true", help="time the step per tick at B=1: ONNX vs PyTorch"
    )
    parser.add_argument("--ticks", type=positive_int, default=200, help="--latency: ticks per round")
    parser.add_argument("--rounds", type=positive_int, default=7, help="--latency: rounds (the median is reported)")
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads for torch and onnxruntime")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from recurrl.agents.agent import load
    from recurrl.agents.export import export_onnx

    check_output_file(args.output, "OUT.onnx", (".onnx",))
    check_output_file(Path(args.output).with_suffix(".json"), "OUT.onnx's description")
    torch.set_num_threads(args.threads)
    agent = load(args.checkpoint, target_return=args.target_return)
    info = export_onnx(agent, args.output, checkpoint=str(args.checkpoint))
    print(
        f"wrote {args.output} and its description {info['json']} ({info['kind']} agent, {info['backbone']} "
        f"backbone, {len(info['inputs'])} inputs, {len(info['outputs'])} outputs)"
    )
    if args.latency:
        from recurrl.agents.export_timing import step_latency_us

        t = step_latency_us(agent, args.output, args.ticks, args.rounds)
        print(
            f"per tick at B=1 ({t['threads']} thread(s), median of {t['rounds']} rounds of {t['ticks']} ticks): "
            f"onnxruntime {t['onnxruntime']:.1f} us, PyTorch {t['torch']:.1f} us "
            f"(eager ops {t['torch_eager']:.1f} us)"
        )
    return 0
