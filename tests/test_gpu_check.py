"""scripts/gpu_check.sh without a GPU: its plan, its Python parts, and (slow) the whole script run small
on the CPU. What needs the GPU itself (the Triton kernels compiled, mamba_ssm, NCCL) runs only there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recurrl.agents import gpu_check
from recurrl.agents.gpu_report import write_summary
from recurrl.envs.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_dry_run_names_every_step_and_runs_nothing(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for step in ("setup", "mamba_ssm", "triton", "bench", "dt_k20", "dt_k200", "ddp", "mamba"):
        assert f"[{step}]" in done.stdout, step
    assert "--device cuda" in done.stdout and "--amp both" in done.stdout and "-k gpu" in done.stdout
    assert not (tmp_path / "summary.md").exists()
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_python_parts_run_on_the_cpu(tmp_path: Path) -> None:
    assert gpu_check.missing() == []  # everything it needs is in the dev environment
    dataset = load_dataset(str(gpu_check.pendulum_dataset(tmp_path / "pendulum.hdf5", episodes=2)))
    assert dataset.env_id == "Pendulum-v1" and len(dataset.episodes) == 2
    result = gpu_check.mamba_check("cpu", repeats=1, lengths=(8,), batch=2)  # on a CPU both paths are PyTorch's
    assert result["ok"] and result["max_abs_diff_forward"] == 0.0


def test_summary_lists_steps_targets_and_what_did_not_run(tmp_path: Path) -> None:
    rows = [
        {"step": "bench", "status": "ok", "seconds": 12, "rc": 0, "reason": "", "command": "", "log": "bench.log"},
        {"step": "mamba", "status": "skipped", "seconds": 0, "rc": 0, "reason": "mamba_ssm did not install"},
    ]
    (tmp_path / "steps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    (tmp_path / "bench").mkdir()
    target = {"check": "gated scan [triton] bandwidth / HBM peak, T=4096", "value": 0.7, "op": ">=", "target": 0.6, "result": "PASS"}
    (tmp_path / "bench/bench.json").write_text(json.dumps({"meta": {"device_name": "NVIDIA H200"}, "targets": [target]}))
    ratios = {"mingru_over_transformer_bf16_median_ratio": 2.5, "mingru_over_transformer_fp32_median_ratio": 1.5}
    (tmp_path / "dt_k20.json").write_text(json.dumps(ratios))
    text = write_summary(tmp_path)
    assert "| mamba | skipped | 0 | mamba_ssm did not install |" in text
    assert "| gated scan [triton] bandwidth / HBM peak, T=4096 | 0.7 | >= 0.6 | PASS |" in text
    assert "K=20, bf16 | 2.5 | >= 2 | PASS" in text and "K=20, fp32 | 1.5 | >= 2 | FAIL" in text
    assert "K=200 |  | >= 4 | not measured" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["machine"]["bench device"] == "NVIDIA H200"


@pytest.mark.slow
def test_the_whole_script_runs_small_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {row["step"]: row["status"] for row in summary["steps"]}
    assert status == {
        "setup": "ok", "triton": "skipped", "bench": "ok", "dt_k20": "ok", "dt_k200": "ok", "ddp": "ok", "mamba": "skipped"
    }
    assert any(row["check"].startswith("torchrun --nproc_per_node 2") for row in summary["checks"])
    assert "# recurrl GPU check" in done.stdout


def test_bench_decision_train_with_and_without_autocast_writes_json(tmp_path: Path) -> None:
    from recurrl.scripts.cli import main

    args = ["bench", "decision", "train", "--backbones", "mingru", "transformer", "--amp", "both", "--hidden-dim", "16"]
    args += ["--num-layers", "1", "--batch-size", "4", "--context-length", "4", "--steps", "1", "--rounds", "1"]
    assert main([*args, "--device", "cpu", "--json", str(tmp_path / "dt.json")]) == 0
    result = json.loads((tmp_path / "dt.json").read_text())
    assert {"mingru-bf16", "mingru-fp32", "transformer-bf16", "transformer-fp32"} <= set(result)
    assert result["mingru-fp32"]["amp"] is False and result["device"] == "cpu"  # autocast is for GPUs only
    assert "mingru_over_transformer_bf16_median_ratio" in result
