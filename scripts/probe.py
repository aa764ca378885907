"""`recurrl probe`: does a Decision checkpoint use its return-to-go? (offline, on dataset segments)"""

from __future__ import annotations

import argparse
from typing import Any

from recurrl.scripts.options import check_output_file, finite_float, nonnegative_int, positive_int

DESCRIPTION = """\
Feed dataset segments to a Decision checkpoint with their recorded history (teacher forcing, no env)
and compare the action loss with the recorded returns-to-go to the loss with the returns-to-go
scaled (by 0, 0.5 and 2 unless --scales says otherwise). A ratio near 1 means the model does not
read the return-to-go there, so no target return can steer it. Segments come from episode starts
(the first K steps) and from random positions, as in training. --dataset probes other data of the
same task, e.g. each tier of a mixture on its own (default: the data the checkpoint was trained on).

  recurrl probe runs/<name>/checkpoints/last
  recurrl probe runs/<name>/checkpoints/last --dataset recurrl/hopper/medium-v0 recurrl/hopper/expert-v0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="how much a Decision checkpoint's actions depend on the return-to-go (offline)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a Decision checkpoint directory")
    parser.add_argument(
        "--dataset", nargs="+", metavar="SOURCE", help="dataset ids or paths (default: the run's)"
    )
    parser.add_argument("--segments", type=positive_int, default=512, help="segments per set (episode starts, random)")
    parser.add_argument(
        "--scales", type=finite_float, nargs="+", default=[0.0, 0.5, 2.0], help="return-to-go factors"
    )
    parser.add_argument("--context-length", type=positive_int, help="segment length K (default: the training K)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the segment draw")
    parser.add_argument("--output", help="write the rows as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recurrl.agents.checkpoint import write_json_atomic
    from recurrl.agents.decision.model_io import env_spec_from_meta, load_decision_checkpoint
    from recurrl.agents.decision.probe import check_dataset_spaces, format_row, rtg_sensitivity
    from recurrl.envs.datasets import load_dataset

    check_output_file(args.output, "--output")
    model, meta = load_decision_checkpoint(args.checkpoint)
    spec = env_spec_from_meta(meta)
    sources = args.dataset or [meta["dataset"]]
    k = args.context_length or meta["config"]["context_length"]
    rows: list[dict[str, Any]] = []
    for source in sources:
        # A dataset that names no env is read as one for the checkpoint's env (its spaces are checked next).
        config = meta.get("config", {})
        dataset = load_dataset(
            source, env_id=config.get("env_id"), clip_actions=bool(config.get("clip_actions", False))
        )
        check_dataset_spaces(spec, dataset)
        for row in rtg_sensitivity(
            model,
            dataset,
            segments=args.segments,
            scales=tuple(args.scales),
            context_length=k,
            seed=args.seed,
        ):
            print(format_row(row))
            rows.append(row)
    if args.output:
        write_json_atomic(args.output, {"checkpoint": args.checkpoint, "step": meta["step"], "rows": rows})
        print(f"results: {args.output}")
    return 0
