"""The parts of scripts/gpu_check.sh that Python does: which dependencies are missing, a small dataset
that needs no MuJoCo, the Mamba backbone on mamba_ssm's kernel against its PyTorch path, and the
summary (JSON + markdown) of everything the check measured or skipped.

    python -m recurrl.agents.gpu_check missing              # pip names of missing dependencies
    python -m recurrl.agents.gpu_check dataset OUT.hdf5     # random-action Pendulum episodes (D4RL format)
    python -m recurrl.agents.gpu_check mamba OUT.json [--device cuda]
    python -m recurrl.agents.gpu_check summary OUT_DIR      # OUT_DIR/summary.json, summary.md; prints it

Only the standard library is imported at the top: `missing` runs before the dependencies are there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

# module -> pip requirement, for what the checks import (torch, numpy and triton come with the machine's
# CUDA torch). With --no-index and a wheels folder, every wheel their dependencies need must be there.
DEPENDENCIES = {
    "gymnasium": "gymnasium>=1.0",
    "mujoco": "mujoco",
    "minari": "minari>=0.5",
    "h5py": "h5py>=3.9",
    "mambapy": "mambapy>=1.2",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.66",
    "yaml": "pyyaml>=6.0",
    "tensorboard": "tensorboard>=2.15",
    "numba": "numba>=0.60",
    "matplotlib": "matplotlib>=3.8",
    "pytest": "pytest>=8",
}


def missing() -> list[str]:
    return [req for module, req in DEPENDENCIES.items() if importlib.util.find_spec(module) is None]


def pendulum_dataset(path: Path, episodes: int = 20, seed: int = 0) -> Path:
    """Random-action Pendulum-v1 episodes (200 steps each) as a D4RL file: trains and evaluates with
    gymnasium alone, for when MuJoCo or Minari are not installed."""
    from recurrl.envs.datasets import export_hdf5
    from recurrl.envs.episodes import random_action_dataset

    return export_hdf5(random_action_dataset("Pendulum-v1", episodes, seed=seed), path)


def mamba_check(
    device: str = "cuda", repeats: int = 10, lengths: tuple[int, ...] = (60, 600), batch: int = 64
) -> dict[str, Any]:
    """The Mamba backbone with use_cuda_kernels (mamba_ssm's fused selective scan) against its PyTorch
    path, same weights: output and gradient agreement, and training-step time at DT's sizes."""
    import torch

    from recurrl.policies.backbones import make_backbone

    torch.manual_seed(0)
    kernel = make_backbone("mamba", 128, 128, num_layers=3, use_cuda_kernels=True).to(device)
    plain = make_backbone("mamba", 128, 128, num_layers=3).to(device)
    plain.load_state_dict(kernel.state_dict())
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else device}
    x = torch.randn(8, 60, 128, device=device)
    y_kernel, _ = kernel(x)
    y_plain, _ = plain(x)
    out["max_abs_diff_forward"] = float((y_kernel - y_plain).detach().abs().max())
    y_kernel.square().mean().backward()
    y_plain.square().mean().backward()
    grads = [(a.grad - b.grad).abs().max() for a, b in zip(kernel.parameters(), plain.parameters(), strict=True)]
    out["max_abs_diff_grad"] = float(max(grads))
    for length in lengths:  # DT's 3 tokens x K=20 and K=200
        x = torch.randn(batch, length, 128, device=device)
        for name, model in (("mamba_ssm", kernel), ("pytorch", plain)):
            out[f"train_step_ms_T{length}_{name}"] = _time_step(model, x, repeats, device)
        out[f"speedup_T{length}"] = out[f"train_step_ms_T{length}_pytorch"] / out[f"train_step_ms_T{length}_mamba_ssm"]
    out["ok"] = out["max_abs_diff_forward"] < 1e-3 and out["max_abs_diff_grad"] < 1e-3
    return out


def _time_step(model: Any, x: Any, repeats: int, device: str) -> float:
    """Median milliseconds of a training step (forward, backward) after 2 warmup steps."""
    import torch

    from recurrl.agents.bench.timing import budgeted_samples, sync

    def step() -> None:
        y, _ = model(x)
        y.square().mean().backward()

    for _ in range(2):
        step()
    sync(torch.device(device))
    return 1e3 * statistics.median(budgeted_samples(step, torch.device(device), repeats, budget_s=math.inf))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recurrl.agents.gpu_check")
    parser.add_argument("part", choices=["missing", "dataset", "mamba", "summary"])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.part == "missing":
        print(" ".join(missing()))
    elif args.part == "dataset":
        print(pendulum_dataset(Path(args.path)))
    elif args.part == "mamba":
        result = mamba_check(args.device)
        Path(args.path).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    else:
        from recurrl.agents.gpu_report import write_summary

        print(write_summary(Path(args.path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
