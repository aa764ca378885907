"""The one writer of benchmark results: JSON files, markdown reports and console tables.

Every `recurrl bench ...` command hands its result (a dict) here: `write_json` saves it atomically
(the `--json`/`--out` files), `print_json` prints it, and the markdown/console tables are made here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recurrl.agents.checkpoint import write_json_atomic


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """`result` as indented JSON at `path` (its folder is made; a kill leaves the old file or the new)."""
    write_json_atomic(path, result)


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


def targets_table(checks: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of target checks: what, measured value, target, PASS/FAIL/not measured."""
    lines = ["| check | value | target | result |", "|---|---:|---|---|"]
    for check in checks:
        value = "-" if check["value"] is None else f"{check['value']:.2f}"
        lines.append(
            f"| {check['check']} ({check['detail']}) | {value} | {check['op']} {check['target']:g} | "
            f"{check['result']} |"
        )
    return lines


def _fmt_time(seconds: float, unit: str) -> str:
    value = seconds * {"ms": 1e3, "us": 1e6}[unit]
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _cell(row: dict | None, unit: str) -> str:
    if row is None:
        return ""
    if "skipped" in row:
        return "cuda only" if row["skipped"] == "cuda only" else "skipped"
    if "error" in row:
        return "error"
    text = _fmt_time(row["median_s"], unit)
    return text + ("*" if row["repeats"] < 3 else "")


def _table(rows: list[dict], kinds: tuple[str, ...], size_key: str, sizes: Sequence[int], value) -> list[str]:
    methods: list[tuple[str, str]] = []
    for row in rows:
        key = (row["level"], row["method"])
        if row["kind"] in kinds and key not in methods:
            methods.append(key)
    lines = [
        "| level | method | " + " | ".join(f"{size_key}={s}" for s in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for level, method in methods:
        cells = []
        for size in sizes:
            match = [
                r
                for r in rows
                if r["kind"] in kinds and (r["level"], r["method"], r.get(size_key)) == (level, method, size)
            ]
            cells.append(value(match[0] if match else None))
        lines.append(f"| {level} | {method} | " + " | ".join(cells) + " |")
    return lines


def backbones_markdown(result: dict[str, Any]) -> str:
    """The report of `recurrl bench backbones` (bench.md), from its bench.json content."""
    meta, config, rows = result["meta"], result["config"], result["rows"]
    b, h = config["batch_size"], config["hidden_dim"]
    lines = [
        "# recurrl bench backbones",
        "",
        f"Device: **{meta['device_name']}** ({meta['device']}), torch {meta['torch']}, {meta['threads']} threads, "
        f"{meta['dtype']}, {meta['date']}.",
        "Medians of repeated runs measured side by side in this run (IQR and raw samples in bench.json); "
        "`*` = fewer than 3 timed repeats (a slow configuration hit its time budget).",
        "",
        f"## Training step (forward + backward), ms, B={b}, H={h}",
        "",
        *_table(rows, ("train",), "T", config["seq_lens"], lambda r: _cell(r, "ms")),
    ]
    if config["memory"]:

        def mem(row: dict | None) -> str:
            if row is None or "peak_mem_bytes" not in row:
                return _cell(row, "ms") if row is not None and "median_s" not in row else ""
            return f"{row['peak_mem_bytes'] / 2**20:.1f}"

        lines += [
            "",
            f"## Peak memory of the training step, MiB ({meta['memory_method']})",
            "",
            *_table(rows, ("train",), "T", config["seq_lens"], mem),
        ]
    lines += [
        "",
        "## Per-tick step latency, us (no_grad, state carried; dt rows: classic Decision-Transformer inference)",
        "",
        *_table(rows, ("step", "dt"), "B", config["step_batch_sizes"], lambda r: _cell(r, "us")),
    ]
    bandwidth_rows = [r for r in rows if "bandwidth_gb_s" in r]
    if meta["device"].startswith("cuda") and bandwidth_rows:
        source = meta.get("peak_bandwidth_source", "")
        lines += [
            "",
            f"## Achieved bandwidth of minGRU training, 36 B/element / time, GB/s (% of peak; layer rows "
            f"include the input projection) "
            f"(peak {meta.get('peak_bandwidth_gb_s', 0):.0f} GB/s, {source})",
            "",
            *_table(
                bandwidth_rows,
                ("train",),
                "T",
                config["seq_lens"],
                lambda r: (
                    f"{r['bandwidth_gb_s']:.0f} ({100 * r.get('bandwidth_fraction', 0):.0f}%)" if r else ""
                ),
            ),
        ]
    lines += ["", "## Targets", "", *targets_table(result["targets"])]
    skipped = [r for r in rows if "skipped" in r and r["skipped"] != "cuda only"]
    if skipped:
        lines += ["", "## Skipped", ""]
        for row in skipped:
            lines.append(f"- {row['level']} {row['kind']} {row['method']} T={row.get('T')}: {row['skipped']}")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Errors", ""]
        seen: set[tuple[str, str, str]] = set()
        for row in errors:
            key = (row["level"], row["method"], row["error"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {row['level']} {row['kind']} {row['method']}: `{row['error']}`")
    return "\n".join(lines) + "\n"


def ppo_throughput_table(result: dict[str, Any]) -> str:
    """The console table of `recurrl bench ppo throughput`."""
    s = result["settings"]
    lines = [
        f"env {result['env_id']}: n_envs={s['num_envs']} n_steps={s['num_steps']} minibatch={s['minibatch_size']} "
        f"epochs={s['update_epochs']} hidden={s['hidden_dim']} backbone_options={s['backbone_options']} "
        f"steps={s['total_steps']} x{s['repeats']} "
        f"threads={s['num_threads']} device={s['device']}",
        f"{'contender':<46} {'steps/s (wall)':>15} {'steps/CPU-s':>12}  wall runs",
    ]
    for name, median in result["median_steps_per_s"].items():
        runs = ", ".join(f"{v:.0f}" for v in result["steps_per_s"][name])
        lines.append(f"{name:<46} {median:>15.0f} {result['median_steps_per_cpu_s'][name]:>12.0f}  [{runs}]")
    lines.append(
        f"ratio recurrl PPO / sb3-contrib LSTM (medians): {result['ratio_ours_over_sb3_lstm']:.2f}x wall, "
        f"{result['cpu_ratio_ours_over_sb3_lstm']:.2f}x per CPU-second"
    )
    return "\n".join(lines)


def ppo_adapter_table(result: dict[str, Any]) -> str:
    """The console lines of `recurrl bench ppo adapter`: mean return per policy, then per seed."""
    lines = []
    for name, runs in result["runs"].items():
        returns = ", ".join(f"seed {r['seed']}: {r['mean_return']:.1f} ({r['wall_s']:.0f} s)" for r in runs)
        lines.append(f"{name:<30} mean {result['mean_return'][name]:.1f}  [{returns}]")
    return "\n".join(lines)
