"""Plots of Decision-agent evaluations: achieved return against the target return (DT's Figure 4).

A return-conditioned agent is only useful if the target steers it. This plot shows, for each
checkpoint and evaluation mode, the mean return reached at each target (error bars: std over
episodes), the diagonal where the return equals the target, and the dataset's mean and best
episode returns. Several checkpoints (seeds) also get their average as a thick line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_target_sweep(results: list[dict[str, Any]], aggregate: list[dict[str, Any]], path: Path) -> None:
    """results: `recurrl evaluate`'s per-checkpoint Decision results; aggregate: its rows over checkpoints
    (empty for one checkpoint). Writes a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no Decision-agent results to plot")
    fig, ax = plt.subplots(figsize=(7, 5.5))
    modes = sorted({mode for r in results for mode in r["modes"]})
    colors = {mode: ("tab:blue", "tab:orange")[i % 2] for i, mode in enumerate(modes)}
    thin = len(results) > 1
    labelled: set[str] = set()
    for r in results:
        for mode, summaries in r["modes"].items():
            targets = [s["target_return"] for s in summaries]
            ax.errorbar(
                targets,
                [s["return_mean"] for s in summaries],
                yerr=[s["return_std"] for s in summaries],
                fmt="-o",
                color=colors[mode],
                alpha=0.35 if thin else 1.0,
                linewidth=1 if thin else 2,
                markersize=3 if thin else 5,
                capsize=2,
                label=_line_label(mode, r, thin, labelled),
            )
            labelled.add(mode)
    for mode in modes:
        rows = sorted((row for row in aggregate if row["mode"] == mode), key=lambda row: row["target_return"])
        if rows:
            ax.errorbar(
                [row["target_return"] for row in rows],
                [row["return_mean"] for row in rows],
                yerr=[row["return_std_checkpoints"] for row in rows],
                fmt="-o",
                color=colors[mode],
                linewidth=2.5,
                capsize=3,
                label=f"{mode}, mean of {rows[0]['checkpoints']} checkpoints (bars: std over checkpoints)",
            )
    everything = [s["target_return"] for r in results for ss in r["modes"].values() for s in ss]
    low, high = min(everything), max(everything)
    ax.plot([low, high], [low, high], "--", color="gray", linewidth=1, label="return = target")
    stats = results[0].get("dataset_stats") or {}
    for key, style, name in (("return_max", ":", "best"), ("return_mean", "-.", "mean")):
        if key in stats:
            ax.axhline(
                stats[key], linestyle=style, color="black", linewidth=1, label=f"dataset {name} episode"
            )
    ax.set_xlabel("target return (return-to-go at the first step)")
    ax.set_ylabel("achieved return (mean)")
    ax.set_title(f"{results[0].get('dataset', '')} ({results[0].get('env_id', '')})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _line_label(mode: str, result: dict[str, Any], thin: bool, labelled: set[str]) -> str | None:
    """One legend entry per mode for the per-checkpoint lines; a lone checkpoint is named."""
    if thin:
        return None if mode in labelled else f"{mode}, each checkpoint (bars: std over episodes)"
    parts = Path(result["checkpoint"]).parts
    name = "/".join(p for p in parts[-3:] if p != "checkpoints")  # runs/x/checkpoints/last -> x/last
    return f"{mode}, {name} at step {result['step']} (bars: std over episodes)"
