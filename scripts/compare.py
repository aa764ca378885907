"""`recurrl compare`: backbones x datasets (or envs) x seeds in one command, resumable, with one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from recurrl.scripts.options import (
    add_env_package_option,
    check_output_dir,
    import_env_packages,
    nonnegative_int,
    positive_int,
)

DESCRIPTION = """\
Run a grid of ordinary training runs, one per (dataset, backbone, seed), then measure each (window-mode
scores, per-tick latency, memory) and write results.csv, summary.md, summary.json and summary.png in --out.
Run the same command again to resume: finished cells are skipped, interrupted ones resumed.

  recurrl compare --datasets recurrl/hopper/medium-v0 --backbones mingru lstm transformer --seeds 0 1 2 --out runs/cmp
  recurrl compare --datasets recurrl/hopper/medium-v0 recurrl/walker2d/medium-v0 --match-params --workers 2 --out runs/cmp2 steps=1000
  recurrl compare --online --envs CartPoleNoVel-v1 --backbones mingru lstm mlp --seeds 0 1 2 --out runs/ppo-cmp
  recurrl compare --online --env-package popgym --envs popgym-RepeatPreviousEasy-v0 --backbones mingru mlp --out runs/pop
  recurrl compare --report runs/cmp                        (rebuild the reports from the finished cells)
  recurrl compare ... --print-commands                     (one line per cell, for your own scheduler)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="backbones x datasets (or envs) x seeds: a resumable grid of runs and one report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every cell")
    parser.add_argument("--datasets", nargs="+", metavar="D", help="dataset ids or paths (offline)")
    parser.add_argument("--online", action="store_true", help="compare recurrent PPO on --envs instead")
    parser.add_argument("--envs", nargs="+", metavar="E", help="gymnasium env ids (with --online)")
    parser.add_argument("--backbones", nargs="+", metavar="B", help="default: all six (online: and mlp)")
    parser.add_argument("--seeds", nargs="+", type=nonnegative_int, default=[0, 1, 2], metavar="S")
    parser.add_argument("--config", action="append", default=[], metavar="YAML", help="preset for every cell")
    add_env_package_option(parser)
    parser.add_argument("--out", default="runs/compare", help="the grid's folder (default: runs/compare)")
    parser.add_argument("--workers", type=positive_int, default=1, help="cells at once (each on one thread)")
    parser.add_argument(
        "--match-params", action="store_true", help="offline: widths that match the first backbone's parameters"
    )
    parser.add_argument("--episodes", type=positive_int, help="evaluation episodes of the measure step (default: config)")
    parser.add_argument("--print-commands", action="store_true", help="print the cells' commands, run nothing")
    parser.add_argument("--report", metavar="DIR", help="only rebuild DIR's reports from its finished cells")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def build_grid(args: argparse.Namespace):
    from recurrl.agents.compare.grid import DECISION_BACKBONES, PPO_BACKBONES, Grid
    from recurrl.agents.compare.plan import check_offline, check_online

    check_output_dir(args.out, "--out")
    if args.online:
        if args.datasets or not args.envs:
            raise ValueError("--online compares on --envs E [E ...] (not --datasets)")
        if args.match_params:
            raise ValueError("--match-params is for offline grids (PPO presets set their own widths)")
        tasks, known = args.envs, PPO_BACKBONES
    else:
        if args.envs or not args.datasets:
            raise ValueError("give --datasets D [D ...] (or --online --envs E [E ...])")
        tasks, known = args.datasets, DECISION_BACKBONES
    backbones = args.backbones or list(known)
    unknown = [b for b in backbones if b not in known]
    if unknown:
        raise ValueError(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    for what, values in (("--datasets/--envs", tasks), ("--backbones", backbones), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise ValueError(f"{what} names a value twice: {values}")
    grid = Grid(
        out=Path(args.out),
        tasks=list(tasks),
        backbones=list(backbones),
        seeds=list(args.seeds),
        online=args.online,
        overrides=list(args.overrides),
        match_params=args.match_params,
        episodes=args.episodes,
        env_packages=import_env_packages(args),  # before the checks below make any env
    )
    if args.online:
        check_online(grid, args.config)
    else:
        from recurrl.scripts.train import resolve_config_path

        check_offline(grid, [str(resolve_config_path(p).resolve()) for p in args.config])
    return grid


def run(args: argparse.Namespace) -> int:
    from recurrl.agents.compare.grid import check_settings, run_grid
    from recurrl.agents.compare.report import write_reports

    if args.report:
        out = Path(args.report)
        if not (out / "grid.json").is_file():
            raise ValueError(f"{out} is not a compare folder (no grid.json)")
        write_reports(out)
        print(f"reports: {out / 'summary.md'}, {out / 'summary.png'}, {out / 'results.csv'}")
        return 0
    grid = build_grid(args)
    if args.print_commands:
        print("\n".join(grid.commands()))
        return 0
    check_settings(grid)
    ran = run_grid(grid, args.workers, progress=not args.no_progress)
    failed = ran.failed
    finished = [c for c in grid.cells() if grid.cell_file(c).is_file()]
    if finished:
        write_reports(grid.out, grid.tasks, grid.backbones)
        print(f"reports: {grid.out / 'summary.md'}, {grid.out / 'summary.png'}, {grid.out / 'results.csv'}")
    overhead = ran.overhead_line()
    if overhead:
        print(overhead)
    if failed:
        print(f"{len(failed)} cell(s) failed (re-run the same command to retry them):")
        for cell, why in failed:
            print(f"  {cell.name}: {why}")
        return 1
    print(f"all {len(finished)} cells done")
    return 0
