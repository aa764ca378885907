"""`recurrl dataset`: inspect and convert offline datasets.

Examples:
  recurrl dataset info recurrl/hopper/medium-v0          # embedded copy when not under MINARI_DATASETS_PATH
  recurrl dataset info mujoco/hopper/medium-v0 --download
  recurrl dataset info path/to/hopper-medium-v2.hdf5 --json
  recurrl dataset export recurrl/hopper/medium-v0 hopper-medium.hdf5
"""

from __future__ import annotations

import argparse
import json

from recurrl.scripts.options import check_output_file

SOURCE_HELP = (
    "a Minari dataset id (under $MINARI_DATASETS_PATH, default ~/.minari/datasets), a Minari dataset "
    "directory, or a D4RL-format .hdf5 file"
)

CLIP_HELP = "clip actions outside the env's action space to its bounds (default: an error)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset",
        help="inspect or convert an offline dataset (Minari id, Minari directory, D4RL hdf5)",
        description="Inspect or convert an offline dataset.",
    )
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    info = actions.add_parser("info", help="episodes, steps, returns, shapes, reference scores")
    info.add_argument("source", help=SOURCE_HELP)
    info.add_argument(
        "--download", action="store_true", help="fetch a Minari id from Minari's remote if missing"
    )
    info.add_argument("--env-id", help="evaluation env, for hdf5 files that do not name one (e.g. Hopper-v5)")
    info.add_argument("--clip-actions", action="store_true", help=CLIP_HELP)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)

    export = actions.add_parser("export", help="write a D4RL-format hdf5 copy of a dataset")
    export.add_argument("source", help=SOURCE_HELP)
    export.add_argument("output", help="the .hdf5 file to write")
    export.add_argument(
        "--download", action="store_true", help="fetch a Minari id from Minari's remote if missing"
    )
    export.add_argument("--env-id", help="evaluation env, for hdf5 files that do not name one")
    export.add_argument("--clip-actions", action="store_true", help=CLIP_HELP)
    export.add_argument("--compress", action="store_true", help="gzip the arrays")
    export.set_defaults(func=run_export)


def run_info(args: argparse.Namespace) -> int:
    import time

    from recurrl.envs.datasets import dataset_summary, load_dataset

    start = time.perf_counter()
    dataset = load_dataset(
        args.source, download=args.download, env_id=args.env_id, clip_actions=args.clip_actions
    )
    load_seconds = time.perf_counter() - start
    summary = dataset_summary(dataset)
    summary["load_seconds"] = round(load_seconds, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"dataset      {summary['name']}")
    print(f"env          {summary['env_id']}")
    print(f"episodes     {summary['episodes']} ({summary['terminated_episodes']} end in a termination)")
    print(f"steps        {summary['steps']} (mean episode length {summary['length_mean']:.1f})")
    print(
        f"return       min {summary['return_min']:.2f}  mean {summary['return_mean']:.2f}  "
        f"max {summary['return_max']:.2f}"
    )
    print(f"observation  shape {tuple(summary['observation_shape'])}")
    print(f"action       shape {tuple(summary['action_shape'])}  {summary['action_space']}")
    if summary["ref_min_score"] is None or summary["ref_max_score"] is None:
        print("reference    none (no normalized score for this dataset)")
    else:
        print(
            f"reference    min {summary['ref_min_score']}  max {summary['ref_max_score']}  "
            f"(mean return normalized: {summary['normalized_return_mean']:.1f})"
        )
    print(f"loaded in    {load_seconds:.2f} s")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from recurrl.envs.datasets import export_hdf5, load_dataset

    check_output_file(args.output, "OUTPUT")
    dataset = load_dataset(
        args.source, download=args.download, env_id=args.env_id, clip_actions=args.clip_actions
    )
    path = export_hdf5(dataset, args.output, compression="gzip" if args.compress else None)
    print(f"wrote {path}: {len(dataset.episodes)} episodes, {dataset.num_steps} steps (D4RL format)")
    return 0
