"""Per-tick latency of an exported ONNX step next to PyTorch's, measured side by side (`recurrl export
--latency`): the same tick (agents/export.py's step modules) at batch 1, the state fed back each tick,
rounds of the three runners interleaved so that machine noise falls on all of them alike.

- onnxruntime: the exported graph, numpy in and out (what a controller outside Python pays);
- torch: the step as `predict` runs it (minGRU/minLSTM through the compiled numba kernel);
- torch eager: the same step with the eager torch ops, which is what the graph was traced from.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recurrl.agents.agent import DecisionAgent, PPOAgent
from recurrl.agents.bench.timing import interleaved_rounds, rate_per_s
from recurrl.agents.export import step_module


def _torch_runner(agent: DecisionAgent | PPOAgent, eager: bool) -> Callable[[], None]:
    module, args, info = step_module(agent, eager=eager)
    module.eval()
    n_in = len(info["inputs"])
    n_state = sum(i["name"].startswith("state.") for i in info["inputs"])
    feeds = list(args)

    @torch.inference_mode()
    def tick() -> None:
        out = module(*feeds)
        feeds[n_in - n_state :] = out[len(out) - n_state :]  # carry the state, as a controller would

    return tick


def _onnx_runner(path: Path, agent: DecisionAgent | PPOAgent, threads: int) -> Callable[[], None]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _, args, info = step_module(agent)
    names = [i["name"] for i in info["inputs"]]
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    outputs = [o["name"] for o in info["outputs"]]
    state = [(o, "state." + o.removeprefix("next.")) for o in outputs if o.startswith("next.")]

    def tick() -> None:
        result = dict(zip(outputs, session.run(None, feeds), strict=True))
        for out_name, in_name in state:
            feeds[in_name] = result[out_name]

    return tick


def step_latency_us(
    agent: DecisionAgent | PPOAgent, onnx_path: str | Path, ticks: int = 200, rounds: int = 7
) -> dict[str, Any]:
    """Median microseconds per tick at B=1 -> {"onnxruntime", "torch", "torch_eager", "ticks", "rounds", "threads"}."""
    threads = torch.get_num_threads()
    runners = {
        "onnxruntime": _onnx_runner(Path(onnx_path), agent, threads),
        "torch": _torch_runner(agent, eager=False),
        "torch_eager": _torch_runner(agent, eager=True),
    }
    # One untimed round first (compiles the kernel, fills caches), then rounds interleaving the runners.
    per_tick_us = {name: lambda tick=tick: 1e6 / rate_per_s(tick, ticks) for name, tick in runners.items()}
    times = interleaved_rounds(per_tick_us, rounds)
    out: dict[str, Any] = {name: float(statistics.median(t)) for name, t in times.items()}
    out["spread"] = {name: [float(np.min(t)), float(np.max(t))] for name, t in times.items()}
    return {**out, "ticks": ticks, "rounds": rounds, "threads": threads}
