"""`recurrl train`: train the offline Decision agent (DT-style) on any backbone, then evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from recurrl.scripts.options import (
    add_env_package_option,
    env_packages_override,
    finite_float,
    import_env_packages,
    nonnegative_int,
)

DESCRIPTION = """\
Train a Decision-Transformer-style agent whose sequence model is any backbone, then evaluate the
last and the best checkpoint and print the normalized score.

With no arguments: DT-minGRU (width 64, 2 layers, fused tokens, batch 64, K=20, 2000 steps) on the embedded Hopper
medium dataset: a few minutes on 2 CPU cores. Presets (paper-sized budgets, meant for a GPU):
  recurrl train --config configs/decision/hopper-medium.yaml --backbone transformer
  recurrl train --config hopper-medium --config transformer     (short names: configs/decision/, configs/decision/backbones/)
Any config key can be overridden as key=value after the options, e.g. model.hidden_dim=128 eval.every=0.
Files are merged in order, then the options below, then key=value overrides.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the Decision agent (DT-minGRU on the embedded Hopper dataset by default)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=500")
    parser.add_argument(
        "--config", action="append", default=[], metavar="YAML", help="preset file (repeatable)"
    )
    parser.add_argument("--dataset", help="dataset id or path (default: recurrl/hopper/medium-v0)")
    parser.add_argument("--env-id", help="evaluation env, for a dataset that names none (e.g. Hopper-v5)")
    add_env_package_option(parser)
    parser.add_argument(
        "--clip-actions",
        action="store_true",
        help="clip dataset actions outside the env's action space to its bounds (default: an error)",
    )
    parser.add_argument("--backbone", help="mingru | minlstm | lstm | gru | mamba | transformer")
    parser.add_argument("--steps", type=nonnegative_int, help="optimizer steps")
    parser.add_argument("--seed", type=nonnegative_int)
    parser.add_argument(
        "--target-return",
        type=finite_float,
        nargs="+",
        metavar="R",
        help="return(s) to condition evaluation on (eval.target_returns; default: DT's target for the D4RL envs, "
        "else the dataset's best episode return)",
    )
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("--run-name", help="run directory name under --runs-dir")
    parser.add_argument("--runs-dir", help="where runs go (default: runs)")
    add_run_options(parser, "runs/<name>, or the run named by --run-name")
    parser.set_defaults(func=run)


