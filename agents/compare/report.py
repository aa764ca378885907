"""The comparison's reports, rebuilt from the finished cells' rows (DIR/cells/*.json):
results.csv (one row per cell), summary.json, summary.md and summary.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from recurrl.agents.checkpoint import write_json_atomic
from recurrl.agents.run_dir import read_json

OFFLINE_COLUMNS = [
    "task", "backbone", "seed", "parameters", "hidden_dim", "steps",
    "last_stateful_score", "last_window_score", "best_stateful_score", "best_window_score",
    "last_stateful_return", "last_window_return", "best_stateful_return", "best_window_return", "best_step",
    "dataset_score", "final_train_loss", "train_steps_per_s", "tick_latency_us", "peak_rss_mib", "wall_time_s",
    "measure_time_s", "run_dir",
]  # fmt: skip
ONLINE_COLUMNS = [
    "task", "backbone", "seed", "parameters", "steps", "final_return", "final_return_std",
    "reward_threshold", "steps_to_threshold", "final_train_loss", "env_steps_per_s", "peak_rss_mib", "wall_time_s",
    "measure_time_s", "run_dir",
]  # fmt: skip
# (column, heading) of the quality tables in summary.md, the first is the headline
OFFLINE_TABLES = [
    ("last_stateful", "last checkpoint, stateful (one step per tick, state carried)"),
    ("last_window", "last checkpoint, window (re-encode the last K steps every tick)"),
    ("best_stateful", "best checkpoint (by the periodic evaluation), stateful"),
]


LOSS = "final_train_loss"  # measure.final_train_loss
LOSS_WHAT = "train/loss over the last quarter of the steps"


def read_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((out / "cells").glob("*.json")):
        if path.name.endswith(".attempts.json"):
            continue
        row = json.loads(path.read_text())
        if "task" in row:  # written by the runner after measuring: complete
            rows.append(row)
    return rows


def _order(values: list[Any], preferred: list[Any] | None) -> list[Any]:
    seen = list(dict.fromkeys(values))
    if preferred:
        return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]
    return seen


def _stats(values: list[float]) -> dict[str, Any]:
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return {"n": 0, "mean": None, "std": None, "se": None}
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"n": int(len(x)), "mean": float(x.mean()), "std": std, "se": std / math.sqrt(len(x))}


def offline_metric(rows: list[dict[str, Any]], prefix: str) -> str:
    """Normalized score where every row has reference scores, else raw returns."""
    return f"{prefix}_score" if all(r.get(f"{prefix}_score") is not None for r in rows) else f"{prefix}_return"


def summarize(rows: list[dict[str, Any]], tasks: list[str] | None = None, backbones: list[str] | None = None) -> dict[str, Any]:
    online = bool(rows) and rows[0].get("kind") == "online"
    tasks = _order([r["task"] for r in rows], tasks)
    backbones = _order([r["backbone"] for r in rows], backbones)
    metrics = ["final_return"] if online else [offline_metric(rows, p) for p, _ in OFFLINE_TABLES]
    cells: dict[str, Any] = {}
    for task in tasks:
        for backbone in backbones:
            mine = [r for r in rows if r["task"] == task and r["backbone"] == backbone]
            if not mine:
                continue
            entry = {m: _stats([r.get(m) for r in mine]) for m in [*metrics, LOSS]}
            entry["seeds"] = sorted(r["seed"] for r in mine)
            if online:
                entry["steps_to_threshold"] = [r.get("steps_to_threshold") for r in mine]
            cells[f"{task}|{backbone}"] = entry
    # The mean over tasks counts a backbone only where it has every task (a partial grid says so).
    over_tasks = {}
    for backbone in backbones:
        means = [cells.get(f"{t}|{backbone}", {}).get(metrics[0], {}).get("mean") for t in tasks]
        over_tasks[backbone] = None if any(m is None for m in means) else float(np.mean(means))
    cost = {}
    for backbone in backbones:
        mine = [r for r in rows if r["backbone"] == backbone]
        keys = ["parameters", "env_steps_per_s"] if online else ["parameters", "train_steps_per_s", "tick_latency_us"]
        cost[backbone] = {k: _median([r.get(k) for r in mine]) for k in [*keys, "peak_rss_mib", "wall_time_s"]}
    dataset_scores = {t: _median([r.get("dataset_score") for r in rows if r["task"] == t]) for t in tasks}
    paired = {} if online or not backbones else paired_differences(rows, backbones, metrics[0])
    return {
        "kind": "online" if online else "offline",
        "tasks": tasks,
        "backbones": backbones,
        "metrics": metrics,
        "cells": cells,
        "mean_over_tasks": over_tasks,
        "paired": paired,
        "cost": cost,
        "dataset_scores": dataset_scores,
        "seed_sd": pooled_seed_sd(cells, metrics[0]),
        "num_cells": len(rows),
    }


def pooled_seed_sd(cells: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The seed-to-seed standard deviation of one cell, pooled (root mean square) over the (task, backbone)
    cells with two or more seeds: how far one seed's number may move, the scale for reading the tables."""
    sds = [c[metric]["std"] for c in cells.values() if c.get(metric, {}).get("n", 0) >= 2]
    return {"cells": len(sds), "sd": float(np.sqrt(np.mean(np.square(sds))))} if sds else None


