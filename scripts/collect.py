"""`recurrl collect`: record a behavior policy into a Minari dataset (optionally a D4RL hdf5 copy).

Examples:
  recurrl collect --env Hopper-v5 --policy tqc --steps 50000 --num-envs 8
  recurrl collect --env Hopper-v5 --policy tqc --steps 50000 --num-envs 32 --workers 2   (one process per core)
  recurrl collect --env CartPoleNoVel-v1 --policy scripted --noise 0.1 --episodes 50
  recurrl collect --suite d4rl --env Hopper-v5 --steps 100000 --export-hdf5 exports/
  recurrl collect --env Pendulum-v1 --policy my_sac.zip --episodes 20 --ref-min-score -1500 --ref-max-score -150
  recurrl collect --env CartPoleNoVel-v1 --policy runs/<ppo-run> --steps 20000
"""

from __future__ import annotations

import argparse
import json

from recurrl.scripts.options import (
    add_env_package_option,
    check_output_dir,
    check_output_file,
    finite_float,
    import_env_packages,
    nonnegative_float,
    nonnegative_int,
    positive_int,
)

TRUST = (
    "SECURITY: zoo behavior policies (model.zip, vecnormalize.pkl) hold Python pickles, which run code when "
    "unpickled. recurrl unpickles none of them: it builds the network from config.yml, loads policy.pth "
    "with torch.load(weights_only=True) and reads vecnormalize.pkl with a data-only reader (numpy arrays "
    "only) into a JSON cache. A vecnormalize.pkl that reader refuses needs --trust-pickle: only files you "
    "trust. A model zip of your own (--policy PATH.zip) is loaded with Stable-Baselines3's ALGO.load, which DOES "
    "unpickle parts of it (spaces, schedules): give only zips you trust."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record a behavior policy into a Minari dataset (or a D4RL-style suite)",
        description="Record a behavior policy into a Minari dataset; with --suite d4rl build the D4RL-style "
        "tiers (random, medium, medium-replay, expert, medium-expert) of one env. " + TRUST,
        epilog=TRUST,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--env", required=True, help="gymnasium env id, e.g. Hopper-v5 or CartPoleNoVel-v1 (or MODULE:ENV_ID)"
    )
    add_env_package_option(parser)
    parser.add_argument(
        "--policy",
        help="random, scripted (CartPoleNoVel-v1/PendulumNoVel-v1), a zoo agent: tqc, sac, ppo, trpo, a2c, ars "
        "(ALGO/ENV_NAME/ under $RECURRL_BEHAVIOR_POLICIES or ../shared/behavior-policies, without unpickling), "
        "an SB3/sb3-contrib model zip, or a recurrl PPO checkpoint or run directory",
    )
    parser.add_argument("--algo", help="with --policy PATH.zip: the SB3 algorithm (default: read from the zip)")
    parser.add_argument("--vecnormalize", help="with --policy PATH.zip: its VecNormalize file (obs statistics)")
    for bound in ("min", "max"):
        parser.add_argument(
            f"--ref-{bound}-score",
            type=finite_float,
            help=f"reference {bound} return stored in the dataset, for normalized scores (default: D4RL's, if any)",
        )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a full unpickle of a vecnormalize.pkl the data-only reader refuses (it can run any code: "
        "trusted files only; said at run time)",
    )
    parser.add_argument(
        "--suite", choices=["d4rl"], help="build the D4RL-style tiers of --env (ids recurrl/<env>/<tier>-v0)"
    )
    parser.add_argument("--tiers", nargs="+", help="with --suite: only these tiers (default: all five)")
    parser.add_argument(
        "--noise",
        type=nonnegative_float,
        default=0.0,
        help="action noise: Gaussian std for zoo policies, epsilon for CartPoleNoVel's scripted expert, "
        "torque std for PendulumNoVel's",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--steps", type=positive_int, help="env steps to record (per tier with --suite); default 1000000"
    )
    amount.add_argument("--episodes", type=positive_int, help="complete episodes to record (not with --suite)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--num-envs", type=positive_int, default=8, help="parallel envs; the policy acts on all in one batch"
    )
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="one process per env")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes to shard the envs and steps over (one core each; e.g. 2 on a 2-core machine)",
    )
    parser.add_argument("--dataset-id", help="Minari id to write (default recurrl/<env>/<policy>-v0)")
    parser.add_argument("--datasets-path", help="write under this folder instead of $MINARI_DATASETS_PATH")
    parser.add_argument("--export-hdf5", help="also write a D4RL-format copy (a file; a folder with --suite)")
    parser.add_argument(
        "--compress",
        action="store_true",
        help="gzip the Minari arrays (lossless; smaller, slightly slower to load)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same id")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads for policy inference")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from recurrl.envs.behavior import TRUST_PICKLE_ENV

    # Through the environment, so the worker processes of --workers see it too; undone afterwards.
    before = os.environ.get(TRUST_PICKLE_ENV)
    os.environ[TRUST_PICKLE_ENV] = "1" if args.trust_pickle else "0"
    try:
        return _run(args)
    finally:
        if before is None:
            os.environ.pop(TRUST_PICKLE_ENV, None)
        else:
            os.environ[TRUST_PICKLE_ENV] = before