def add_run_options(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """--resume [RUN_DIR] and --no-progress, as every training command spells them."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help=f"continue an interrupted run exactly from its saved config.json, or extend a finished one "
        f"(e.g. with more steps); RUN_DIR: {default_dir}. A new run never reuses a directory",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config_path(name: str) -> Path:
    """A YAML path, or a short preset name looked up in the packaged configs directory."""
    path = Path(name)
    if path.is_file():
        return path
    from recurrl import configs

    root = Path(configs.__file__).parent
    candidates = [root / name, root / f"{name}.yaml"]
    stem = name.removesuffix(".yaml")
    candidates += [root / sub / f"{stem}.yaml" for sub in ("decision", "decision/backbones")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in (root / "decision").glob("*.yaml"))
    raise ValueError(f"config {name!r} not found (as a file or a preset); presets: {', '.join(presets)}")


def build_config(args: argparse.Namespace):
    from recurrl.agents.config import load_config
    from recurrl.agents.decision.config import DecisionConfig

    flag_overrides = []
    for flag, key in (
        ("dataset", "dataset"),
        ("env_id", "env_id"),
        ("backbone", "model.backbone"),
        ("steps", "steps"),
        ("seed", "seed"),
        ("target_return", "eval.target_returns"),
        ("device", "device"),
        ("run_name", "run_name"),
        ("runs_dir", "runs_dir"),
    ):
        value = getattr(args, flag)
        if value is not None:
            flag_overrides.append(f"{key}={value}")
    if args.clip_actions:
        flag_overrides.append("clip_actions=true")
    flag_overrides += env_packages_override(args)
    overrides = flag_overrides + list(args.overrides)

    resume_dir = resume_argument(args, overrides)
    if resume_dir is None:
        paths = [resolve_config_path(p) for p in args.config]
        return load_config(DecisionConfig, paths, overrides), False

    # Resume: the run's saved config, then --config files and overrides; the trainer rejects changes that
    # would make the continuation differ from the original run (model, data, optimizer, ...).
    from recurrl.agents.run_dir import resume_config

    if resume_dir:
        run_dir = Path(resume_dir)
    elif args.run_name:
        run_dir = Path(args.runs_dir or "runs") / args.run_name
    else:
        raise ValueError("--resume needs a run directory (--resume runs/<name>) or --run-name")
    location = [f"run_name={run_dir.name}", f"runs_dir={run_dir.parent}"]
    files = [resolve_config_path(p) for p in args.config]
    return resume_config(DecisionConfig, run_dir, overrides + location, "decision", files), True


def resume_argument(args: argparse.Namespace, overrides: list[str]) -> str | None:
    """--resume's run directory ("" when given without one, None when absent). `--resume key=value`
    is an override after a bare --resume (argparse cannot tell), moved to `overrides`."""
    value = args.resume
    if value and "=" in value and not Path(value).exists():
        overrides.append(value)
        return ""
    return value


def run(args: argparse.Namespace) -> int:
    """Under torchrun every process runs this; rank 0 alone prints (the others' stdout goes nowhere,
    their stderr stays for what only they can see)."""
    import contextlib
    import os
    import sys

    from recurrl.agents.distributed import DistributedError, PeerFailed

    quiet = int(os.environ.get("RANK", "0")) > 0
    with open(os.devnull, "w") if quiet else contextlib.nullcontext(sys.stdout) as out:
        try:
            with contextlib.redirect_stdout(out):
                return _train(args)
        except PeerFailed:
            return 2  # rank 0 said why
        except DistributedError as error:
            print(f"recurrl train: error: {error}", file=sys.stderr)
            return 1


RAW_RETURNS_NOTE = (
    "returns are raw: the dataset has no reference scores for a normalized score "
    "(recurrl collect --ref-min-score/--ref-max-score stores them)"
)


def _train(args: argparse.Namespace) -> int:
    from recurrl.agents.decision.trainer import DecisionTrainer

    import_env_packages(args)  # before the dataset's evaluation env is made
    config, resume = build_config(args)
    trainer = DecisionTrainer(config, resume=resume, show_progress=not args.no_progress)
    print(
        f"run {trainer.run_dir}: {config.model.backbone} ({trainer.model.num_parameters():,} parameters, "
        f"{config.model.tokens} tokens, K={config.context_length}) on {trainer.dataset.name} "
        f"({len(trainer.dataset.episodes)} episodes, {trainer.dataset.num_steps:,} steps), device {trainer.device}"
        + (f", {trainer.dist.world_size} processes ({trainer.dist.transport})" if trainer.dist.enabled else "")
    )
    try:
        results = trainer.train()
    except KeyboardInterrupt:
        if trainer.run.stopped:  # every rank stopped after the same step: they can still meet
            trainer.close()
        raise
    trainer.close()  # under torchrun: every rank finished, then the process group is left in order
    if results is None:
        return 0
    if results["checkpoints"]["last"]["targets"][0]["normalized_score_mean"] is None:
        print(RAW_RETURNS_NOTE)
    for name in ("last", "best"):
        result = results["checkpoints"][name]
        for target in result["targets"]:
            if target["normalized_score_mean"] is not None:
                print(
                    f"normalized score ({name} checkpoint, step {result['step']}, target {target['target_return']:g}): "
                    f"{target['normalized_score_mean']:.1f} +- {target['normalized_score_std']:.1f}"
                )
    return 0