def paired_differences(rows: list[dict[str, Any]], backbones: list[str], metric: str) -> dict[str, Any]:
    """The first backbone against each other one, paired by (dataset, seed): the mean of first - other over
    the pairs both have, and its standard error (sd of the differences / sqrt(pairs)). Pairing removes what
    a dataset or a seed does to every backbone alike, so this is the noise bound for "within noise"."""
    value = {(r["task"], r["seed"], r["backbone"]): r.get(metric) for r in rows}
    first, out = backbones[0], {}
    for other in backbones[1:]:
        diffs = [
            value[(t, s, first)] - v
            for (t, s, b), v in value.items()
            if b == other and v is not None and value.get((t, s, first)) is not None
        ]
        if len(diffs) >= 2:
            d = np.array(diffs, dtype=np.float64)
            out[other] = {"pairs": len(d), "mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
    return out


def _paired_table(summary: dict[str, Any]) -> list[str]:
    first = summary["backbones"][0]
    lines = [f"## {first} against each backbone, paired by dataset and seed", "",
             f"Mean of ({first} - backbone) over the (dataset, seed) pairs both have, with its standard error; "
             "within noise where the difference is under two standard errors.", "",
             f"| backbone | pairs | {first} - backbone | standard error | reading |", "|---|---|---|---|---|"]  # fmt: skip
    for other, p in summary["paired"].items():
        lines.append(f"| {other} | {p['pairs']} | {p['mean']:+.1f} | {p['se']:.1f} | {paired_reading(first, p)} |")
    return [*lines, ""]


def paired_reading(first: str, paired: dict[str, Any]) -> str:
    """'within noise' under two standard errors, else '<first> higher' or '<first> lower'."""
    if abs(paired["mean"]) < 2 * paired["se"]:
        return "within noise"
    return f"{first} {'higher' if paired['mean'] > 0 else 'lower'}"


def _median(values: list[Any]) -> float | None:
    x = [v for v in values if v is not None]
    return float(np.median(x)) if x else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _quality_table(summary: dict[str, Any], metric: str, online: bool, loss: bool = False) -> list[str]:
    """mean ± std (se, n) per task and backbone, the best in bold: the highest, or the lowest for a loss
    (in significant digits, without the dataset's own score)."""
    backbones, lines, data = summary["backbones"], [], not online and not loss
    head = ["task" if online else "dataset"] + (["data"] if data else []) + backbones
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sign = -1.0 if loss else 1.0
    for task in summary["tasks"]:
        entries = [summary["cells"].get(f"{task}|{b}", {}).get(metric) for b in backbones]
        means = [sign * e["mean"] if e and e["mean"] is not None else -math.inf for e in entries]
        best = int(np.argmax(means)) if any(m > -math.inf for m in means) else -1
        row = [task] + ([_fmt(summary["dataset_scores"].get(task))] if data else [])
        for i, e in enumerate(entries):
            if not e or e["mean"] is None:
                row.append("–")
                continue
            if loss:  # losses differ by orders of magnitude between datasets: significant digits
                text = f"{e['mean']:.4g} ± {e['std']:.2g} (n={e['n']})"
            else:
                text = f"{e['mean']:.1f} ± {e['std']:.1f} ({e['se']:.1f}, n={e['n']})"
            row.append(f"**{text}**" if i == best else text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_markdown(summary: dict[str, Any], path: Path, title: str) -> None:
    online = summary["kind"] == "online"
    lines = [f"# {title}", "", f"{summary['num_cells']} cells. Each entry: mean ± std over seeds (standard error, seeds); "
             "the best backbone of each row in bold.", ""]
    tables = [("final_return", "final deterministic evaluation (return)")] if online else [
        (m, f"{'normalized score' if m.endswith('score') else 'return'}, {heading}")
        for m, (_, heading) in zip(summary["metrics"], OFFLINE_TABLES, strict=True)
    ]
    for i, (metric, heading) in enumerate(tables):
        lines += [f"## {heading[0].upper() + heading[1:]}", ""]
        lines += _quality_table(summary, metric, online)
        if i == 0:
            means = summary["mean_over_tasks"]
            row = ["mean over tasks"] + ([] if online else [""]) + [_fmt(means[b]) for b in summary["backbones"]]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if summary.get("paired"):
        lines += _paired_table(summary)
    if summary.get("seed_sd"):
        sd = summary["seed_sd"]
        lines += [f"Seed-to-seed standard deviation of one cell, pooled over the {sd['cells']} cells with two or more "
                  f"seeds: {sd['sd']:.1f}.", ""]  # fmt: skip
    # Offline only: PPO's train/loss mixes the policy, value and entropy terms and says little about fit.
    if not online and any(c.get(LOSS, {}).get("n") for c in summary["cells"].values()):
        lines += [f"## Training loss (mean of {LOSS_WHAT}; the lowest in bold)", "",
                  "How closely each model fits its training data at the end, read next to the scores: a backbone "
                  "whose loss is as low as the others' but whose score is lower fits the data and acts worse.", ""]  # fmt: skip
        lines += [*_quality_table(summary, LOSS, online, loss=True), ""]
    if not online and not summary["metrics"][0].endswith("score"):
        lines += ["Some datasets have no reference scores: the tables show raw returns.", ""]
    if online:
        lines += ["## Env steps to the reward threshold (first periodic evaluation at or above it)", ""]
        lines += ["| task | " + " | ".join(summary["backbones"]) + " |", "|" + "---|" * (len(summary["backbones"]) + 1)]
        for task in summary["tasks"]:
            row = [task]
            for b in summary["backbones"]:
                steps = summary["cells"].get(f"{task}|{b}", {}).get("steps_to_threshold")
                row.append("–" if steps is None else ", ".join("not reached" if s is None else f"{s:,}" for s in steps))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    cost_keys = list(next(iter(summary["cost"].values()), {}))
    names = {"parameters": "parameters", "train_steps_per_s": "train steps/s", "tick_latency_us": "step at B=1 (µs)",
             "env_steps_per_s": "env steps/s", "peak_rss_mib": "peak memory (MiB)", "wall_time_s": "wall time per cell (s)"}
    lines += ["## Cost (median over a backbone's cells)", "", "| backbone | " + " | ".join(names[k] for k in cost_keys) + " |",
              "|" + "---|" * (len(cost_keys) + 1)]
    for b, c in summary["cost"].items():
        lines.append(f"| {b} | " + " | ".join(_fmt(c[k], 0 if k in ("parameters", "peak_rss_mib", "wall_time_s") else 1) for k in cost_keys) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = ONLINE_COLUMNS if rows and rows[0].get("kind") == "online" else OFFLINE_COLUMNS
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, backbones, metric = summary["tasks"], summary["backbones"], summary["metrics"][0]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(tasks) + 6), 4.5), width_ratios=[2.2, 1])
    width = 0.8 / max(len(backbones), 1)
    for i, b in enumerate(backbones):
        entries = [summary["cells"].get(f"{t}|{b}", {}).get(metric) or {} for t in tasks]
        means = [e.get("mean") or 0.0 for e in entries]
        stds = [e.get("std") or 0.0 for e in entries]
        bars.bar(np.arange(len(tasks)) + (i - (len(backbones) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=b)
    bars.set_xticks(np.arange(len(tasks)), [t.split("/")[-1] if "/" in t else t for t in tasks], rotation=30, ha="right")
    bars.set_ylabel(metric.replace("_", " "))
    bars.legend(fontsize=8, ncol=2)
    bars.set_title("mean ± std over seeds")
    cost_key = "wall_time_s"
    for b in backbones:
        x, y = summary["cost"][b].get(cost_key), summary["mean_over_tasks"].get(b)
        if x is not None and y is not None:
            scatter.scatter(x, y, s=40)
            scatter.annotate(b, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    scatter.set_xlabel("median wall time per cell (s)")
    scatter.set_ylabel(f"mean over tasks: {metric.replace('_', ' ')}")
    scatter.set_title("quality vs training cost")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fill_train_loss(out: Path, rows: list[dict[str, Any]]) -> int:
    """Cells measured before the loss column existed: read it from their run's TensorBoard log where the
    run is still there, and write it into the cell file. Returns how many were filled."""
    from .measure import final_train_loss

    filled = 0
    for row in rows:
        if LOSS in row or not row.get("run_dir") or not Path(row["run_dir"]).is_dir():
            continue
        run = Path(row["run_dir"])
        row[LOSS] = final_train_loss(run)
        path = out / "cells" / f"{run.name}.json"
        if path.is_file():
            write_json_atomic(path, {**json.loads(path.read_text()), LOSS: row[LOSS]})
            filled += 1
    return filled


def write_reports(out: Path, tasks: list[str] | None = None, backbones: list[str] | None = None) -> dict[str, Any]:
    rows = read_rows(out)
    fill_train_loss(out, rows)
    order = read_json(out / "grid.json").get("order", {}) if (out / "grid.json").is_file() else {}
    tasks, backbones = tasks or order.get("tasks"), backbones or order.get("backbones")
    if not rows:
        raise ValueError(f"{out} has no finished cells yet (cells/*.json); nothing to report")
    summary = summarize(rows, tasks, backbones)
    title = f"recurrl compare ({summary['kind']}): {out.name}"
    write_csv(rows, out / "results.csv")
    write_json_atomic(out / "summary.json", summary)
    write_markdown(summary, out / "summary.md", title)
    write_plot(summary, out / "summary.png", title)
    return summary