def _run(args: argparse.Namespace) -> int:
    import torch

    import recurrl.envs  # noqa: F401  (registers the POMDP env ids)
    from recurrl.envs.minari_writer import datasets_path
    from recurrl.envs.packages import check_env_id

    packages = import_env_packages(args)
    check_env_id(args.env)
    # Batches of a few observations: one thread is faster than two fighting the env loop for cores.
    torch.set_num_threads(args.threads)
    check_output_dir(args.datasets_path, "--datasets-path")
    (check_output_dir if args.suite else check_output_file)(args.export_hdf5, "--export-hdf5")
    with datasets_path(args.datasets_path):
        if args.suite:
            _run_suite(args)
        else:
            _run_policy(args, packages)
    return 0


def _run_suite(args: argparse.Namespace) -> None:
    """--suite d4rl: the recipe's tiers of --env, each a dataset (the recipe picks policies and scores)."""
    from recurrl.envs.suites import build_suite

    if args.episodes is not None:
        raise ValueError("--suite records a number of steps per tier: use --steps, not --episodes")
    if args.policy or args.ref_min_score is not None or args.ref_max_score is not None:
        raise ValueError("--suite uses the recipe's policies and D4RL's scores: drop --policy/--ref-*-score")
    results = build_suite(
        args.env,
        steps=args.steps or 1_000_000,
        tiers=tuple(args.tiers)
        if args.tiers
        else ("random", "medium", "medium-replay", "expert", "medium-expert"),
        num_envs=args.num_envs,
        seed=args.seed,
        asynchronous=args.asynchronous,
        workers=args.workers,
        progress=not args.no_progress and not args.json,
        overwrite=args.overwrite,
        export_dir=args.export_hdf5,
        compress=args.compress,
        log=(lambda _: None) if args.json else print,  # --json prints only the JSON
    )
    if args.json:
        print(json.dumps(results, indent=2))


def _run_policy(args: argparse.Namespace, packages: list[str]) -> None:
    """--policy: record it into one dataset (and its hdf5 copy with --export-hdf5), then the summary."""
    from recurrl.agents.behavior import policy_source
    from recurrl.envs.minari_writer import check_new_dataset, format_summary, record_dataset
    from recurrl.envs.record import collect_policy
    from recurrl.envs.suites import suite_dataset_id

    if not args.policy:
        raise ValueError(
            "give --policy (random, scripted, a zoo agent, a model zip or a checkpoint) or --suite d4rl"
        )
    ref_min, ref_max, ref_source = reference_scores(args)
    policy, name = policy_source(args.policy, args.algo, args.vecnormalize)
    steps = args.steps if args.steps is not None or args.episodes is not None else 1_000_000
    dataset_id = args.dataset_id or suite_dataset_id(args.env, name)
    # Before recording, so a taken id fails fast rather than after the whole collection.
    check_new_dataset(dataset_id, args.overwrite)
    collection = collect_policy(
        args.env,
        policy,
        noise=args.noise,
        steps=steps,
        episodes=args.episodes,
        num_envs=args.num_envs,
        seed=args.seed,
        asynchronous=args.asynchronous,
        workers=args.workers,
        progress=not args.no_progress and not args.json,
        description=args.policy,
        env_packages=tuple(packages),
    )
    recipe = args.policy + (f" + N(0, {args.noise}^2) action noise" if args.noise else "")
    summary = record_dataset(
        collection,
        dataset_id,
        recipe=recipe,
        description=f"{args.env} recorded by `recurrl collect` with {recipe} (seed {args.seed}, "
        f"{args.num_envs} envs)." + ref_source,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        overwrite=args.overwrite,
        compress=args.compress,
        export_hdf5=args.export_hdf5,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if "hdf5" in summary:
            print(f"D4RL-format copy: {summary['hdf5']}")


def reference_scores(args: argparse.Namespace) -> tuple[float | None, float | None, str]:
    """(--ref-min-score, --ref-max-score), else D4RL's for its tasks, else none -> (min, max, description note)."""
    from recurrl.envs.scores import D4RL_REF_SCORES, d4rl_task_name

    given = (args.ref_min_score, args.ref_max_score)
    if given.count(None) == 1:
        raise ValueError(
            "give both --ref-min-score and --ref-max-score (normalized = 100 * (R - min) / (max - min))"
        )
    if None not in given:
        if given[0] == given[1]:
            raise ValueError(f"--ref-min-score equals --ref-max-score ({given[0]:g}); they must differ")
        return given[0], given[1], f" Reference scores {given[0]:g} / {given[1]:g} given to collect."
    task = d4rl_task_name(args.env)
    return (*D4RL_REF_SCORES[task], " Reference scores are D4RL's.") if task else (None, None, "")
