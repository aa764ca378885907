"""Fused Triton kernels for h_t = a_t * h_{t-1} + b_t (CUDA; CPU through TRITON_INTERPRET=1).

One program owns a block of channels of one sequence and walks over time, so the loads of each
step are contiguous (coalesced) and h stays in registers in fp32, whatever the I/O dtype.

- gated (minGRU / minLSTM): inputs are the pre-activations k (gate) and p (candidate); the
  kernel applies z = sigmoid(k), h~ = g(p) and h_t = h_{t-1} + z (h~ - h_{t-1}) itself.
- generic: inputs are a and b.

The backward kernel recomputes the activations from the inputs and reads h_{t-1} from the saved
output, so nothing but h is stored: about 12 bytes per element forward and 24 backward in fp32.
Resets (`episode_starts`) zero the carried state before step t; `h0` is the state before t = 0.

Offsets are int32: tensors up to 2**31 elements. Validated in triton's CPU interpreter only (the
tests); not yet timed on a GPU.

Importing this module without triton installed raises ImportError; scan.py only imports it when
the "triton" backend is used. TRITON_INTERPRET is read when the kernels are decorated, i.e. at
import time.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 32  # channels per program (one warp): B * H / 32 programs, enough to fill a GPU at B * H >= 8K


@triton.jit
def _scan_fwd_kernel(
    x1_ptr,
    x2_ptr,
    h0_ptr,
    starts_ptr,
    out_ptr,
    length,
    hidden,
    in_stride_b,
    in_stride_t,
    out_stride_b,
    out_stride_t,
    starts_stride_b,
    starts_stride_t,
    HAS_H0: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_H], dtype=tl.float32)
    in_base = pid_b * in_stride_b + cols
    out_base = pid_b * out_stride_b + cols
    for t in range(length):
        u = tl.load(x1_ptr + in_base + t * in_stride_t, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x2_ptr + in_base + t * in_stride_t, mask=mask, other=0.0).to(tl.float32)
        if HAS_STARTS:
            start = tl.load(starts_ptr + pid_b * starts_stride_b + t * starts_stride_t)
            h = tl.where(start != 0, 0.0, h)
        if GATED:
            z = tl.sigmoid(u)
            g = tl.where(v >= 0, v + 0.5, tl.sigmoid(v))
            h = h + z * (g - h)
        else:
            h = u * h + v
        tl.store(out_ptr + out_base + t * out_stride_t, h.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scan_bwd_kernel(
    x1_ptr,
    x2_ptr,
    h0_ptr,
    starts_ptr,
    out_ptr,
    grad_ptr,
    dx1_ptr,
    dx2_ptr,
    dh0_ptr,
    length,
    hidden,
    in_stride_b,
    in_stride_t,
    out_stride_b,
    out_stride_t,
    starts_stride_b,
    starts_stride_t,
    HAS_H0: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    if HAS_H0:
        h0 = tl.load(h0_ptr + pid_b * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_H], dtype=tl.float32)
    in_base = pid_b * in_stride_b + cols
    out_base = pid_b * out_stride_b + cols
    carry = tl.zeros([BLOCK_H], dtype=tl.float32)  # a_{t+1} * dh_{t+1}
    for i in range(length):
        t = length - 1 - i
        u = tl.load(x1_ptr + in_base + t * in_stride_t, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x2_ptr + in_base + t * in_stride_t, mask=mask, other=0.0).to(tl.float32)
        dh = tl.load(grad_ptr + out_base + t * out_stride_t, mask=mask, other=0.0).to(tl.float32) + carry
        # h_{t-1} from the saved output; at t = 0 read row 0 (in bounds) and use h0 instead.
        prev_t = t - 1 + (t == 0)
        h_prev = tl.load(out_ptr + out_base + prev_t * out_stride_t, mask=mask, other=0.0)
        h_prev = tl.where(t > 0, h_prev.to(tl.float32), h0)
        if HAS_STARTS:
            start = tl.load(starts_ptr + pid_b * starts_stride_b + t * starts_stride_t)
            keep = tl.where(start != 0, 0.0, 1.0)
        else:
            keep = 1.0
        h_prev = h_prev * keep
        if GATED:
            z = tl.sigmoid(u)
            sv = tl.sigmoid(v)
            g = tl.where(v >= 0, v + 0.5, sv)
            du = dh * (g - h_prev) * z * (1.0 - z)
            dv = dh * z * tl.where(v >= 0, 1.0, sv * (1.0 - sv))
            a = 1.0 - z
        else:
            du = dh * h_prev
            dv = dh
            a = u
        tl.store(dx1_ptr + out_base + t * out_stride_t, du, mask=mask)
        tl.store(dx2_ptr + out_base + t * out_stride_t, dv, mask=mask)
        carry = dh * a * keep
    if HAS_H0:
        tl.store(dh0_ptr + pid_b * hidden + cols, carry, mask=mask)


def _layout(x: Tensor) -> tuple[int, int]:
    """(stride of batch, stride of time) of a time-major [T, B, H] tensor."""
    return x.stride(1), x.stride(0)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x1: Tensor, x2: Tensor, h0: Tensor | None, starts: Tensor | None, gated: bool
    ) -> Tensor:
        length, batch, hidden = x1.shape
        if x1.stride() != x2.stride() or x1.stride(-1) != 1:
            x1, x2 = x1.contiguous(), x2.contiguous()
        out = torch.empty((length, batch, hidden), dtype=torch.float32, device=x1.device)
        starts_arg = starts if starts is not None else out  # unused pointer when HAS_STARTS is False
        h0_arg = h0.contiguous() if h0 is not None else out
        grid = (batch, triton.cdiv(hidden, BLOCK))
        _scan_fwd_kernel[grid](
            x1, x2, h0_arg, starts_arg, out, length, hidden,
            *_layout(x1), *_layout(out),
            *((starts.stride(1), starts.stride(0)) if starts is not None else (0, 0)),
            HAS_H0=h0 is not None, HAS_STARTS=starts is not None, GATED=gated, BLOCK_H=BLOCK, num_warps=1,
        )  # fmt: skip
        ctx.save_for_backward(x1, x2, h0, starts, out)
        ctx.gated = gated
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None, None]:
        x1, x2, h0, starts, out = ctx.saved_tensors
        length, batch, hidden = out.shape
        grad = grad.contiguous().float()
        dx1 = torch.empty_like(out)
        dx2 = torch.empty_like(out)
        dh0 = torch.empty((batch, hidden), dtype=torch.float32, device=out.device) if h0 is not None else None
        placeholder = out
        grid = (batch, triton.cdiv(hidden, BLOCK))
        _scan_bwd_kernel[grid](
            x1, x2, h0.contiguous() if h0 is not None else placeholder,
            starts if starts is not None else placeholder, out, grad, dx1, dx2,
            dh0 if dh0 is not None else placeholder, length, hidden,
            *_layout(x1), *_layout(out),
            *((starts.stride(1), starts.stride(0)) if starts is not None else (0, 0)),
            HAS_H0=h0 is not None, HAS_STARTS=starts is not None, GATED=ctx.gated, BLOCK_H=BLOCK, num_warps=1,
        )  # fmt: skip
        return dx1.to(x1.dtype), dx2.to(x2.dtype), dh0, None, None


def triton_scan_tm(
    x1: Tensor, x2: Tensor, h0: Tensor | None, starts_tm: Tensor | None, gated: bool
) -> Tensor:
    """Time-major fused scan. gated: x1 = k, x2 = p; else x1 = a, x2 = b. [T, B, H] -> h [T, B, H] fp32.

    h0: [B, H] or None; starts_tm: [T, B] bool or None. Inputs may be fp32/bf16/fp16 (fp32 inside).
    """
    starts = None if starts_tm is None else starts_tm.to(torch.int8)
    if h0 is not None:
        h0 = h0.float()
    return _TritonScan.apply(x1, x2, h0, starts, gated)
