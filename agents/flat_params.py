"""One flat buffer for all of a module's parameters, and one for their gradients.

Small recurrent policies have a few dozen parameter tensors of a few thousand numbers each. A PPO minibatch
on them costs ~7 ms on CPU, and part of that is per-tensor overhead outside the model: the optimizer
step, `clip_grad_norm_` (one norm per tensor), and `zero_grad(set_to_none=True)`, after which backward
allocates every gradient again. With the parameters as views into one buffer and their gradients as views
into another, each of those is one op on one tensor. For the CartPole preset's policy (36 tensors) a
whole minibatch of 8 x 32 steps went from 7.65 to 7.03 ms (interleaved rounds, medians, 1 thread).

The module keeps its own Parameters (state_dict keys, hooks and the compiled step see nothing new); their
`.data` and `.grad` are views. Autograd accumulates into an existing `.grad` in place, so the flat
gradient fills as backward runs, as long as nobody sets a `.grad` to None: use `zero_grad()` here, not
the optimizer's or the module's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class FlatParameters:
    """Re-seat `module`'s parameters as views into one flat Parameter (`self.param`, whose `.grad` is the
    flat gradient). Optimize `[self.param]`. Call after the module is on its final device and dtype:
    `module.to(...)` afterwards would give the parameters new storage and break the views."""

    def __init__(self, module: nn.Module) -> None:
        params = list(module.parameters())
        if not params:
            raise ValueError("FlatParameters: the module has no parameters")
        first = params[0]
        odd = [
            f"{tuple(p.shape)} {p.dtype} on {p.device}"
            for p in params
            if p.dtype != first.dtype or p.device != first.device
        ]
        if odd:
            raise ValueError(
                f"FlatParameters: every parameter must share one dtype and device ({first.dtype} on "
                f"{first.device}); also found {odd[:3]}"
            )
        self.params = params
        with torch.no_grad():
            self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.param.grad = torch.zeros_like(self.param)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.param.data[offset : offset + n].view_as(p)
            p.grad = self.param.grad[offset : offset + n].view_as(p)
            offset += n

    def zero_grad(self) -> None:
        """Zero every gradient in place (one op); the views stay attached."""
        grad = self.param.grad
        if grad is None or any(p.grad is None for p in self.params):
            raise RuntimeError(
                "FlatParameters: a gradient was set to None (optimizer.zero_grad() or module.zero_grad()?); "
                "call FlatParameters.zero_grad() instead"
            )
        grad.zero_()

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """torch.nn.utils.clip_grad_norm_ over all parameters, as one norm of the flat gradient."""
        return nn.utils.clip_grad_norm_([self.param], max_norm)

    def flatten_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimizer state dict over the separate parameters (one group, as checkpoints before the flat
        buffer held) -> the same state over the flat parameter: each per-parameter tensor of the parameter's
        size is concatenated in parameter order; scalars (Adam's `step`) must agree and are kept once."""
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(
                f"optimizer state has {[len(g['params']) for g in groups]} parameters per group; expected one "
                f"group of {len(self.params)} (this module's parameters)"
            )
        per_param = [state["state"].get(i, {}) for i in groups[0]["params"]]
        flat: dict[str, Any] = {}
        for key in per_param[0]:
            values = [entry.get(key) for entry in per_param]
            if all(
                isinstance(v, Tensor) and v.numel() == p.numel()
                for v, p in zip(values, self.params, strict=True)
            ):
                flat[key] = torch.cat([v.reshape(-1) for v in values])
            elif all(_same(v, values[0]) for v in values):
                # A copy: optimizer.state_dict() hands out its live tensors (Adam's step is bumped in place).
                flat[key] = values[0].clone() if isinstance(values[0], Tensor) else values[0]
            else:
                raise ValueError(f"optimizer state {key!r} differs between parameters; cannot flatten it")
        return {"state": {0: flat} if flat else {}, "param_groups": [{**groups[0], "params": [0]}]}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b
