"""Mamba's selective scan as compiled CPU kernels (numba): one forward pass, one backward pass.

    delta_t = dt_t @ W^T                                        (when a delta_weight W [E, R] is given)
    delta_t = softplus(delta_t + delta_bias)                   (when a delta_bias is given)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t     (h_{-1} = h0; h_{t-1} := 0 at an episode start)
    y_t = (C_t . h_t + D * x_t) * silu(z_t)                    (the gate when z is given)

Shapes (batch first): x, delta, z [B, T, E]; A [E, N]; B, C [B, T, N]; D, delta_bias [E]; h0 [B, E, N]
-> y [B, T, E], h_T [B, E, N]. E = expand * d_model, N = d_state. The softplus and the gate are fused
as in mamba_ssm's CUDA kernel: on a CPU each would otherwise be a few passes over a [B, T, E] tensor.
So is Mamba's dt_proj (as mamba_ssm's mamba_inner_fn takes it): with a delta_weight, delta is the
rank-R input dt [B, T, R] (R = dt_rank, e.g. 4) and the kernel forms dt_t @ W^T per step. On a CPU
MKL's products with an R-wide side are slow (~0.3 ms a layer at DT's sizes, forward and backward),
where the kernel's R multiply-adds per element are not.

mambapy's parallel scan materializes several [B, T, E, N] tensors (exp(delta A), delta B x, the
states, and its up/down-sweep temporaries) and walks them log2(T) times; on a CPU that is memory
traffic, not arithmetic. Here the state of one batch row ([N, E], 16 KiB at E=256, N=16) stays in
cache while the kernel walks time once, the inner loop running over E so that LLVM vectorizes it.

Backward recomputes instead of storing states: the forward keeps the state at the start of every
CHUNK steps ([B, T/CHUNK, N, E]); the backward, per batch row and chunk (last first), recomputes that
chunk's states and decays into a small buffer that stays in cache, then runs the reverse recurrence
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}           (0 across an episode start)
accumulating every gradient in the same pass. (Storing every state and decay instead measured 1.5x
slower at DT's sizes: the memory traffic costs more than the recompute.)

exp is the one transcendental, and most of the cost: the decay is computed as 2^(delta_t A / ln 2)
with A / ln 2 prepared once, by numba_math's vectorized fp32 exp2 (17% faster than an exp with its
own range reduction); libm for fp64 (exact tests). Compiled on first use per dtype (a few seconds),
then cached on disk (numba `cache=True`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .numba_math import JIT, exp2, silu, silu_grad, softplus, softplus_grad
from .numba_rows import row_calls, row_chunks, run_parallel

# Steps between the states the forward keeps for the backward. The backward's per-chunk buffers,
# 2 * CHUNK * N * E values (256 KiB at N=16, E=256), stay in the L2 cache.
CHUNK = 8


@njit(**JIT)
def _step_inputs(
    b: int,
    t: int,
    delta: np.ndarray,
    w_t: np.ndarray,
    bias: np.ndarray,
    fuse_softplus: bool,
    dl: np.ndarray,
) -> None:
    """dl = the step size of step t of row b [E]: `_pre_step`, softplus'd when fuse_softplus."""
    _pre_step(b, t, delta, w_t, bias, dl)
    if fuse_softplus:
        for e in range(dl.shape[0]):
            dl[e] = softplus(dl[e])


@njit(**JIT)
def _pre_step(b: int, t: int, delta: np.ndarray, w_t: np.ndarray, bias: np.ndarray, dl: np.ndarray) -> None:
    """dl = delta[b, t] + bias, or delta[b, t] @ w_t + bias when w_t [R, E] has rows (delta then [B, T, R])."""
    rank, inner = w_t.shape
    if rank == 0:
        for e in range(inner):
            dl[e] = delta[b, t, e] + bias[e]
    else:
        dl[:] = bias
        for r in range(rank):
            v = delta[b, t, r]
            for e in range(inner):
                dl[e] += v * w_t[r, e]


@njit(**JIT, inline="always")  # numba-level inlining: a call per state row would stop LLVM vectorizing
def _advance_state(
    a2_n: np.ndarray,
    dl: np.ndarray,
    dbx: np.ndarray,
    bn: float,
    prev_n: np.ndarray,
    h_n: np.ndarray,
    decay_n: np.ndarray,
) -> None:
    """One step of state row n over E (the forward's and the backward's recompute's one recurrence):
    decay_n = exp(delta_t A[:, n]) = 2^(delta_t a2_n), h_n = decay_n * prev_n + delta_t x_t B_t[n].
    dbx = delta_t * x_t [E]; prev_n may be h_n itself (the update is elementwise)."""
    for e in range(dl.shape[0]):
        a = exp2(dl[e] * a2_n[e])
        decay_n[e] = a
        h_n[e] = a * prev_n[e] + dbx[e] * bn


