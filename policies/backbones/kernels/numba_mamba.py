"""Mamba's selective scan as compiled CPU kernels (numba): one forward pass, one backward pass.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t     (h_{-1} = h0; h_{t-1} := 0 at an episode start)
    y_t = C_t . h_t + D * x_t

Shapes (batch first): x, delta [B, T, E]; A [E, N]; B, C [B, T, N]; D [E]; h0 [B, E, N] -> y [B, T, E],
h_T [B, E, N]. E = expand * d_model, N = d_state.

mambapy's parallel scan materializes several [B, T, E, N] tensors (exp(delta A), delta B x, the
states, and its up/down-sweep temporaries) and walks them log2(T) times; on a CPU that is memory
traffic, not arithmetic. Here the state of one batch row ([N, E], 16 KiB at E=256, N=16) stays in
cache while the kernel walks time once, the inner loop running over E so that LLVM vectorizes it.

Backward recomputes instead of storing states: the forward keeps the state at the start of every
CHUNK steps ([B, T/CHUNK, N, E]); the backward, per batch row and chunk (last first), recomputes that
chunk's states and decays into a small buffer that stays in cache, then runs the reverse recurrence
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}           (0 across an episode start)
accumulating every gradient in the same pass.

exp is the one transcendental, and most of the cost: the decay is computed as 2^(delta_t A / ln 2)
with A / ln 2 prepared once, by `fast_exp2` (a degree-6 polynomial, 1-2 ulp, 17% faster than an exp
with its own range reduction) for fp32, which LLVM vectorizes (libm's exp is a scalar call, 6x
slower); libm's exp for fp64 (exact tests). `fast_exp` is the natural exp for the other kernels.

fastmath without `nnan`/`ninf`: NaN and inf propagate as in torch, so a NaN input shows as a NaN output.
Compiled on first use per dtype (a few seconds), then cached on disk (numba `cache=True`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from torch import Tensor

from .numba_rows import row_chunks, run_parallel

# Reassociation lets LLVM vectorize the reductions over E; no nnan/ninf (see the docstring).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# error_model="numpy": a float division by zero gives inf/NaN as in torch, not a ZeroDivisionError
# (Python's model checks every division, which also stops LLVM vectorizing the loop).
# nogil: row ranges of a batch run in parallel Python threads (numba_rows.py).
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True}
# Steps between the states the forward keeps for the backward. The backward's per-chunk buffers,
# 2 * CHUNK * N * E values (256 KiB at N=16, E=256), stay in the L2 cache.
CHUNK = 8

# --------------------------------------------------------------------------- fp32 exp
_LOG2E = np.float32(1.4426950408889634)
_LN2 = math.log(2.0)  # fp64, for the fp64 kernels
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = HI + LO, HI exact
_EXP_POLY = tuple(
    np.float32(c)
    for c in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
_LOWEST, _HIGHEST = np.float32(-87.0), np.float32(88.0)  # exp stays a normal fp32 number in between
_HALF, _ONE, _ZERO, _INF = np.float32(0.5), np.float32(1.0), np.float32(0.0), np.float32(np.inf)
_EXP_BIAS, _MANTISSA_BITS = np.int32(127), np.int32(23)
# 2^f on [-1/2, 1/2]: a least-squares fit in relative error (max 1.04e-7 in fp32 Horner), constant first.
_EXP2_POLY = tuple(
    np.float32(c)
    for c in (
        1.0,
        0.6931471824645996,
        0.24022647738456726,
        0.055503424257040024,
        0.009618490934371948,
        0.0013394701527431607,
        0.00015332507609855384,
    )
)
_EXP2_LOWEST, _EXP2_HIGHEST = np.float32(-126.0), np.float32(127.0)  # the normal fp32 exponents


@intrinsic
def _float32_from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
    """Reinterpret the low 32 bits of an integer as an fp32 (builds 2^k from k)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(**JIT)
def fast_exp(v: np.float32) -> np.float32:
    """exp(v) for fp32, within 2.5e-7 relative; exactly 0 below -87 (and for -inf), inf above 88, NaN for NaN.

    exp(v) = 2^k exp(r), k = round(v / ln 2), |r| <= ln(2) / 2, exp(r) by a degree-7 polynomial.
    Branch free (selects), so a loop calling it vectorizes."""
    c = min(max(v, _LOWEST), _HIGHEST)
    k = np.floor(c * _LOG2E + _HALF)
    r = c - k * _LN2_HI - k * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_POLY
    p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    p = p * r * r + r + _ONE
    out = p * _float32_from_bits((np.int32(k) + _EXP_BIAS) << _MANTISSA_BITS)
    out = _ZERO if v < _LOWEST else out
    out = _INF if v > _HIGHEST else out
    return out if v == v else v


