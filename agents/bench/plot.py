"""bench.png of `recurrl bench backbones`: training time against T, and per-tick step latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_backbones(result: dict[str, Any], path: Path) -> None:
    """Left: training time vs T per method (log-log). Right: per-tick step latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "median_s" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 8))
    train_methods: list[tuple[str, str]] = []
    for row in rows:
        if row["kind"] == "train" and (row["level"], row["method"]) not in train_methods:
            train_methods.append((row["level"], row["method"]))
    colors = plt.get_cmap("tab20").colors
    styles = {"scan": ":^", "layer": "-o", "backbone": "--s"}
    for index, (level, method) in enumerate(train_methods):
        points = sorted(
            (r["T"], r["median_s"] * 1e3)
            for r in rows
            if r["kind"] == "train" and (r["level"], r["method"]) == (level, method)
        )
        left.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            styles[level],
            color=colors[index % len(colors)],
            label=f"{level}: {method}",
            markersize=4,
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("sequence length T")
    left.set_ylabel("training step (fwd+bwd), ms")
    b, h = result["config"]["batch_size"], result["config"]["hidden_dim"]
    left.set_title(f"Training step, B={b}, H={h} (dotted: scan alone, solid: one layer, dashed: backbone)")
    left.grid(True, which="both", alpha=0.3)
    if train_methods:
        left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))

    step_methods: list[tuple[str, str]] = []
    for row in rows:
        if row["kind"] in ("step", "dt") and (row["level"], row["method"]) not in step_methods:
            step_methods.append((row["level"], row["method"]))
    sizes = result["config"]["step_batch_sizes"]
    width = 0.8 / max(1, len(sizes))
    for i, size in enumerate(sizes):
        heights = []
        for level, method in step_methods:
            match = [
                r
                for r in rows
                if r["kind"] in ("step", "dt") and (r["level"], r["method"], r["B"]) == (level, method, size)
            ]
            heights.append(match[0]["median_s"] * 1e6 if match else float("nan"))
        right.bar([j + i * width for j in range(len(step_methods))], heights, width, label=f"B={size}")
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(step_methods))])
    right.set_xticklabels(
        [f"{lvl[0].upper()}: {m}" for lvl, m in step_methods], rotation=60, ha="right", fontsize=7
    )
    right.set_yscale("log")
    right.set_ylabel("per-tick latency, us")
    right.set_title("Per-tick step latency (L: one layer/cell, B: backbone)")
    right.grid(True, axis="y", which="both", alpha=0.3)
    if step_methods:
        right.legend(fontsize=8)
    fig.suptitle(
        f"recurrl bench backbones on {result['meta']['device_name']} (torch {result['meta']['torch']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
