"""Fused CPU kernels for the minGRU / minLSTM recurrence, compiled by numba (the CPU twin of triton_scan).

On a CPU the scan is latency-bound: the "loop" backend issues ~5 torch ops per time step forward and
~15 backward (microseconds each), and the "log" backend ~10 ops per level of its recursion plus
their autograd nodes. Here the whole sequence is one compiled call each way:

    forward:  s = sigmoid(kp) (one vectorized torch op), then one kernel pass
              kp = [k | p] [T, B, 2H], h0 [B, H], keep [T, B] (0 where an episode starts) -> h [T, B, H]
    backward: sigmoid recomputed, one reverse kernel pass -> d kp, d h0

The kernels do no transcendental math (torch's vectorized sigmoid does), so their inner loop over the
H values of a row is plain multiply-adds and selects, which LLVM vectorizes. Same math as
`scan._GatedLoopScan`, the reference they are tested against: z = sigmoid(k),
g(p) = p + 0.5 for p >= 0 else sigmoid(p), h_t = keep_t h_{t-1} + z (g - keep_t h_{t-1}).
minLSTM goes through the same kernels with k = logsigmoid(pre_i) - logsigmoid(pre_f).

Compiled on first use per dtype (about 1 s), then cached on disk (numba `cache=True`).
fp32 or fp64 CPU tensors; the caller casts lower precisions to fp32 (`scan.acc`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor


@njit(cache=True)
def _forward(s: np.ndarray, kp: np.ndarray, h0: np.ndarray, keep: np.ndarray, out: np.ndarray) -> None:
    length, batch, hidden = out.shape
    for t in range(length):
        for b in range(batch):
            kb = keep[t, b]
            for j in range(hidden):
                h_prev = (out[t - 1, b, j] if t > 0 else h0[b, j]) * kb
                p = kp[t, b, hidden + j]
                g = p + 0.5 if p >= 0 else s[t, b, hidden + j]
                out[t, b, j] = h_prev + s[t, b, j] * (g - h_prev)


@njit(cache=True)
def _backward(
    s: np.ndarray,
    kp: np.ndarray,
    out: np.ndarray,
    h0: np.ndarray,
    keep: np.ndarray,
    grad: np.ndarray,
    dkp: np.ndarray,
    carry: np.ndarray,
) -> None:
    """dkp gets d [k | p]; carry holds a_{t+1} dh_{t+1} while looping and ends as d h0."""
    length, batch, hidden = out.shape
    for t in range(length - 1, -1, -1):
        for b in range(batch):
            kb = keep[t, b]
            for j in range(hidden):
                dh = grad[t, b, j] + carry[b, j]
                h_prev = (out[t - 1, b, j] if t > 0 else h0[b, j]) * kb
                z = s[t, b, j]
                p, sp = kp[t, b, hidden + j], s[t, b, hidden + j]
                g = p + 0.5 if p >= 0 else sp
                dgp = dh * z
                dkp[t, b, j] = dh * (g - h_prev) * z * (1.0 - z)
                dkp[t, b, hidden + j] = dgp if p >= 0 else dgp * sp * (1.0 - sp)
                carry[b, j] = (dh - dgp) * kb


class NumbaGatedScan(torch.autograd.Function):
    """Time-major kp = [k | p] [T, B, 2H], h0 [B, H], keep [T, B] (same dtype, CPU) -> h [T, B, H]."""

    @staticmethod
    def forward(ctx: Any, kp: Tensor, h0: Tensor, keep: Tensor) -> Tensor:
        kp, h0, keep = kp.contiguous(), h0.contiguous(), keep.contiguous()
        s = torch.sigmoid(kp)
        out = kp.new_empty(kp.shape[0], kp.shape[1], h0.shape[1])
        _forward(s.numpy(), kp.detach().numpy(), h0.detach().numpy(), keep.numpy(), out.numpy())
        ctx.save_for_backward(kp, out, h0, keep)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        kp, out, h0, keep = ctx.saved_tensors
        s = torch.sigmoid(kp.detach())  # recomputed: storing it would double the activation memory
        dkp = torch.empty_like(kp)
        carry = torch.zeros_like(h0)
        _backward(
            s.numpy(),
            kp.detach().numpy(),
            out.detach().numpy(),
            h0.detach().numpy(),
            keep.numpy(),
            grad.contiguous().numpy(),
            dkp.numpy(),
            carry.numpy(),
        )
        return dkp, carry, None


def numba_gated_tm(kp: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    """minGRU recurrence, time-major: kp = [k | p] [T, B, 2H] (fp32/fp64), h0 [B, H], starts_tm [T, B].

    CPU tensors only: `scan.resolve_backend` rejects scan='numba' on any other device before this runs.
    """
    length, batch, hidden = kp.shape[0], kp.shape[1], kp.shape[2] // 2
    h0 = kp.new_zeros(batch, hidden) if h0 is None else h0.to(kp.dtype)
    keep = kp.new_ones(length, batch) if starts_tm is None else (~starts_tm).to(kp.dtype)
    return NumbaGatedScan.apply(kp, h0, keep)
