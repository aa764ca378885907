"""Training throughput of `torchrun --nproc_per_node N` against one process, side by side.

    recurrl bench-decision ddp --nproc 2 --steps 200 --rounds 3 --threads 1

Each round runs the same short `recurrl train` once as one process and once under torchrun (gloo on
the CPU, NCCL on a GPU), alternating, and reads the training speed rank 0 wrote in results.json
(optimizer steps/s with evaluation excluded; batch_size is the global batch, so both runs do the
same work per step). Medians over rounds, and the median of the per-round ratios, are reported: a
shared machine is noisy, and neighbouring runs see the same load. Each run's CPU seconds (all its
processes, start-up and final evaluation included) are reported too: two --steps values give the CPU
cost of a step, which a loaded machine does not distort as it does wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def train_command(args: argparse.Namespace, nproc: int, runs_dir: Path, name: str) -> list[str]:
    """`recurrl train` with the benchmark's model, one process or `nproc` under torchrun."""
    overrides = [
        f"model.backbone={args.backbones[0]}",
        f"model.hidden_dim={args.hidden_dim}",
        f"model.num_layers={args.num_layers}",
        f"model.tokens={args.tokens or 'fused'}",
        f"context_length={args.context_length}",
        f"batch_size={args.batch_size}",
        f"steps={args.steps}",
        f"num_threads={args.threads or 1}",
        f"device={args.device}",
        f"amp={'true' if args.amp != 'off' else 'false'}",
        "eval.every=0",
        "eval.episodes=1",
        "eval.num_envs=1",
        f"checkpoint_every={args.steps}",
        f"log_every={args.steps}",
    ]
    options = ["--dataset", args.dataset, "--runs-dir", str(runs_dir), "--run-name", name, "--no-progress"]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, "-m", "recurrl", "train", *options, *overrides]


def bench_ddp(args: argparse.Namespace) -> dict[str, Any]:
    speeds: dict[int, list[float]] = {1: [], args.nproc: []}
    cpu: dict[int, list[float]] = {1: [], args.nproc: []}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    commands = {}
    with tempfile.TemporaryDirectory(prefix="recurrl-ddp-bench-") as tmp:
        for round_index in range(args.rounds):
            for nproc in speeds:
                name = f"round{round_index}-n{nproc}"
                command = train_command(args, nproc, Path(tmp), name)
                commands[nproc] = command
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)  # torchrun waited for its workers
                cpu[nproc].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
                results = json.loads((Path(tmp) / name / "results.json").read_text())
                speeds[nproc].append(results["train_steps_per_s"])
                print(f"round {round_index}: {nproc} process(es): {speeds[nproc][-1]:.1f} steps/s", file=sys.stderr)
    ratios = [b / a for a, b in zip(speeds[1], speeds[args.nproc], strict=True)]
    return {
        "setup": {
            "backbone": args.backbones[0],
            "hidden_dim": args.hidden_dim,
            "num_layers": args.num_layers,
            "context_length": args.context_length,
            "batch_size": args.batch_size,
            "tokens": args.tokens or "fused",
            "steps_per_run": args.steps,
            "threads_per_process": args.threads or 1,
            "device": args.device,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "commands": {str(n): " ".join(c) for n, c in commands.items()},
        "steps_per_sec": {str(n): v for n, v in speeds.items()},
        "steps_per_sec_median": {str(n): statistics.median(v) for n, v in speeds.items()},
        "cpu_s_per_run": {str(n): v for n, v in cpu.items()},
        "speedup_median_ratio": statistics.median(ratios),
        "speedup_ratios": ratios,
    }
