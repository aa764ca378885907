"""Measure one finished training run for a comparison row (run as a subprocess of `recurrl compare`):

    python -m recurrl.agents.compare.measure RUN_DIR --out ROW.json [--online] [--episodes N]

Offline (Decision) rows: the stateful scores the run wrote (last and best checkpoint), the same
checkpoints in window mode on the same evaluation episodes (same env seeds), the training steps/s
(TensorBoard's time/steps_per_sec, measured between evaluations, so evaluation is excluded), the
model's per-tick `step` latency at batch 1, the dataset's own average score, and the final training loss
(train/loss over the last quarter of the steps; online rows too).
Online (PPO) rows: a final deterministic evaluation of the last checkpoint, the first env step at
which the periodic evaluation reached the env's reward threshold, and env steps/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurrl.agents.checkpoint import write_json_atomic

TICKS, ROUNDS = 200, 5
LOSS_TAG = "train/loss"  # both trainers log it (the run loop averages it over each logging window)


def _scalars(run_dir: Path, tag: str) -> list[Any]:
    """The TensorBoard scalar events of `tag` in run_dir (all of them), [] when it has none."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A resumed run's log has steps out of order; the reader's warning about it is not news here.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return list(events.Scalars(tag)) if tag in events.Tags().get("scalars", []) else []


def median_scalar(run_dir: Path, tag: str) -> float | None:
    values = [e.value for e in _scalars(run_dir, tag)]
    return float(statistics.median(values)) if values else None


def final_train_loss(run_dir: Path, fraction: float = 0.25) -> float | None:
    """Mean of train/loss over the last `fraction` of the run's steps: how closely the model fits its data
    at the end. Read next to the score, it tells a backbone that cannot fit the data from one that fits it
    and still acts badly."""
    events = _scalars(run_dir, LOSS_TAG)
    if not events:
        return None
    last = events[-1].step
    values = [e.value for e in events if e.step > last * (1 - fraction)] or [events[-1].value]
    return float(np.mean(values))


@torch.no_grad()
def tick_latency_us(model: Any, context_length: int) -> float:
    """Median microseconds of one `model.step` at batch 1, after a window of context (untimed);
    a first untimed round warms up (compiles the step, fills the KV cache)."""
    from recurrl.agents.bench.decision import TickInputs, step_seconds_per_tick
    from recurrl.agents.bench.timing import interleaved_rounds

    inputs = TickInputs.make(model, 1, context_length, TICKS, target_return=1000.0)
    step = {"step": lambda: step_seconds_per_tick(model, inputs, context_length, TICKS)}
    return 1e6 * statistics.median(interleaved_rounds(step, ROUNDS)["step"])


def _first_target(result: dict[str, Any]) -> dict[str, Any]:
    return result["targets"][0]


def measure_decision(run_dir: Path, episodes: int | None) -> dict[str, Any]:
    from recurrl.agents.decision.evaluation import run_episodes, summarize
    from recurrl.agents.decision.model_io import env_spec_from_meta, load_decision_checkpoint

    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    ev, k = config["eval"], config["context_length"]
    row: dict[str, Any] = {
        "kind": "offline",
        "run_dir": str(run_dir),
        "dataset": results["dataset"],
        "parameters": results["num_parameters"],
        "steps": results["steps"],
        "hidden_dim": config["model"]["hidden_dim"],
        "best_step": results["checkpoints"]["best"]["step"],
    }
    for name in ("last", "best"):
        target = _first_target(results["checkpoints"][name])
        row["target_return"] = target["target_return"]
        row[f"{name}_stateful_score"] = target["normalized_score_mean"]
        row[f"{name}_stateful_return"] = target["return_mean"]
        model, meta = load_decision_checkpoint(run_dir / "checkpoints" / name)
        spec = env_spec_from_meta(meta)
        n = episodes or ev["episodes"]
        window = summarize(
            run_episodes(model, spec, target["target_return"], n, ev["num_envs"], ev["seed"], "window", k), spec
        )
        row[f"{name}_window_score"] = window["normalized_score_mean"]
        row[f"{name}_window_return"] = window["return_mean"]
        if name == "last":
            row["env_id"] = spec.env_id
            row["has_reference_scores"] = spec.normalized(np.zeros(1)) is not None
            stats = meta.get("dataset_stats") or {}
            dataset_score = spec.normalized(np.array([stats.get("return_mean", np.nan)]))
            row["dataset_return"] = stats.get("return_mean")
            row["dataset_score"] = None if dataset_score is None else float(dataset_score[0])
            row["tick_latency_us"] = tick_latency_us(model, k)
    row["train_steps_per_s"] = results.get("train_steps_per_s") or median_scalar(run_dir, "time/steps_per_sec")
    row["final_train_loss"] = final_train_loss(run_dir)
    return row


def measure_ppo(run_dir: Path, episodes: int | None) -> dict[str, Any]:
    import gymnasium as gym

    import recurrl.envs  # noqa: F401  (registers the POMDP ids)
    from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint
    from recurrl.envs.packages import split_env_id

    results = json.loads((run_dir / "results.json").read_text())
    final = evaluate_ppo_checkpoint(run_dir / "checkpoints" / "last", episodes=episodes or 10)
    threshold = gym.spec(split_env_id(results["env_id"])[1]).reward_threshold  # 'module:' imported above
    reached = [e["step"] for e in results.get("evaluations", []) if threshold is not None and e["mean_reward"] >= threshold]
    return {
        "kind": "online",
        "run_dir": str(run_dir),
        "env_id": results["env_id"],
        "parameters": results["parameters"],
        "steps": results["global_step"],
        "final_return": final["return_mean"],
        "final_return_std": final["return_std"],
        "reward_threshold": threshold,
        "steps_to_threshold": reached[0] if reached else None,
        "env_steps_per_s": results["fps"],
        "final_train_loss": final_train_loss(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recurrl.agents.compare.measure", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True, help="where the row goes (JSON)")
    parser.add_argument("--online", action="store_true", help="a PPO run")
    parser.add_argument("--episodes", type=int, help="evaluation episodes (default: the run's config)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    row = measure_ppo(run_dir, args.episodes) if args.online else measure_decision(run_dir, args.episodes)
    write_json_atomic(args.out, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
