"""The compiled kernels (numba) and the autograd Function of rms_norm.py: one pass over each row forward
and one backward. Scalars enter as an array in the input's dtype, so fp32 math stays fp32 (a Python float
would promote it to fp64 and stop LLVM vectorizing)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import Tensor

from .numba_mamba import reference_backward
from .numba_math import JIT


@njit(**JIT)
def rms_norm_forward(x: np.ndarray, w: np.ndarray, consts: np.ndarray, y: np.ndarray, r: np.ndarray) -> None:
    """x [M, H], w [H], consts [eps, 1 / H, 1] -> y [M, H] and r [M] (1 / rms of each row, for the backward)."""
    rows, width = x.shape
    eps, inv_width, one = consts[0], consts[1], consts[2]
    for m in range(rows):
        acc = x[m, 0] * x[m, 0]
        for h in range(1, width):
            acc += x[m, h] * x[m, h]
        rm = one / np.sqrt(acc * inv_width + eps)
        r[m] = rm
        for h in range(width):
            y[m, h] = x[m, h] * rm * w[h]


@njit(**JIT)
def rms_norm_backward(
    x: np.ndarray,
    w: np.ndarray,
    consts: np.ndarray,
    r: np.ndarray,
    g: np.ndarray,
    dx: np.ndarray,
    dw: np.ndarray,
) -> None:
    """x, g (dy) [M, H], w [H], consts as forward, r [M] -> dx [M, H]; dw [H] (summed over rows: zero it
    first)."""
    rows, width = x.shape
    inv_width = consts[1]
    for m in range(rows):
        rm = r[m]
        proj = g[m, 0] * w[0] * x[m, 0]
        for h in range(1, width):
            proj += g[m, h] * w[h] * x[m, h]
        proj *= rm * rm * inv_width  # mean(g_hat * x_hat) * r, so that x_hat * mean(...) = x * proj
        for h in range(width):
            dx[m, h] = rm * (g[m, h] * w[h] - x[m, h] * proj)
        for h in range(width):
            dw[h] += g[m, h] * x[m, h] * rm


class NumbaRMSNorm(torch.autograd.Function):
    """x [..., H], weight [H], eps -> y [..., H] (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x2 = x.detach().contiguous().reshape(-1, x.shape[-1])
        y = torch.empty_like(x2)
        r = x2.new_empty(x2.shape[0])
        consts = np.array([eps, 1.0 / x2.shape[1], 1.0], dtype=x2.numpy().dtype)
        rms_norm_forward(x2.numpy(), weight.detach().contiguous().numpy(), consts, y.numpy(), r.numpy())
        ctx.save_for_backward(x, weight, r)
        ctx.eps, ctx.consts = eps, consts
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, r = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients by autograd through torch's rms_norm
            return (
                *reference_backward(ctx, partial(_torch_rms_norm, eps=ctx.eps), (x, weight), (), (grad,)),
                None,
            )
        x2 = x.detach().contiguous().reshape(-1, x.shape[-1])
        dx, dw = torch.empty_like(x2), weight.new_zeros(weight.shape)
        g2 = grad.contiguous().reshape(x2.shape)
        w = weight.detach().contiguous().numpy()
        rms_norm_backward(x2.numpy(), w, ctx.consts, r.numpy(), g2.numpy(), dx.numpy(), dw.numpy())
        wants = ctx.needs_input_grad
        return (dx.reshape(x.shape) if wants[0] else None), (dw if wants[1] else None), None


def _torch_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The reference a double backward differentiates: torch's rms_norm over the last dim."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)
