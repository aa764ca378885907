"""Training throughput of `torchrun --nproc_per_node N` against one process, side by side.

    recurrl bench decision ddp --nproc 2 --steps 200 --rounds 3 --threads 1

Each round runs the same short `recurrl train` once as one process and once under torchrun (gloo on
the CPU, NCCL on a GPU), alternating, and reads the training speed rank 0 wrote in results.json
(optimizer steps/s with evaluation excluded; batch_size is the global batch, so both runs do the
same work per step). Medians over rounds, and the median of the per-round ratios, are reported: a
shared machine is noisy, and neighbouring runs see the same load. Each run's CPU seconds (all its
processes, start-up and final evaluation included) are reported too: two --steps values give the CPU
cost of a step, which a loaded machine does not distort as it does wall time.

On a CPU the speedup is only as good as the cores the processes get: a shared host may lend fewer
than it shows. Before and after the rounds the benchmark times a one-thread matmul loop alone and as N
copies side by side (`free_cores_check`); a slowdown well above 1 says the N processes did not have N
free cores while they ran, and the command says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..devices import resolve_device
from .timing import interleaved_rounds, median_ratio, medians

# A one-thread matmul loop: about 1 s of pure compute on this machine's cores.
_CORE_PROBE = (
    "import time, torch; torch.set_num_threads(1); a = torch.randn(256, 256); b = torch.randn(256, 256);"
    "start = time.perf_counter();\nfor _ in range(2000): a @ b\nprint(time.perf_counter() - start)"
)
# Side-by-side slowdown above which the command warns that the processes shared cores.
SHARED_CORES_SLOWDOWN = 1.15


def free_cores_check(nproc: int) -> dict[str, Any]:
    """Seconds of `_CORE_PROBE` alone and as `nproc` processes at once -> {alone_s, side_by_side_s,
    slowdown}: slowdown = the slowest side-by-side run over the lone one (1.0: nproc free cores)."""

    def start() -> subprocess.Popen[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            [sys.executable, "-c", _CORE_PROBE], stdout=subprocess.PIPE, text=True, env=env
        )

    def seconds(process: subprocess.Popen[str]) -> float:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"the free-cores probe failed (exit code {process.returncode})")
        return float(out.strip())

    alone = seconds(start())
    together = [seconds(p) for p in [start() for _ in range(nproc)]]
    return {"alone_s": alone, "side_by_side_s": together, "slowdown": max(together) / alone}


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


def run_once(
    args: argparse.Namespace, nproc: int, runs_dir: Path, name: str
) -> tuple[float, float, list[str]]:
    """One `recurrl train` run -> (its training steps/s from results.json, CPU seconds of all its
    processes, the command)."""
    command = train_command(args, nproc, runs_dir, name)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # torchrun waited for its workers
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    results = json.loads((runs_dir / name / "results.json").read_text())
    speed = results["train_steps_per_s"]
    print(f"{name}: {nproc} process(es): {speed:.1f} steps/s", file=sys.stderr)
    return speed, cpu_s, command


def bench_ddp(args: argparse.Namespace) -> dict[str, Any]:
    on_cpu = resolve_device(args.device).type == "cpu"
    cores_before = free_cores_check(args.nproc) if on_cpu else None
    with tempfile.TemporaryDirectory(prefix="recurrl-ddp-bench-") as tmp:
        runs = {1: 0, args.nproc: 0}  # runs so far per process count: each run gets its own folder

        def case(nproc: int):
            def run() -> tuple[float, float, list[str]]:
                runs[nproc] += 1
                return run_once(args, nproc, Path(tmp), f"round{runs[nproc] - 1}-n{nproc}")

            return run

        measured = interleaved_rounds({nproc: case(nproc) for nproc in runs}, args.rounds, warmup=0)
    cores = [cores_before, free_cores_check(args.nproc)] if on_cpu else []
    shared = [c["slowdown"] for c in cores if c["slowdown"] > SHARED_CORES_SLOWDOWN]
    if shared:
        print(
            f"warning: {args.nproc} one-thread processes side by side ran {max(shared):.2f}x slower than one "
            f"alone (free_cores in the output): the host did not give this run {args.nproc} free cores, so "
            "the speedup below is lower than the code's",
            file=sys.stderr,
        )
    speeds = {n: [speed for speed, _, _ in values] for n, values in measured.items()}
    cpu = {n: [cpu_s for _, cpu_s, _ in values] for n, values in measured.items()}
    commands = {n: values[-1][2] for n, values in measured.items()}
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
        "free_cores": {"before": cores[0], "after": cores[1]} if cores else None,
        "commands": {str(n): " ".join(c) for n, c in commands.items()},
        "steps_per_sec": {str(n): v for n, v in speeds.items()},
        "steps_per_sec_median": {str(n): v for n, v in medians(speeds).items()},
        "cpu_s_per_run": {str(n): v for n, v in cpu.items()},
        "speedup_median_ratio": median_ratio(speeds[args.nproc], speeds[1]),
        "speedup_ratios": [b / a for a, b in zip(speeds[1], speeds[args.nproc], strict=True)],
    }