@njit(**JIT)
def fast_exp2(v: np.float32) -> np.float32:
    """2^v for fp32, within 1.1e-7 relative for v in [-126, 127]; saturates outside (2^-126 below, for -inf
    too, ~2^127 above), NaN for NaN. 2^v = 2^k 2^f, k = round(v), |f| <= 1/2, 2^f by a polynomial.
    Branch free, so a loop calling it vectorizes. The scan's decays are in (0, 1]: only the lower end matters."""
    c = min(max(v, _EXP2_LOWEST), _EXP2_HIGHEST)
    k = np.floor(c + _HALF)
    f = c - k
    p0, p1, p2, p3, p4, p5, p6 = _EXP2_POLY
    p = p0 + f * (p1 + f * (p2 + f * (p3 + f * (p4 + f * (p5 + f * p6)))))
    out = p * _float32_from_bits((np.int32(k) + _EXP_BIAS) << _MANTISSA_BITS)
    return out if v == v else v


def _exp2(v):  # type: ignore[no-untyped-def]
    """2^v in the kernels' dtype: `fast_exp2` for fp32, libm's exp for fp64 (see the overload)."""
    return math.exp(v * math.log(2.0))


@overload(_exp2, jit_options=JIT)
def _exp2_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        return lambda v: fast_exp2(v)
    return lambda v: math.exp(v * _LN2)


def _exp(v):  # type: ignore[no-untyped-def]
    """exp of one value in the kernels' dtype: `fast_exp` for fp32, libm for fp64 (see the overload)."""
    return math.exp(v)


@overload(_exp, jit_options=JIT)
def _exp_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        return lambda v: fast_exp(v)
    return lambda v: math.exp(v)


def _sigmoid(v):  # type: ignore[no-untyped-def]
    """1 / (1 + exp(-v)) in the kernels' dtype (a Python 1.0 would turn fp32 math into fp64)."""
    return 1.0 / (1.0 + math.exp(-v))


@overload(_sigmoid, jit_options=JIT)
def _sigmoid_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        return lambda v: _ONE / (_ONE + fast_exp(-v))
    return lambda v: 1.0 / (1.0 + math.exp(-v))


