"""`recurrl evaluate`: evaluate checkpoints (Decision agent; PPO checkpoints are handed to agents.ppo)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Evaluate one or more checkpoints in parallel gymnasium envs and report mean +- std return and
normalized score. A run directory stands for its last and best checkpoints. Several checkpoints
(e.g. the same config trained with 3 seeds) are also aggregated: over all episodes, and as the
mean +- std of the per-checkpoint means ("over seeds").

  recurrl evaluate runs/<name>/checkpoints/last
  recurrl evaluate runs/<name> --mode both --episodes 20 --target-returns 3600 1800
  recurrl evaluate runs/seed0/checkpoints/last runs/seed1/checkpoints/last --output summary.json
  recurrl evaluate runs/<name>/checkpoints/last --target-returns 1000 2000 3000 3600 4500 --plot sweep.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate checkpoints (stateful or window mode) and report normalized scores",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint or run directories")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per target return and seed")
    parser.add_argument("--num-envs", type=int, default=10, help="parallel envs")
    parser.add_argument("--target-returns", type=float, nargs="+", help="default: the checkpoint's config")
    parser.add_argument(
        "--mode",
        choices=["stateful", "window", "both"],
        default="stateful",
        help="carry state or re-encode K steps",
    )
    parser.add_argument("--context-length", type=int, help="window mode's K (default: the training K)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="env seeds (episodes run for each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--stochastic", action="store_true", help="PPO only: sample actions")
    parser.add_argument("--output", help="write the results JSON here")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="Decision checkpoints: plot the achieved return against each target return (DT's Figure 4)",
    )
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
    from recurrl.agents.checkpoint import CheckpointError

    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / 'meta.json'} is corrupt: {error}") from error
    return str(meta.get("kind"))


def evaluate_ppo(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    try:
        from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint
    except ImportError as error:
        raise ValueError(
            f"{path} is a PPO checkpoint but PPO evaluation is not available: {error}"
        ) from error
    results = []
    for seed in args.seeds:
        results.append(
            evaluate_ppo_checkpoint(
                str(path),
                episodes=args.episodes,
                seed=seed,
                num_envs=args.num_envs,
                device=args.device,
                deterministic=not args.stochastic,
            )
        )
    return {"kind": "ppo", "checkpoint": str(path), "seeds": args.seeds, "results": results}


def evaluate_decision(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from recurrl.agents.decision.evaluation import run_episodes, summarize
    from recurrl.agents.decision.model_io import env_spec_from_meta, load_decision_checkpoint

    model, meta = load_decision_checkpoint(path, args.device)
    spec = env_spec_from_meta(meta)
    config = meta["config"]
    targets = args.target_returns or config["eval"]["target_returns"]
    k = args.context_length or config["context_length"]
    modes = ["stateful", "window"] if args.mode == "both" else [args.mode]
    out: dict[str, Any] = {
        "kind": "decision",
        "checkpoint": str(path),
        "step": meta["step"],
        "dataset": meta.get("dataset"),
        "dataset_stats": meta.get("dataset_stats"),
        "env_id": spec.env_id,
        "modes": {},
    }
    for mode in modes:
        per_target = []
        for target in targets:
            runs = [
                run_episodes(model, spec, target, args.episodes, args.num_envs, s, mode, k, args.device)
                for s in args.seeds
            ]
            pooled = {
                "target_return": float(target),
                "returns": [r for run in runs for r in run["returns"]],
                "lengths": [n for run in runs for n in run["lengths"]],
                "env_steps": sum(run["env_steps"] for run in runs),
                "wall_time_s": sum(run["wall_time_s"] for run in runs),
            }
            summary = summarize(pooled, spec)
            summary["seeds"] = list(args.seeds)
            summary["wall_time_s_per_seed"] = [run["wall_time_s"] for run in runs]
            per_target.append(summary)
        out["modes"][mode] = per_target
    out["num_parameters"] = int(sum(np.prod(p.shape) for p in model.parameters()))
    return out


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across checkpoints (seeds): per (mode, target), mean +- std of per-checkpoint means and pooled episodes."""
    import numpy as np

    rows = []
    keys = sorted({(m, t["target_return"]) for r in results for m, ts in r["modes"].items() for t in ts})
    for mode, target in keys:
        summaries = [t for r in results for t in r["modes"].get(mode, []) if t["target_return"] == target]
        means = np.array([s["return_mean"] for s in summaries])
        pooled = np.array([x for s in summaries for x in s["returns"]])
        row = {
            "mode": mode,
            "target_return": target,
            "checkpoints": len(summaries),
            "return_mean": float(pooled.mean()),
            "return_std_episodes": float(pooled.std()),
            "return_std_checkpoints": float(means.std()),
        }
        if summaries[0]["normalized_score_mean"] is not None:
            norm = np.array([s["normalized_score_mean"] for s in summaries])
            pooled_norm = np.array([x for s in summaries for x in s["normalized_scores"]])
            row.update(
                normalized_score_mean=float(pooled_norm.mean()),
                normalized_score_std_episodes=float(pooled_norm.std()),
                normalized_score_std_checkpoints=float(norm.std()),
            )
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    from recurrl.agents.checkpoint import write_json_atomic
    from recurrl.agents.decision.evaluation import format_summary

    if args.episodes <= 0 or args.num_envs <= 0:
        raise ValueError("--episodes and --num-envs must be positive")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    plot_path = Path(args.plot) if args.plot else None
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG; give a path ending in .png, not {args.plot!r}")
    paths = expand(args.checkpoints)
    kinds = [read_kind(path) for path in paths]
    if plot_path is not None and "decision" not in kinds:
        raise ValueError("--plot needs Decision-agent checkpoints (it plots return against target return)")
    decision, other = [], []
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "decision":
            result = evaluate_decision(path, args)
            decision.append(result)
            for mode, summaries in result["modes"].items():
                for s in summaries:
                    print(f"{path} [{mode}, step {result['step']}] {format_summary(s)}")
        elif kind == "ppo":
            result = evaluate_ppo(path, args)
            other.append(result)
            for run in result["results"]:
                print(
                    f"{path} [ppo, {run['env_id']}, {run['backbone']}, seed {run['seed']}] "
                    f"return {run['mean_return']:.1f} +- {run['std_return']:.1f} ({run['episodes']} episodes, "
                    f"{'deterministic' if run['deterministic'] else 'stochastic'})"
                )
        else:
            raise ValueError(f"{path}: unknown checkpoint kind {kind!r} (expected 'decision' or 'ppo')")
    summary: dict[str, Any] = {"checkpoints": decision + other}
    if len(decision) > 1:
        summary["aggregate"] = aggregate(decision)
        for row in summary["aggregate"]:
            text = f"all {row['checkpoints']} checkpoints [{row['mode']}] target {row['target_return']:g}: "
            text += f"return {row['return_mean']:.1f} (std over episodes {row['return_std_episodes']:.1f}, "
            text += f"over checkpoints {row['return_std_checkpoints']:.1f})"
            if "normalized_score_mean" in row:
                text += f", normalized {row['normalized_score_mean']:.1f} +- {row['normalized_score_std_checkpoints']:.1f}"
            print(text)
    if args.output:
        write_json_atomic(args.output, summary)
        print(f"results: {args.output}")
    if plot_path is not None:
        from recurrl.agents.decision.plots import plot_target_sweep

        plot_target_sweep(decision, summary.get("aggregate", []), plot_path)
        print(f"plot: {plot_path}")
    return 0
