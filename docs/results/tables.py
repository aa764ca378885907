"""The compact tables of docs/results/README.md, from a compare folder's summary.json and cells:

    python docs/results/tables.py docs/results/offline-cpu
    python docs/results/tables.py docs/results/online-cpu

Offline: the headline metric's mean over seeds per dataset and backbone (the best in bold, the dataset's own
score first), the mean over the datasets for every seed that is complete, and the paired differences.
Online: every cell's final return and the env steps to the threshold. summary.md has the full tables
(std, standard errors, window mode, best checkpoints, training loss, cost)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from recurrl.agents.compare.report import paired_reading

NAMES = {"mingru": "minGRU", "minlstm": "minLSTM", "lstm": "LSTM", "gru": "GRU", "mamba": "Mamba",
         "transformer": "Transformer", "mlp": "MLP (no memory)"}  # fmt: skip


def cells(folder: Path) -> list[dict]:
    paths = sorted((folder / "cells").glob("*.json"))
    rows = [json.loads(p.read_text()) for p in paths if not p.name.endswith(".attempts.json")]
    return [r for r in rows if "task" in r]


def offline(folder: Path, summary: dict) -> None:
    tasks, backbones, metric = summary["tasks"], summary["backbones"], summary["metrics"][0]
    print("| dataset | data | " + " | ".join(NAMES.get(b, b) for b in backbones) + " |")
    print("|---|---:|" + "---:|" * len(backbones))
    for task in tasks:
        means = [summary["cells"].get(f"{task}|{b}", {}).get(metric, {}).get("mean") for b in backbones]
        best = max((m for m in means if m is not None), default=None)
        shown = ["–" if m is None else (f"**{m:.1f}**" if m == best else f"{m:.1f}") for m in means]
        print(f"| {task.split('/', 1)[-1].replace('/', '-')} | {summary['dataset_scores'][task]:.1f} | " + " | ".join(shown) + " |")
    rows = cells(folder)
    value = {(r["task"], r["backbone"], r["seed"]): r[metric] for r in rows}
    for seed in sorted({r["seed"] for r in rows}):
        full = [b for b in backbones if all((t, b, seed) in value for t in tasks)]
        if full:
            means = {b: statistics.mean(value[(t, b, seed)] for t in tasks) for b in full}
            print(f"| mean over the {len(tasks)}, seed {seed} | | " + " | ".join(
                f"{means[b]:.1f}" if b in means else "–" for b in backbones) + " |")  # fmt: skip
    over = summary["mean_over_tasks"]
    print(f"| mean over the {len(tasks)}, all seeds | | " + " | ".join("–" if over[b] is None else f"{over[b]:.1f}" for b in backbones) + " |")
    print()
    first, paired = backbones[0], [(b, summary["paired"][b]) for b in backbones if b in summary["paired"]]
    print("| | " + " | ".join(NAMES.get(b, b) for b, _ in paired) + " |")
    print("|---|" + "---|" * len(paired))
    print(f"| {NAMES.get(first, first)} - backbone | " + " | ".join(f"{p['mean']:+.1f} ± {p['se']:.1f}" for _, p in paired) + " |")
    print("| pairs | " + " | ".join(str(p["pairs"]) for _, p in paired) + " |")
    readings = []
    for _, p in paired:  # the report's reading, with how many standard errors apart where not within noise
        reading = paired_reading(NAMES.get(first, first), p)
        readings.append(reading if reading == "within noise" else f"{reading} ({abs(p['mean']) / p['se']:.1f} se)")
    print("| reading | " + " | ".join(readings) + " |")
    if summary.get("seed_sd"):
        print(f"\npooled seed-to-seed sd of a cell: {summary['seed_sd']['sd']:.1f} over {summary['seed_sd']['cells']} cells")


def online(folder: Path, summary: dict) -> None:
    rows = {(r["task"], r["backbone"], r["seed"]): r for r in cells(folder)}
    tasks, backbones = summary["tasks"], summary["backbones"]
    seeds = sorted({s for _, _, s in rows})
    head = [f"{t.replace('-v1', '')} s{s}" for t in tasks for s in seeds]
    print("| backbone | parameters | " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * len(head))
    for b in backbones:
        mine = [r for (t, bb, s), r in rows.items() if bb == b]
        params = f"{mine[0]['parameters'] / 1000:.0f}k" if mine else "–"
        out = []
        for t in tasks:
            for s in seeds:
                r = rows.get((t, b, s))
                out.append("–" if r is None else f"{r['final_return']:.0f}")
        print(f"| {NAMES.get(b, b)} | {params} | " + " | ".join(out) + " |")
    print()
    for t in tasks:
        parts = []
        for b in backbones:
            steps = [rows[(t, b, s)].get("steps_to_threshold") for s in seeds if (t, b, s) in rows]
            parts.append(f"{NAMES.get(b, b)} " + "/".join("never" if x is None else f"{x // 1000}k" for x in steps))
        print(f"{t}, env steps to the threshold per seed: " + "; ".join(parts))


def main() -> None:
    folder = Path(sys.argv[1])
    summary = json.loads((folder / "summary.json").read_text())
    (online if summary["kind"] == "online" else offline)(folder, summary)


if __name__ == "__main__":
    main()