# --------------------------------------------------------------------------- forward
@njit(**JIT)
def scan_forward(
    a2: np.ndarray,
    d: np.ndarray,
    x: np.ndarray,
    delta: np.ndarray,
    b_in: np.ndarray,
    c_in: np.ndarray,
    h0: np.ndarray,
    starts: np.ndarray,
    y: np.ndarray,
    h_last: np.ndarray,
    ckpt: np.ndarray,
) -> None:
    """a2 = A^T / ln 2 [N, E] (exp(delta A) = 2^(delta a2)); d [E]; then per row: x, delta [B, T, E];
    b_in, c_in [B, T, N]; h0 [B, N, E]; starts [B, T] bool.

    Writes y [B, T, E], h_last [B, N, E] and, unless ckpt has 0 rows, ckpt[b, i] = the state before
    step i * CHUNK (before that step's reset) [B, ceil(T / CHUNK), N, E]."""
    batch, length, inner = x.shape
    n_state = a2.shape[0]
    save = ckpt.shape[0] > 0
    h = np.empty((n_state, inner), dtype=x.dtype)
    dbx = np.empty(inner, dtype=x.dtype)  # delta_t * x_t
    acc = np.empty(inner, dtype=x.dtype)  # y_t
    for b in range(batch):
        h[:, :] = h0[b]
        for t in range(length):
            if save and t % CHUNK == 0:
                ckpt[b, t // CHUNK] = h
            if starts[b, t]:
                h[:, :] = 0.0
            for e in range(inner):
                dbx[e] = delta[b, t, e] * x[b, t, e]
                acc[e] = d[e] * x[b, t, e]
            for n in range(n_state):
                bn, cn = b_in[b, t, n], c_in[b, t, n]
                for e in range(inner):
                    hv = _exp2(delta[b, t, e] * a2[n, e]) * h[n, e] + dbx[e] * bn
                    h[n, e] = hv
                    acc[e] += cn * hv
            y[b, t] = acc
        h_last[b] = h


# --------------------------------------------------------------------------- backward
@njit(**JIT)
def _recompute_chunk(
    b: int,
    t0: int,
    t1: int,
    x: np.ndarray,
    delta: np.ndarray,
    a2: np.ndarray,
    b_in: np.ndarray,
    starts: np.ndarray,
    h_init: np.ndarray,
    zeros: np.ndarray,
    hs: np.ndarray,
    decay: np.ndarray,
) -> None:
    """The states hs[i] = h_{t0+i} and decays decay[i] = exp(delta A) of steps t0..t1-1 of row b,
    from h_init = the state before t0 (as the forward kept it)."""
    inner = x.shape[2]
    n_state = a2.shape[0]
    for t in range(t0, t1):
        i = t - t0
        prev = zeros if starts[b, t] else (h_init if i == 0 else hs[i - 1])
        for n in range(n_state):
            bn = b_in[b, t, n]
            for e in range(inner):
                dl = delta[b, t, e]
                a = _exp2(dl * a2[n, e])
                decay[i, n, e] = a
                hs[i, n, e] = a * prev[n, e] + dl * x[b, t, e] * bn


@njit(**JIT)
def scan_backward(
    a_t: np.ndarray,
    a2: np.ndarray,
    d: np.ndarray,
    x: np.ndarray,
    delta: np.ndarray,
    b_in: np.ndarray,
    c_in: np.ndarray,
    starts: np.ndarray,
    ckpt: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    ddelta: np.ndarray,
    db: np.ndarray,
    dc: np.ndarray,
    carry: np.ndarray,
    da_t: np.ndarray,
    dd: np.ndarray,
) -> None:
    """Gradients of `scan_forward`. Inputs as there, ckpt from it, dy [B, T, E]; carry [B, N, E] holds
    d h_last on entry and d h0 on return. Writes dx, ddelta [B, T, E], db, dc [B, T, N]; da_t [N, E]
    (d A^T) and dd [E] are summed over rows and steps (zero them first)."""
    batch, length, inner = x.shape
    n_state = a_t.shape[0]
    dtype = x.dtype
    hs = np.empty((CHUNK, n_state, inner), dtype=dtype)
    decay = np.empty((CHUNK, n_state, inner), dtype=dtype)
    zeros = np.zeros((n_state, inner), dtype=dtype)
    dbx = np.empty(inner, dtype=dtype)  # delta_t * x_t
    sbg = np.empty(inner, dtype=dtype)  # sum_n B_t[n] g_t[n, :]
    dda = np.empty(inner, dtype=dtype)  # sum_n g_t h_{t-1} exp(delta A) A
    for b in range(batch):
        g_next = carry[b]  # a view: updated in place, ends as d h0
        for chunk in range((length + CHUNK - 1) // CHUNK - 1, -1, -1):
            t0 = chunk * CHUNK
            t1 = min(length, t0 + CHUNK)
            h_init = ckpt[b, chunk]
            _recompute_chunk(b, t0, t1, x, delta, a2, b_in, starts, h_init, zeros, hs, decay)
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                prev = zeros if starts[b, t] else (h_init if i == 0 else hs[i - 1])
                for e in range(inner):
                    dbx[e] = delta[b, t, e] * x[b, t, e]
                    sbg[e] = 0.0
                    dda[e] = 0.0
                for n in range(n_state):
                    bn, cn = b_in[b, t, n], c_in[b, t, n]
                    dcn = dbn = zeros[0, 0]  # 0 in the kernel's dtype: fp32 sums stay fp32
                    for e in range(inner):
                        gy = dy[b, t, e]
                        g = gy * cn + g_next[n, e]  # d h_t: through y_t and through h_{t+1}
                        dcn += gy * hs[i, n, e]
                        dbn += dbx[e] * g
                        sbg[e] += bn * g
                        gha = g * prev[n, e] * decay[i, n, e]  # d (delta_t A) of the decay
                        dda[e] += gha * a_t[n, e]
                        da_t[n, e] += gha * delta[b, t, e]
                        g_next[n, e] = g * decay[i, n, e]
                    dc[b, t, n] = dcn
                    db[b, t, n] = dbn
                if starts[b, t]:
                    g_next[:, :] = 0.0  # nothing flows back across an episode start
                for e in range(inner):
                    gy = dy[b, t, e]
                    dx[b, t, e] = d[e] * gy + delta[b, t, e] * sbg[e]
                    ddelta[b, t, e] = x[b, t, e] * sbg[e] + dda[e]
                    dd[e] += gy * x[b, t, e]


# --------------------------------------------------------------------------- autograd
class NumbaSelectiveScan(torch.autograd.Function):
    """x, delta [B, T, E]; A [E, N]; B, C [B, T, N]; D [E]; h0 [B, E, N] (one float dtype, fp32 or fp64,
    CPU); starts [B, T] bool -> (y [B, T, E], h_T [B, E, N]). Callers check shapes (`selective_scan`).
    Row ranges of the batch run in parallel threads (numba_rows.py)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        delta: Tensor,
        a: Tensor,
        b: Tensor,
        c: Tensor,
        d: Tensor,
        h0: Tensor,
        starts: Tensor,
    ) -> tuple[Tensor, Tensor]:
        xk, deltak, a_t, bk, ck, dk, startsk = _kernel_layout(x, delta, a, b, c, d, starts)
        h_last = h0.detach().transpose(1, 2).contiguous()  # [B, N, E]; h0 on entry, h_T on return
        batch, length, inner = xk.shape
        n_state = a_t.shape[0]
        # No backward to come (no_grad, inference): no checkpoints.
        rows = batch if any(ctx.needs_input_grad) else 0
        ckpt = xk.new_empty((rows, -(-length // CHUNK), n_state, inner))
        y = torch.empty_like(xk)
        per_row = [t.numpy() for t in (xk, deltak, bk, ck, h_last, startsk, y, h_last, ckpt)]
        shared = ((a_t / math.log(2.0)).numpy(), dk.numpy())
        chunks = row_chunks(batch, length * inner * n_state)
        run_parallel([partial(scan_forward, *shared, *(t[r] for t in per_row)) for r in chunks])
        # The inputs themselves, not detached copies: a double backward differentiates through them.
        ctx.save_for_backward(x, delta, a, b, c, d, h0, starts, ckpt)
        return y, h_last.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_last: Tensor) -> tuple[Tensor | None, ...]:
        x, delta, a, b, c, d, h0, starts, ckpt = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): the kernel's backward is not differentiable, the
            # loop reference's is. Same gradients.
            from .selective_scan import selective_scan_loop

            inputs = (x, delta, a, b, c, d, h0)
            return reference_backward(ctx, selective_scan_loop, inputs, (starts,), (dy, dh_last))
        xk, deltak, a_t, bk, ck, dk, startsk = _kernel_layout(x, delta, a, b, c, d, starts)
        batch, length, inner = xk.shape
        chunks = row_chunks(batch, length * inner * a_t.shape[0])
        dx, ddelta = torch.empty_like(xk), torch.empty_like(xk)
        db, dc = torch.empty_like(bk), torch.empty_like(ck)
        carry = dh_last.transpose(1, 2).contiguous().clone()  # [B, N, E]: d h_T in, d h0 out
        # Summed over rows: one partial sum per row range, added up after.
        da_t, dd = a_t.new_zeros((len(chunks), *a_t.shape)), dk.new_zeros((len(chunks), *dk.shape))
        inputs = (xk, deltak, bk, ck, startsk, ckpt, dy.contiguous())
        per_row = [t.numpy() for t in (*inputs, dx, ddelta, db, dc, carry)]
        shared = (a_t.numpy(), (a_t / math.log(2.0)).numpy(), dk.numpy())
        sums = (da_t.numpy(), dd.numpy())
        run_parallel(
            [
                partial(scan_backward, *shared, *(t[r] for t in per_row), *(t[i] for t in sums))
                for i, r in enumerate(chunks)
            ]
        )
        return dx, ddelta, da_t.sum(0).t(), db, dc, dd.sum(0), carry.transpose(1, 2), None


def _kernel_layout(*tensors: Tensor) -> tuple[Tensor, ...]:
    """x, delta, A, B, C, D, starts -> detached and contiguous, A transposed to [N, E]."""
    x, delta, a, b, c, d, starts = (t.detach() for t in tensors)
    return (
        x.contiguous(),
        delta.contiguous(),
        a.t().contiguous(),
        b.contiguous(),
        c.contiguous(),
        d.contiguous(),
        starts.contiguous(),
    )


def reference_backward(
    ctx: Any,
    reference: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    extra: tuple[Tensor, ...],
    grads: tuple[Tensor, ...],
) -> tuple[Tensor | None, ...]:
    """A kernel Function's backward when create_graph=True: gradients by autograd through the torch
    `reference(*inputs, *extra)` (the same function), kept differentiable. `extra` get no gradient."""
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i]]
    with torch.enable_grad():
        outputs = reference(*inputs, *extra)
        got = torch.autograd.grad(
            outputs, [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True
        )
    result: list[Tensor | None] = [None] * (len(inputs) + len(extra))
    for i, grad in zip(wanted, got, strict=True):
        result[i] = grad
    return tuple(result)
