"""The summary of a scripts/gpu_check.sh run: what each step did (ran, failed, timed out, skipped and
why), every target it measured against the issue's bar, and the machine; as summary.json and
summary.md in the run's folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (file, K, bar): DT training steps/s of minGRU over the Transformer (the GPU targets)
DT_TARGETS = (("dt_k20.json", 20, 2.0), ("dt_k200.json", 200, 4.0))


def read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def steps(out: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (out / "steps.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def check(name: str, value: float | None, op: str, target: float, detail: str = "") -> dict[str, Any]:
    if value is None:
        result = "not measured"
    elif op == "info":
        result = "info"
    else:
        result = "PASS" if (value >= target if op == ">=" else value <= target) else "FAIL"
    return {"check": name, "value": value, "op": op, "target": target, "result": result, "detail": detail}


def dt_checks(out: Path) -> list[dict[str, Any]]:
    """minGRU over Transformer training steps/s, with and without bf16 autocast when both were run."""
    checks = []
    for file, k, bar in DT_TARGETS:
        data = read(out / file) or {}
        name = f"DT-minGRU / DT-Transformer train steps/s, K={k}"
        if "mingru_over_transformer_bf16_median_ratio" in data:
            for suffix in ("bf16", "fp32"):
                value = data.get(f"mingru_over_transformer_{suffix}_median_ratio")
                checks.append(check(f"{name}, {suffix}", value, ">=", bar, f"triple tokens ({file})"))
        else:
            value = data.get("mingru_over_transformer_median_ratio")
            checks.append(check(name, value, ">=", bar, f"triple tokens ({file})"))
    return checks


def other_checks(out: Path) -> list[dict[str, Any]]:
    checks = list((read(out / "bench" / "bench.json") or {}).get("targets", []))
    checks += dt_checks(out)
    mamba = read(out / "mamba.json")
    if mamba is not None:
        checks.append(check("Mamba: mamba_ssm kernel agrees with the PyTorch path", 1.0 if mamba.get("ok") else 0.0, ">=", 1.0))
    for file, backend in (("ddp.json", "default backend"), ("ddp_gloo.json", "gloo")):
        ddp = read(out / file)
        if ddp is not None:
            ratio = ddp.get("speedup_median_ratio")
            name = f"torchrun --nproc_per_node 2 on one {ddp['setup']['device']} ({backend}): steps/s over 1 process"
            checks.append(check(name, ratio, "info", 0.0, "a smoke test: both share one device"))
    return checks


def machine(out: Path) -> dict[str, Any]:
    info = read(out / "env.json") or {}
    bench = (read(out / "bench" / "bench.json") or {}).get("meta", {})
    keys = {"device_name": "bench device", "cudnn": "cuDNN", "peak_bandwidth_gb_s": "HBM peak (GB/s)"}
    return {**info, **{label: bench[k] for k, label in keys.items() if k in bench}}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# recurrl GPU check", ""]
    for key, value in summary["machine"].items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for row in summary["steps"]:
        note = row.get("reason") or (f"see {row['log']}" if row.get("status") != "ok" and row.get("log") else "")
        lines.append(f"| {row['step']} | {row['status']} | {row.get('seconds', '')} | {note} |")
    lines += ["", "| target | value | bar | result |", "| --- | --- | --- | --- |"]
    for row in summary["checks"]:
        value = "" if row["value"] is None else f"{row['value']:.3g}"
        bar = "" if row["op"] == "info" else f"{row['op']} {row['target']:g}"
        lines.append(f"| {row['check']} | {value} | {bar} | {row['result']} |")
    skipped = [row for row in summary["steps"] if row["status"] != "ok"]
    lines += ["", f"Not run or not ok: {', '.join(r['step'] + ' (' + r['status'] + ')' for r in skipped) or 'none'}."]
    return "\n".join(lines) + "\n"


def write_summary(out: Path) -> str:
    summary = {"machine": machine(out), "steps": steps(out), "checks": other_checks(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    return text
