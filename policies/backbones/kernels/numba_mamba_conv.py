"""Mamba's causal depthwise conv + SiLU with episode resets and the carried conv buffer, compiled (numba).

    xs_t = silu(bias + sum_j w_j * in_{t-(K-1)+j}),   in_s = 0 for s before the latest episode start <= t
    xc [B, T, E]; state [B, K-1, E] (the carried inputs, oldest first: in_s for s = -(K-1)..-1);
    w [E, K]; bias [E]; starts [B, T] bool -> xs [B, T, E].

The vectorized torch form (mamba.py, the reference) builds K masked, shifted copies of the input
forward and as many again backward, each a full [B, T, E] tensor; on a CPU that memory traffic costs
more than the selective scan. Here one pass each way, the inner loop over E; the backward recomputes
the pre-activation instead of storing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .numba_mamba import reference_backward
from .numba_math import JIT, silu, silu_grad
from .numba_rows import row_calls, row_chunks, run_parallel


@njit(**JIT)
def _pre_activation(
    b: int,
    t: int,
    first: int,
    xc: np.ndarray,
    state: np.ndarray,
    w_t: np.ndarray,
    bias: np.ndarray,
    pre: np.ndarray,
) -> None:
    """pre = bias + sum of the taps of step t of row b that read inputs from step `first` on."""
    k, inner = w_t.shape
    pre[:] = bias
    for j in range(k):
        s = t - (k - 1) + j
        if s < first:
            continue
        if s >= 0:
            for e in range(inner):
                pre[e] += w_t[j, e] * xc[b, s, e]
        else:
            for e in range(inner):
                pre[e] += w_t[j, e] * state[b, k - 1 + s, e]


@njit(**JIT)
def conv_forward(
    w_t: np.ndarray, bias: np.ndarray, xc: np.ndarray, state: np.ndarray, starts: np.ndarray, out: np.ndarray
) -> None:
    """w_t = w^T [K, E], bias [E]; then per row: xc [B, T, E], state [B, K-1, E], starts [B, T] -> writes
    out [B, T, E]."""
    batch, length, inner = xc.shape
    k = w_t.shape[0]
    pre = np.empty(inner, dtype=out.dtype)
    for b in range(batch):
        first = -k  # the first step whose input the taps may read; before any start: the carried ones
        for t in range(length):
            if starts[b, t]:
                first = t
            _pre_activation(b, t, first, xc, state, w_t, bias, pre)
            for e in range(inner):
                out[b, t, e] = silu(pre[e])


@njit(**JIT)
def conv_backward(
    w_t: np.ndarray,
    bias: np.ndarray,
    xc: np.ndarray,
    state: np.ndarray,
    starts: np.ndarray,
    dout: np.ndarray,
    dxc: np.ndarray,
    dstate: np.ndarray,
    dw_t: np.ndarray,
    dbias: np.ndarray,
) -> None:
    """Gradients of `conv_forward` for dout [B, T, E]. Accumulates into dxc [B, T, E], dstate [B, K-1, E],
    dw_t [K, E] and dbias [E] (zero them first)."""
    batch, length, inner = xc.shape
    k = w_t.shape[0]
    pre = np.empty(inner, dtype=dout.dtype)
    dpre = np.empty(inner, dtype=dout.dtype)
    for b in range(batch):
        first = -k
        for t in range(length):
            if starts[b, t]:
                first = t
            _pre_activation(b, t, first, xc, state, w_t, bias, pre)
            for e in range(inner):
                dpre[e] = dout[b, t, e] * silu_grad(pre[e])
                dbias[e] += dpre[e]
            for j in range(k):
                s = t - (k - 1) + j
                if s < first:
                    continue
                if s >= 0:
                    for e in range(inner):
                        dw_t[j, e] += dpre[e] * xc[b, s, e]
                        dxc[b, s, e] += dpre[e] * w_t[j, e]
                else:
                    for e in range(inner):
                        dw_t[j, e] += dpre[e] * state[b, k - 1 + s, e]
                        dstate[b, k - 1 + s, e] += dpre[e] * w_t[j, e]


class NumbaConvSilu(torch.autograd.Function):
    """xc [B, T, E], state [B, K-1, E], weight [E, K], bias [E] (one float dtype, CPU), starts [B, T] bool
    -> xs [B, T, E]. Callers check shapes (`selective_scan.conv_silu`). Row ranges run in parallel."""

    @staticmethod
    def forward(ctx: Any, xc: Tensor, state: Tensor, weight: Tensor, bias: Tensor, starts: Tensor) -> Tensor:
        xck, statek, w_t, biask, startsk = _kernel_layout(xc, state, weight, bias, starts)
        out = torch.empty(xc.shape, dtype=xc.dtype)
        chunks = row_chunks(xc.shape[0], xc.shape[1] * xc.shape[2] * w_t.shape[0])
        run_parallel(row_calls(conv_forward, (w_t, biask), [xck, statek, startsk, out], [], chunks))
        ctx.save_for_backward(xc, state, weight, bias, starts)  # not detached: see reference_backward
        ctx.kernel_args = (xck, statek, w_t, biask, startsk)  # reused by backward (as in numba_mamba.py)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        xc, state, weight, bias, starts = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the torch reference instead
            from .selective_scan import conv_silu_torch

            return reference_backward(ctx, conv_silu_torch, (xc, state, weight, bias), (starts,), (dout,))
        xck, statek, w_t, biask, startsk = ctx.kernel_args
        batch, length, inner = xck.shape
        chunks = row_chunks(batch, length * inner * w_t.shape[0])
        dxc, dstate = torch.zeros_like(xck), torch.zeros_like(statek)
        # Summed over rows: one partial sum per row range, added up after.
        dw_t, dbias = w_t.new_zeros((len(chunks), *w_t.shape)), biask.new_zeros((len(chunks), *biask.shape))
        per_row = [xck, statek, startsk, dout.contiguous(), dxc, dstate]
        run_parallel(row_calls(conv_backward, (w_t, biask), per_row, [dw_t, dbias], chunks))
        return dxc, dstate, dw_t.sum(0).t(), dbias.sum(0), None


def _kernel_layout(
    xc: Tensor, state: Tensor, weight: Tensor, bias: Tensor, starts: Tensor
) -> tuple[Tensor, ...]:
    """Detached and contiguous, the weight transposed to [K, E] (the inner loop runs over E)."""
    parts = (xc, state, weight.t(), bias, starts)
    return tuple(t.detach().contiguous() for t in parts)
