"""`recurrl train-ppo`: online recurrent PPO (its benchmarks against sb3-contrib: `recurrl bench ppo`).

recurrl train-ppo --env CartPoleNoVel-v1 --backbone mingru
recurrl train-ppo --env PendulumNoVel-v1 --backbone mingru --seed 2 total_steps=500000
recurrl train-ppo --resume runs/ppo/cartpole total_steps=400000
recurrl train-ppo --env-package popgym --env popgym-RepeatPreviousEasy-v0 --backbone mingru
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recurrl.scripts.options import (
    add_env_package_option,
    env_packages_override,
    import_env_packages,
    nonnegative_int,
    positive_int,
)
from recurrl.scripts.train import add_run_options, resume_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-ppo",
        help="train a recurrent PPO agent online",
        description=(
            "Recurrent PPO on a gymnasium env. The preset configs/ppo/<env>.yaml is used when it exists; "
            "--config adds YAML files, trailing key=value pairs override any config field "
            "(e.g. learning_rate=0.0003 num_envs=16)."
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--env", help="gymnasium env id, or MODULE:ENV_ID (default: the preset's, CartPoleNoVel-v1)"
    )
    add_env_package_option(parser)
    parser.add_argument(
        "--backbone", help="mingru, minlstm, lstm, gru, mamba, transformer or mlp (no memory)"
    )
    parser.add_argument("--config", action="append", default=[], help="YAML config file (repeatable)")
    parser.add_argument("--seed", type=nonnegative_int)
    parser.add_argument("--total-steps", type=positive_int, help="env steps over all envs")
    parser.add_argument(
        "--run-dir",
        help="output directory (TensorBoard, checkpoints/last, results.json; default "
        "runs/ppo/<env>-<backbone>-s<seed>-<time>); a new run never reuses one",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
    add_run_options(parser, "--run-dir's")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The run's config: a new run's from the preset, --config files and overrides; a resumed run's from
    its saved config.json plus overrides (the trainer refuses changes that would alter the run)."""
    from recurrl.agents.config import load_config
    from recurrl.agents.ppo.config import PPOConfig
    from recurrl.configs import ppo_preset
    from recurrl.envs.packages import split_env_id

    overrides = list(args.overrides)
    resume_dir = resume_argument(args, overrides)
    flags = {
        "env_id": args.env,
        "backbone": args.backbone,
        "seed": args.seed,
        "total_steps": args.total_steps,
        "run_dir": args.run_dir,
        "device": args.device,
    }
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    overrides += env_packages_override(args)
    if args.no_progress:
        overrides.append("progress_bar=false")
    if resume_dir is not None:
        return _resume_config(args, resume_dir, overrides)
    env_id = args.env or "CartPoleNoVel-v1"
    paths: list[str | Path] = []
    preset = ppo_preset(split_env_id(env_id)[1])
    if preset is not None:
        paths.append(preset)
    paths += args.config
    config = load_config(PPOConfig, paths, overrides)
    if preset is None:
        print(no_preset_note(config, bool(args.config or args.overrides)), file=sys.stderr)
    # A preset's backbone_options belong to the preset's backbone (e.g. mlp_ratio for minGRU): another
    # --backbone gets its own defaults, said out loud, unless options are given on the command line.
    options_given = any(o.startswith("backbone_options") for o in args.overrides)
    files = load_config(PPOConfig, paths, []) if args.backbone and not options_given else None
    if files is not None and args.backbone != files.backbone and files.backbone_options:
        print(
            f"note: backbone_options {files.backbone_options} are set for {files.backbone}; {args.backbone} runs "
            "with its defaults (set its own with backbone_options.KEY=VALUE)",
            file=sys.stderr,
        )
        config.backbone_options = {}
    if args.run_dir is None and not any(o.startswith("run_dir=") for o in args.overrides):
        # A timestamp: running the same command again starts a new run instead of meeting the old one.
        from recurrl.agents.run_dir import timestamped

        env_name = split_env_id(config.env_id)[1]  # no 'module:' in a folder name
        config.run_dir = f"runs/ppo/{timestamped(f'{env_name}-{config.backbone}-s{config.seed}')}"
    return config


def no_preset_note(config, changed: bool) -> str:
    """One line: an env without configs/ppo/<env>.yaml trains with these values (the PPOConfig
    defaults, or what --config files and key=value overrides made of them)."""
    source = "the PPOConfig defaults" + (" and your --config/key=value changes" if changed else "")
    keys = ("num_envs", "num_steps", "total_steps", "learning_rate", "hidden_dim", "ent_coef", "gamma")
    values = ", ".join(f"{key}={getattr(config, key)}" for key in keys)
    return f"note: no PPO preset for {config.env_id} (configs/ppo/); training with {source}: {values}"


def _resume_config(args: argparse.Namespace, resume_dir: str, overrides: list[str]):
    from recurrl.agents.ppo.config import PPOConfig
    from recurrl.agents.run_dir import resume_config

    run_dir = (
        resume_dir or args.run_dir or next((o[8:] for o in args.overrides if o.startswith("run_dir=")), None)
    )
    if not run_dir:
        raise ValueError("--resume needs a run directory (--resume RUN_DIR, or --run-dir RUN_DIR --resume)")
    files = [Path(p) for p in args.config]
    return resume_config(PPOConfig, run_dir, [*overrides, f"run_dir={run_dir}"], "ppo", files)


def run(args: argparse.Namespace) -> int:
    import_env_packages(args)  # before any env is made
    if args.env:
        from recurrl.envs.packages import check_env_id

        check_env_id(args.env)  # before a run directory is made
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # N copies would fight over one run directory
        raise ValueError(
            f"torchrun started {os.environ['WORLD_SIZE']} processes: data-parallel training is for recurrl train "
            "(the Decision agent); run recurrl train-ppo as one process"
        )
    from recurrl.agents.ppo.ppo import train_ppo

    config = build_config(args)
    summary = train_ppo(config, resume=args.resume is not None)
    print(json.dumps(summary, indent=2))
    return 0
