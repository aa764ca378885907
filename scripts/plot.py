"""`recurrl plot`: learning curves of Decision and PPO runs from their TensorBoard logs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Draw the learning curves of one or more runs: the normalized score (or the return, for data without
reference scores) of a Decision run's evaluations, and the evaluation return (or, without periodic
evaluation, the training episode return) of a PPO run, against training steps. Runs whose config.json
differ only in seed are one line: the mean over seeds with a band of +- one standard deviation.

  recurrl plot runs/dt-mingru-s0 runs/dt-mingru-s1 runs/dt-mingru-s2 runs/dt-lstm-s0 -o curves.png
  recurrl plot runs/ppo-* -o ppo.png --tag rollout/ep_rew_mean
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="learning curves of runs (mean and band over seeds) from their TensorBoard logs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (with config.json)")
    parser.add_argument("-o", "--output", default="curves.png", help="image to write (.png, .pdf or .svg)")
    parser.add_argument("--tag", help="TensorBoard scalar to draw instead of the default score tag")
    parser.add_argument("--title", help="figure title")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recurrl.agents.curves import plot_learning_curves

    groups = plot_learning_curves(args.runs, args.output, tag=args.tag, title=args.title)
    for group in groups:
        last = f"{group.mean[-1]:.1f}" + (f" +- {group.std[-1]:.1f}" if len(group.curves) > 1 else "")
        print(f"{group.label}: {group.curves[0].tag} {last} at step {int(group.steps[-1])}")
    print(f"plot: {args.output}")
    return 0
