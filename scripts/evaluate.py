"""`recurrl evaluate`: evaluate checkpoints (Decision agent; PPO checkpoints are handed to agents.ppo)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recurrl.scripts.options import (
    add_env_package_option,
    check_output_dir,
    check_output_file,
    finite_float,
    import_env_packages,
    nonnegative_int,
    positive_int,
)

DESCRIPTION = """\
Evaluate one or more checkpoints in parallel gymnasium envs and report mean +- std return and
normalized score. A run directory stands for its last and best checkpoints. Several checkpoints
(e.g. the same config trained with 3 seeds) are also aggregated: over all episodes, and as the
mean +- std of the per-checkpoint means ("over seeds").

  recurrl evaluate runs/<name>/checkpoints/last
  recurrl evaluate runs/<name> --mode both --episodes 20 --target-returns 3600 1800
  recurrl evaluate runs/seed0/checkpoints/last runs/seed1/checkpoints/last --output summary.json
  recurrl evaluate runs/<name>/checkpoints/last --target-returns 1000 2000 3000 3600 4500 --plot sweep.png
  recurrl evaluate runs/<name>/checkpoints/last --video videos/ --video-episodes 2   (MUJOCO_GL=egl headless)

The env packages a run imported (--env-package, kept in its config) are imported again; --env-package
adds others (e.g. for a checkpoint from before the option existed).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate checkpoints (stateful or window mode) and report normalized scores",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint or run directories")
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes per target return and seed")
    parser.add_argument("--num-envs", type=positive_int, default=10, help="parallel envs")
    parser.add_argument("--target-returns", type=finite_float, nargs="+", help="default: the checkpoint's config")
    parser.add_argument(
        "--mode",
        choices=["stateful", "window", "both"],
        default="stateful",
        help="carry state or re-encode K steps",
    )
    parser.add_argument("--context-length", type=positive_int, help="window mode's K (default: the training K)")
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0], help="env seeds (episodes run for each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=nonnegative_int, default=1, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--stochastic", action="store_true", help="PPO only: sample actions")
    parser.add_argument("--output", help="write the results JSON here")
    add_env_package_option(parser)
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="Decision checkpoints: plot the achieved return against each target return (DT's Figure 4)",
    )
    parser.add_argument("--video", metavar="DIR", help="also film evaluation episodes into DIR (first seed/target)")
    parser.add_argument("--video-episodes", type=positive_int, default=1, help="episodes to film per checkpoint")
    parser.add_argument("--video-format", choices=["mp4", "gif"], default="mp4")
    parser.set_defaults(func=run)


def expand(paths: list[str]) -> list[Path]:
    """Run directories stand for their last and best checkpoints."""
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if (path / "meta.json").is_file():
            out.append(path)
        elif (path / "checkpoints").is_dir():
            found = [
                path / "checkpoints" / c
                for c in ("last", "best")
                if (path / "checkpoints" / c / "meta.json").is_file()
            ]
            if not found:
                raise ValueError(f"{name!r}: run directory without checkpoints")
            out.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"checkpoint {name!r} does not exist")
        else:
            raise ValueError(
                f"{name!r} is not a checkpoint (no meta.json) nor a run directory (no checkpoints/)"
            )
    return out


def read_kind(path: Path) -> str:
    from recurrl.agents.checkpoint import read_meta

    return str(read_meta(path).get("kind"))  # a corrupt or incomplete checkpoint is one CheckpointError


def run(args: argparse.Namespace) -> int:
    from recurrl.agents.checkpoint import write_json_atomic
    from recurrl.agents.decision.evaluation import aggregate_checkpoints, evaluate_checkpoint
    from recurrl.agents.evaluation import fmt, format_summary, mean_std

    check_output_file(args.output, "--output")
    check_output_file(args.plot, "--plot")
    import_env_packages(args)
    check_output_dir(args.video, "--video")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    plot_path = Path(args.plot) if args.plot else None
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG; give a path ending in .png, not {args.plot!r}")
    paths = expand(args.checkpoints)
    kinds = [read_kind(path) for path in paths]
    unknown = [f"{p} ({k!r})" for p, k in zip(paths, kinds, strict=True) if k not in ("decision", "ppo")]
    if unknown:
        raise ValueError(f"unknown checkpoint kind: {', '.join(unknown)} (expected 'decision' or 'ppo')")
    if plot_path is not None and "decision" not in kinds:
        raise ValueError("--plot needs Decision-agent checkpoints (it plots return against target return)")
    if args.stochastic and "decision" in kinds:
        raise ValueError("--stochastic is for PPO checkpoints: a Decision agent's actions are deterministic")
    modes = ("stateful", "window") if args.mode == "both" else (args.mode,)
    if args.video:
        film(args, paths, modes[0])
    decision, other = [], []
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "decision":
            result = evaluate_checkpoint(
                path, args.target_returns, modes, args.episodes, args.num_envs, tuple(args.seeds),
                args.context_length, args.device,
            )  # fmt: skip
            decision.append(result)
            for mode, summaries in result["modes"].items():
                for s in summaries:
                    print(f"{path} [{mode}, step {result['step']}] {format_summary(s)}")
        else:
            from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint

            result = evaluate_ppo_checkpoint(
                path, args.episodes, tuple(args.seeds), args.num_envs, args.device, not args.stochastic
            )
            other.append(result)
            how = "deterministic" if result["deterministic"] else "stochastic"
            print(f"{path} [ppo, {result['env_id']}, {result['backbone']}, {how}] {format_summary(result)}")
    if any(s["normalized_score_mean"] is None for r in decision for ss in r["modes"].values() for s in ss):
        from recurrl.scripts.train import RAW_RETURNS_NOTE

        print(RAW_RETURNS_NOTE)
    summary: dict[str, Any] = {"checkpoints": decision + other}
    if len(decision) > 1:
        summary["aggregate"] = aggregate_checkpoints(decision)
        for row in summary["aggregate"]:
            scale = abs(row["return_mean"])
            text = f"all {row['checkpoints']} checkpoints [{row['mode']}] target {row['target_return']:g}: "
            text += f"return {fmt(row['return_mean'])} (std over episodes {fmt(row['return_std_episodes'], scale)}, "
            text += f"over checkpoints {fmt(row['return_std_checkpoints'], scale)})"
            if "normalized_score_mean" in row:
                text += f", normalized {mean_std(row['normalized_score_mean'], row['normalized_score_std_checkpoints'])}"
            print(text)
    if args.output:
        write_json_atomic(args.output, summary)
        print(f"results: {args.output}")
    if plot_path is not None:
        from recurrl.agents.decision.plots import plot_target_sweep

        plot_target_sweep(decision, summary.get("aggregate", []), plot_path)
        print(f"plot: {plot_path}")
    return 0


def film(args: argparse.Namespace, paths: list[Path], mode: str) -> None:
    """--video: film each checkpoint before evaluating it (a rendering problem then costs no evaluation)."""
    from recurrl.agents.video import VideoRequest, headless_gl, record_checkpoint_videos

    headless_gl()
    request = VideoRequest(Path(args.video), args.video_episodes, args.video_format, args.seeds[0])
    for path in paths:
        target = args.target_returns[0] if args.target_returns else None
        written = record_checkpoint_videos(
            path, request, target_return=target, mode=mode, context_length=args.context_length,
            deterministic=not args.stochastic, device=args.device,
        )  # fmt: skip
        for video in written:
            print(f"video: {video}")
