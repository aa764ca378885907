"""Learning curves from runs' TensorBoard logs (`recurrl plot`): score against training steps.

One curve per run, read from the first tag it has of:
    Decision runs: eval/normalized_score, else eval/return      (periodic and final evaluations)
    PPO runs:      eval/mean_reward, else rollout/ep_rew_mean   (SB3's tag names)
Runs whose config.json files are equal once seed, run_name, runs_dir and run_dir are left out are the
same experiment with other seeds: they are drawn as one line, the mean over seeds, with a band of
+- one standard deviation (where the seeds logged at different steps, each run is interpolated onto
the steps they share). The legend names each line's backbone and data, and the other config keys in which it differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TAGS = {
    "decision": ("eval/normalized_score", "eval/return"),
    "ppo": ("eval/mean_reward", "rollout/ep_rew_mean"),
}
SEED_KEYS = ("seed", "run_name", "runs_dir", "run_dir")  # what differs between seeds of one experiment
LEAD_KEYS = ("backbone", "dataset", "env_id")  # in every legend entry: "backbone on dataset"
YLABELS = {
    "eval/normalized_score": "normalized score",
    "eval/return": "evaluation return",
    "eval/mean_reward": "evaluation return",
    "rollout/ep_rew_mean": "training episode return",
}


@dataclass
class Curve:
    run_dir: Path
    kind: str
    tag: str
    steps: np.ndarray  # [N] int, increasing
    values: np.ndarray  # [N]
    config: dict[str, Any]


@dataclass
class Group:
    """Runs that differ only in seed, and their mean (and std) over seeds at the steps they share."""

    label: str
    curves: list[Curve]
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def run_kind(run_dir: Path, config: dict[str, Any]) -> str:
    """'decision' or 'ppo': from the last checkpoint if there is one, else from the config's keys."""
    meta = run_dir / "checkpoints" / "last" / "meta.json"
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text()).get("kind")
        except (ValueError, AttributeError):  # corrupt, not UTF-8, not an object: tell by the config
            kind = None
        if kind in TAGS:
            return str(kind)
    if "env_id" in config and "total_steps" in config:
        return "ppo"
    if "dataset" in config and "model" in config:
        return "decision"
    raise ValueError(f"{run_dir}: cannot tell whether this is a Decision or a PPO run (config.json)")


def read_curve(run_dir: str | Path, tag: str | None = None) -> Curve:
    """The run's learning curve: its first available tag of TAGS[kind] (or `tag`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise ValueError(f"{str(run_dir)!r} is a file, not a run directory (one holding config.json)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{run_dir} is not a recurrl run directory (no config.json)")
    from recurrl.agents.run_dir import read_json

    config = read_json(config_file)  # a ValueError naming the file when it is not a JSON object
    kind = run_kind(run_dir, config)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    available = set(events.Tags().get("scalars", []))
    wanted = (tag,) if tag else TAGS[kind]
    found = next((t for t in wanted if t in available), None)
    if found is None:
        raise ValueError(
            f"{run_dir}: no {' or '.join(wanted)} in its TensorBoard logs (has: {', '.join(sorted(available)) or 'none'})"
        )
    by_step: dict[int, float] = {}
    for event in events.Scalars(found):
        by_step[int(event.step)] = float(event.value)  # a step logged twice keeps its last value
    steps = np.array(sorted(by_step), dtype=np.int64)
    return Curve(run_dir, kind, found, steps, np.array([by_step[s] for s in steps]), config)


def experiment_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in SEED_KEYS}, sort_keys=True)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _what(config: dict[str, Any]) -> str:
    """'backbone on data' for a Decision or PPO config (a dataset file by its stem)."""
    backbone = config.get("backbone") or config.get("model", {}).get("backbone", "?")
    data = str(config.get("dataset") or config.get("env_id") or "?")
    if Path(data).suffix in (".hdf5", ".h5"):
        data = Path(data).stem
    return f"{backbone} on {data}"


def _labels(configs: list[dict[str, Any]]) -> list[str]:
    """'backbone on data' plus the other config keys in which these experiments differ (key=value)."""
    flat = [_flat({k: v for k, v in c.items() if k not in SEED_KEYS}) for c in configs]
    keys = sorted({k for f in flat for k in f})
    differ = [
        k
        for k in keys
        if k.split(".")[-1] not in LEAD_KEYS and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
    ]
    return [
        ", ".join([_what(c), *(f"{k.removeprefix('model.')}={f.get(k)}" for k in differ[:3])])
        for c, f in zip(configs, flat, strict=True)
    ]


def group_curves(curves: list[Curve]) -> list[Group]:
    """Runs of the same experiment (config.json equal but for SEED_KEYS) -> one Group each, in order."""
    keyed: dict[str, list[Curve]] = {}
    for curve in curves:
        keyed.setdefault(f"{curve.tag}|{experiment_key(curve.config)}", []).append(curve)
    members = list(keyed.values())
    labels = [""] * len(members)
    for kind in TAGS:  # Decision and PPO configs have other keys: label each kind among its own
        index = [i for i, m in enumerate(members) if m[0].kind == kind]
        for i, label in zip(index, _labels([members[i][0].config for i in index]), strict=True):
            labels[i] = label
    groups = []
    for label, runs in zip(labels, members, strict=True):
        first, last = max(c.steps[0] for c in runs), min(c.steps[-1] for c in runs)
        steps = np.unique(np.concatenate([c.steps for c in runs]))
        steps = steps[(steps >= first) & (steps <= last)]
        if steps.size == 0:  # the seeds' step ranges do not overlap: each run's own points
            steps = np.unique(np.concatenate([c.steps for c in runs]))
        values = np.stack([np.interp(steps, c.steps, c.values) for c in runs])  # [runs, steps]
        name = f"{label} ({len(runs)} seeds)" if len(runs) > 1 else label
        groups.append(Group(name, runs, steps, values.mean(axis=0), values.std(axis=0)))
    return groups


def plot_learning_curves(
    run_dirs: list[str | Path], out: str | Path, tag: str | None = None, title: str | None = None
) -> list[Group]:
    """Draw the runs' learning curves into `out` (an image file) -> the groups drawn."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"the plot is written as .png, .pdf or .svg; got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"{str(out)!r} is a directory; give a file name such as curves.png")
    if not run_dirs:
        raise ValueError("give at least one run directory")
    groups = group_curves([read_curve(run, tag) for run in run_dirs])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = list(dict.fromkeys(g.curves[0].tag for g in groups))  # one panel per metric
    fig, axes = plt.subplots(1, len(tags), figsize=(6.4 * len(tags), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], tags, strict=True):
        panel = [g for g in groups if g.curves[0].tag == metric]
        for group in panel:
            (line,) = ax.plot(
                group.steps,
                group.mean,
                marker="o" if group.steps.size < 20 else None,
                markersize=3,
                label=group.label,
            )
            if len(group.curves) > 1:
                ax.fill_between(
                    group.steps,
                    group.mean - group.std,
                    group.mean + group.std,
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xlabel("training step" if panel[0].curves[0].kind == "decision" else "env step")
        ax.set_ylabel(f"{YLABELS.get(metric, metric)} ({metric})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if any(len(g.curves) > 1 for g in groups):
        fig.text(0.99, 0.01, "band: mean +- std over seeds", ha="right", fontsize=7, alpha=0.7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")  # the suffix picks the format
        try:
            fig.savefig(tmp, dpi=120)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {str(out)!r}: {error}") from error
    finally:
        plt.close(fig)
    return groups