# --------------------------------------------------------------------------- forward
@njit(**JIT)
def scan_forward(
    a2: np.ndarray,
    d: np.ndarray,
    w_t: np.ndarray,
    bias: np.ndarray,
    fuse_softplus: bool,
    gate: bool,
    x: np.ndarray,
    delta: np.ndarray,
    z: np.ndarray,
    b_in: np.ndarray,
    c_in: np.ndarray,
    h0: np.ndarray,
    starts: np.ndarray,
    y: np.ndarray,
    h_last: np.ndarray,
    ckpt: np.ndarray,
) -> None:
    """a2 = A^T / ln 2 [N, E] (exp(delta A) = 2^(delta a2)); d, bias [E] (bias: 0 without softplus); w_t
    = delta_weight^T [R, E] (0 rows: none); then per row: x, z (x when not gated) [B, T, E]; delta [B, T,
    E] ([B, T, R] with a w_t); b_in, c_in [B, T, N]; h0 [B, N, E]; starts [B, T].

    Writes y [B, T, E], h_last [B, N, E] and, unless ckpt has 0 rows, ckpt[b, i] = the state before
    step i * CHUNK (before that step's reset) [B, ceil(T / CHUNK), N, E]."""
    batch, length, inner = x.shape
    n_state = a2.shape[0]
    save = ckpt.shape[0] > 0
    h = np.empty((n_state, inner), dtype=x.dtype)
    dl = np.empty(inner, dtype=x.dtype)  # delta_t
    dbx = np.empty(inner, dtype=x.dtype)  # delta_t * x_t
    acc = np.empty(inner, dtype=x.dtype)  # y_t before the gate
    for b in range(batch):
        h[:, :] = h0[b]
        for t in range(length):
            if save and t % CHUNK == 0:
                ckpt[b, t // CHUNK] = h
            if starts[b, t]:
                h[:, :] = 0.0
            _step_inputs(b, t, delta, w_t, bias, fuse_softplus, dl)
            for e in range(inner):
                dbx[e] = dl[e] * x[b, t, e]
                acc[e] = d[e] * x[b, t, e]
            for n in range(n_state):
                # `_advance_state` without storing the decay (only the backward's recompute keeps it).
                a2_n, h_n, bn = a2[n], h[n], b_in[b, t, n]
                for e in range(inner):
                    h_n[e] = exp2(dl[e] * a2_n[e]) * h_n[e] + dbx[e] * bn
                cn = c_in[b, t, n]
                for e in range(inner):
                    acc[e] += cn * h[n, e]
            for e in range(inner):
                y[b, t, e] = acc[e] * silu(z[b, t, e]) if gate else acc[e]
        h_last[b] = h


# --------------------------------------------------------------------------- backward
@njit(**JIT)
def _recompute_chunk(
    b: int,
    t0: int,
    t1: int,
    x: np.ndarray,
    delta: np.ndarray,
    w_t: np.ndarray,
    bias: np.ndarray,
    fuse_softplus: bool,
    a2: np.ndarray,
    b_in: np.ndarray,
    starts: np.ndarray,
    h_init: np.ndarray,
    zeros: np.ndarray,
    dls: np.ndarray,
    dbx: np.ndarray,
    hs: np.ndarray,
    decay: np.ndarray,
) -> None:
    """The states hs[i] = h_{t0+i}, decays decay[i] = exp(delta A) and step sizes dls[i] = delta_t [E] of
    steps t0..t1-1 of row b, from h_init = the state before t0 (as the forward kept it). dbx: scratch [E]."""
    inner = x.shape[2]
    n_state = a2.shape[0]
    for t in range(t0, t1):
        i = t - t0
        prev = zeros if starts[b, t] else (h_init if i == 0 else hs[i - 1])
        dl = dls[i]
        _step_inputs(b, t, delta, w_t, bias, fuse_softplus, dl)
        for e in range(inner):
            dbx[e] = dl[e] * x[b, t, e]
        for n in range(n_state):
            _advance_state(a2[n], dl, dbx, b_in[b, t, n], prev[n], hs[i, n], decay[i, n])


@njit(**JIT)
def scan_backward(
    a_t: np.ndarray,
    a2: np.ndarray,
    d: np.ndarray,
    w_t: np.ndarray,
    bias: np.ndarray,
    fuse_softplus: bool,
    gate: bool,
    x: np.ndarray,
    delta: np.ndarray,
    z: np.ndarray,
    b_in: np.ndarray,
    c_in: np.ndarray,
    starts: np.ndarray,
    ckpt: np.ndarray,
    dout: np.ndarray,
    dx: np.ndarray,
    ddelta: np.ndarray,
    dz: np.ndarray,
    db: np.ndarray,
    dc: np.ndarray,
    carry: np.ndarray,
    da_t: np.ndarray,
    dd: np.ndarray,
    dbias: np.ndarray,
    dw_t: np.ndarray,
) -> None:
    """Gradients of `scan_forward`. Inputs as there, ckpt from it, dout [B, T, E]; carry [B, N, E] holds
    d h_last on entry and d h0 on return. Writes dx, dz (when gated) [B, T, E], ddelta (delta's shape), db,
    dc [B, T, N]; da_t [N, E] (d A^T), dd and dbias [E] and dw_t [R, E] (with a w_t) are summed over rows
    and steps (zero them first).

    Longer than the ~80-line guideline on purpose: the per-step body below is the hot loop, and it reads
    or writes over twenty of these arrays plus the scratch rows, so a helper for it would take about 30
    arguments a call and would need numba-level inlining (`inline="always"`, as `_advance_state`) to keep
    LLVM vectorizing the inner loops. The parts that split cleanly (`_recompute_chunk`, `_step_inputs`)
    already are helpers."""
    batch, length, inner = x.shape
    n_state = a_t.shape[0]
    dtype = x.dtype
    hs = np.empty((CHUNK, n_state, inner), dtype=dtype)
    decay = np.empty((CHUNK, n_state, inner), dtype=dtype)
    zeros = np.zeros((n_state, inner), dtype=dtype)
    dls = np.empty((CHUNK, inner), dtype=dtype)  # delta_t of the chunk's steps
    dbx = np.empty(inner, dtype=dtype)  # delta_t * x_t
    dy = np.empty(inner, dtype=dtype)  # d y_t before the gate
    y = np.empty(inner, dtype=dtype)  # y_t before the gate (for dz)
    sbg = np.empty(inner, dtype=dtype)  # sum_n B_t[n] g_t[n, :]
    dda = np.empty(inner, dtype=dtype)  # sum_n g_t h_{t-1} exp(delta A) A
    for b in range(batch):
        g_next = carry[b]  # a view: updated in place, ends as d h0
        for chunk in range((length + CHUNK - 1) // CHUNK - 1, -1, -1):
            t0 = chunk * CHUNK
            t1 = min(length, t0 + CHUNK)
            h_init = ckpt[b, chunk]
            inputs = (x, delta, w_t, bias, fuse_softplus, a2, b_in, starts)
            _recompute_chunk(b, t0, t1, *inputs, h_init, zeros, dls, dbx, hs, decay)
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                prev = zeros if starts[b, t] else (h_init if i == 0 else hs[i - 1])
                dl = dls[i]  # delta_t, as the recompute left it
                # The per-step loops over E each touch only a few arrays: with more, LLVM's runtime
                # alias checks exceed its limit and it leaves the loop scalar (measured 1.2 ms of a
                # 5.6 ms backward at DT's sizes went to two such loops).
                if gate:
                    for e in range(inner):
                        dy[e] = dout[b, t, e] * silu(z[b, t, e])
                else:
                    dy[:] = dout[b, t]
                for e in range(inner):
                    dbx[e] = dl[e] * x[b, t, e]
                    y[e] = d[e] * x[b, t, e]
                sbg[:] = 0.0
                dda[:] = 0.0
                for n in range(n_state):
                    bn, cn = b_in[b, t, n], c_in[b, t, n]
                    dcn = dbn = zeros[0, 0]  # 0 in the kernel's dtype: fp32 sums stay fp32
                    for e in range(inner):
                        g = dy[e] * cn + g_next[n, e]  # d h_t: through y_t and through h_{t+1}
                        ht = hs[i, n, e]
                        y[e] += cn * ht
                        dcn += dy[e] * ht
                        dbn += dbx[e] * g
                        sbg[e] += bn * g
                        gha = g * prev[n, e] * decay[i, n, e]  # d (delta_t A) of the decay
                        dda[e] += gha * a_t[n, e]
                        da_t[n, e] += gha * dl[e]
                        g_next[n, e] = g * decay[i, n, e]
                    dc[b, t, n] = dcn
                    db[b, t, n] = dbn
                if starts[b, t]:
                    g_next[:, :] = 0.0  # nothing flows back across an episode start
                for e in range(inner):
                    dx[b, t, e] = d[e] * dy[e] + dl[e] * sbg[e]
                for e in range(inner):
                    dd[e] += dy[e] * x[b, t, e]
                for e in range(inner):
                    dda[e] += x[b, t, e] * sbg[e]  # now d delta_t
                if fuse_softplus:
                    _pre_step(b, t, delta, w_t, bias, dbx)  # dbx's last use was above: now the pre-softplus
                    for e in range(inner):
                        dda[e] *= softplus_grad(dbx[e])
                for e in range(inner):
                    dbias[e] += dda[e]
                if w_t.shape[0] == 0:
                    ddelta[b, t] = dda
                for r in range(w_t.shape[0]):  # through delta_t = dt_t @ W^T
                    v, acc = delta[b, t, r], zeros[0, 0]
                    for e in range(inner):
                        acc += dda[e] * w_t[r, e]
                        dw_t[r, e] += dda[e] * v
                    ddelta[b, t, r] = acc
                if gate:
                    for e in range(inner):
                        dz[b, t, e] = dout[b, t, e] * y[e] * silu_grad(z[b, t, e])


# --------------------------------------------------------------------------- autograd
class NumbaSelectiveScan(torch.autograd.Function):
    """x [B, T, E]; delta [B, T, E] ([B, T, R] with a delta_weight); A [E, N]; B, C [B, T, N]; D [E]; h0 [B,
    E, N] or None (zeros); z [B, T, E] or None; delta_bias [E] or None; delta_weight [E, R] or None (one
    float dtype, fp32 or fp64, CPU); starts [B, T] bool -> (y [B, T, E], h_T [B, E, N]). Callers check
    shapes (`selective_scan`). Row ranges of the batch run in parallel threads."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        delta: Tensor,
        a: Tensor,
        b: Tensor,
        c: Tensor,
        d: Tensor,
        h0: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        delta_weight: Tensor | None,
        starts: Tensor,
    ) -> tuple[Tensor, Tensor]:
        k = _kernel_layout(x, delta, a, b, c, d, z, delta_bias, delta_weight, starts)
        batch, length, inner = k["x"].shape
        n_state = a.shape[1]
        # [B, N, E]: h0 on entry, h_T on return. A new buffer, never h0's own storage (an h0 passed as a
        # transposed view of a [B, N, E] tensor would make `.contiguous()` return it and be overwritten).
        h_last = x.new_empty((batch, n_state, inner), dtype=k["x"].dtype)
        if h0 is None:  # a fresh start: zeros, without reading a zero tensor transposed
            h_last.zero_()
        else:
            h_last.copy_(h0.detach().transpose(1, 2))
        # No backward to come (no_grad, inference): no checkpoints.
        rows = batch if any(ctx.needs_input_grad) else 0
        ckpt = x.new_empty((rows, -(-length // CHUNK), n_state, inner), dtype=k["x"].dtype)
        y = torch.empty_like(k["x"])
        shared = (k["a2"], k["d"], k["w_t"], k["bias"], delta_bias is not None, z is not None)
        per_row = [k["x"], k["delta"], k["z"], k["b"], k["c"], h_last, k["starts"], y, h_last, ckpt]
        run_parallel(
            row_calls(scan_forward, shared, per_row, (), row_chunks(batch, length * inner * n_state))
        )
        # The inputs themselves, not detached copies: a double backward differentiates through them.
        ctx.save_for_backward(x, delta, a, b, c, d, h0, z, delta_bias, delta_weight, starts, ckpt)
        # Reused by backward rather than rebuilt (~30 us of torch calls; the wrapper costs ~130 us a
        # call at any size). saved_tensors is still unpacked there, so in-place edits still raise.
        ctx.kernel_args = k
        # Unused outputs get None, not a tensor of zeros, in backward (training ignores h_T).
        ctx.set_materialize_grads(False)
        return y, h_last.transpose(1, 2)  # [B, E, N], a view: callers stack or copy it anyway

    @staticmethod
    def backward(ctx: Any, dout: Tensor | None, dh_last: Tensor | None) -> tuple[Tensor | None, ...]:
        x, delta, a, b, c, d, h0, z, delta_bias, delta_weight, starts, ckpt = ctx.saved_tensors
        dout = torch.zeros_like(x) if dout is None else dout
        if torch.is_grad_enabled():
            # create_graph=True (double backward): the kernel's backward is not differentiable, the
            # loop reference's is. Same gradients.
            if h0 is None:
                h0 = x.new_zeros((x.shape[0], x.shape[2], a.shape[1]))
            inputs = (x, delta, a, b, c, d, h0, z, delta_bias, delta_weight)
            dh = torch.zeros_like(h0) if dh_last is None else dh_last
            return reference_backward(ctx, _loop_reference, inputs, (starts,), (dout, dh))
        return _kernel_backward(
            ctx, ctx.kernel_args, ckpt, z is not None, delta_bias is not None, dout, dh_last
        )


def _kernel_backward(
    ctx: Any,
    k: dict[str, Any],
    ckpt: Tensor,
    gated: bool,
    softplus: bool,
    dout: Tensor,
    dh_last: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """`NumbaSelectiveScan.backward` on the compiled kernel: k the forward's `_kernel_layout`, ckpt its
    checkpoints; dout [B, T, E]; dh_last [B, E, N] or None."""
    batch, length, inner = k["x"].shape
    n_state = k["a_t"].shape[0]
    chunks = row_chunks(batch, length * inner * n_state)
    dx, dz = torch.empty_like(k["x"]), torch.empty_like(k["x"])
    ddelta = torch.empty_like(k["delta"])
    db, dc = torch.empty_like(k["b"]), torch.empty_like(k["c"])
    carry = k["x"].new_zeros((batch, n_state, inner))  # [B, N, E]: d h_T in, d h0 out
    if dh_last is not None:
        carry.copy_(dh_last.transpose(1, 2))
    # Summed over rows: one partial sum per row range, added up after.
    sums = [k[name].new_zeros((len(chunks), *k[name].shape)) for name in ("a_t", "d", "d", "w_t")]
    da_t, dd, dbias, dw_t = sums
    shared = (k["a_t"], k["a2"], k["d"], k["w_t"], k["bias"], softplus, gated)
    inputs = [k["x"], k["delta"], k["z"], k["b"], k["c"], k["starts"], ckpt, dout.contiguous()]
    calls = row_calls(scan_backward, shared, [*inputs, dx, ddelta, dz, db, dc, carry], sums, chunks)
    run_parallel(calls)
    wants = ctx.needs_input_grad
    grads = (
        dx,
        ddelta,
        da_t.sum(0).t() if wants[2] else None,
        db,
        dc,
        dd.sum(0) if wants[5] else None,
        carry.transpose(1, 2) if wants[6] else None,
        dz if gated else None,
        dbias.sum(0) if softplus and wants[8] else None,
        dw_t.sum(0).t() if wants[9] else None,
    )
    return (*grads, None)


def _kernel_layout(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    starts: Tensor,
) -> dict[str, Any]:
    """The kernels' arguments: detached, contiguous numpy views; A also as A^T and A^T / ln 2 [N, E],
    delta_weight as w_t [R, E]; x in place of a missing z, zeros in place of a missing delta_bias and a
    [0, E] w_t for a missing delta_weight (the kernels' flags and shapes skip them)."""
    parts = {"x": x, "delta": delta, "b": b, "c": c, "d": d, "starts": starts, "a_t": a.t()}
    parts["a2"] = a.t() / math.log(2.0)
    parts["z"] = x if z is None else z
    parts["bias"] = d.new_zeros(d.shape) if delta_bias is None else delta_bias
    parts["w_t"] = d.new_zeros((0, d.shape[0])) if delta_weight is None else delta_weight.t()
    return {name: t.detach().contiguous() for name, t in parts.items()}


def _loop_reference(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    h0: Tensor,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    starts: Tensor,
) -> tuple[Tensor, Tensor]:
    """`NumbaSelectiveScan`'s arguments through the differentiable loop reference."""
    from .selective_scan import project_delta, selective_scan_loop

    return selective_scan_loop(x, project_delta(delta, delta_weight), a, b, c, d, h0, z, delta_bias, starts)


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
