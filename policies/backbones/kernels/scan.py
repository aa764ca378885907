"""Scans for the first-order linear recurrence h_t = a_t * h_{t-1} + b_t (minGRU / minLSTM).

Two entry points, both batch first:

- `scan(a, b, h0, episode_starts, backend)`: any coefficients a, b `[B, T, H]` -> h `[B, T, H]`.
- `gated_scan(k, p, h0, episode_starts, backend)`: the minGRU/minLSTM form, from pre-activations:
  z_t = sigmoid(k_t), h~_t = g(p_t), h_t = (1 - z_t) * h_{t-1} + z_t * h~_t, so a = 1 - z, b = z * h~.
  g(x) = x + 0.5 for x >= 0, sigmoid(x) otherwise (the paper's g, which keeps h~ > 0).

`episode_starts[b, t]` True means "forget everything before step t": a_t is treated as 0, so h_t = b_t.
`h0` (`[B, H]`, default zeros) is h_{-1}.

Backends (all accumulate in fp32, also under bf16 autocast; outputs are fp32):
- "loop": linear space, a Python loop over time in a custom autograd.Function whose backward is
  the reverse loop (dh_t = g_t + a_{t+1} dh_{t+1}), not a T-node graph. The reference the compiled
  kernels are tested against, and the CPU fallback without numba.
- "log": log-space parallel scan (the paper's Heinsen-style scan: prefix sums of log a and
  log-sum-exp of log b), evaluated as a work-efficient associative (odd/even) scan over log2(T)
  levels. Resets are log a = -inf, which the associative form handles exactly: no NaN, and no
  cancellation of large cumulative sums, so fp32 precision does not degrade with T.
  Needs a >= 0 and b > 0 (always true for the gated form; `scan` checks and raises otherwise).
- "numba": the gated form (minGRU/minLSTM) as one compiled, single-threaded CPU kernel per direction
  (see numba_scan.py). At the sizes the agents train on it is 2-45x faster than "loop" (measured in
  the README); with 2 torch threads the loop can still win on very long sequences (T=4096). The
  generic `scan` has no kernel of its own and runs "loop".
- "triton": fused GPU kernels (see triton_scan.py), CUDA only.
- "auto": triton for CUDA tensors when triton is installed; on CPU numba when installed, else loop.

Internally everything runs time-major (`[T, B, H]`) so each step of the loop touches one
contiguous `[B, H]` slab; the `*_tm` functions are used by the layers, which stay time-major.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_backends import resolve_backend


# --------------------------------------------------------------------------- helpers
def g_activation(x: Tensor) -> Tensor:
    """The paper's g: x + 0.5 for x >= 0, sigmoid(x) otherwise.

    Written as max(x + 0.5, sigmoid(x)): the two branches cross only at x = 0 (x + 0.5 is above
    sigmoid for x > 0 and below it for x < 0), so this is the same function in 3 ops instead of 4.
    """
    return torch.maximum(x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log(g(x)), computed without ever taking the log of a value near 0."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def acc(x: Tensor) -> Tensor:
    """Cast to the accumulation dtype: fp32, or fp64 when the input is fp64 (used by exact tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_inputs(
    name: str, x1: Tensor, x2: Tensor, h0: Tensor | None, episode_starts: Tensor | None
) -> Tensor | None:
    """Validate batch-first [B, T, H] inputs; returns episode_starts as bool (or None)."""
    for label, tensor in (("first", x1), ("second", x2)):
        if not isinstance(tensor, Tensor) or tensor.ndim != 3 or not tensor.is_floating_point():
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{name}: the {label} input must be a float tensor shaped [B, T, H], got {got}")
    if x1.shape != x2.shape:
        raise ValueError(
            f"{name}: inputs must have the same shape [B, T, H], got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    batch, length, hidden = x1.shape
    if h0 is not None and (not isinstance(h0, Tensor) or tuple(h0.shape) != (batch, hidden)):
        got = tuple(h0.shape) if isinstance(h0, Tensor) else type(h0).__name__
        raise ValueError(f"{name}: h0 must be shaped [B, H] = {(batch, hidden)}, got {got}")
    if episode_starts is not None:
        if not isinstance(episode_starts, Tensor) or tuple(episode_starts.shape) != (batch, length):
            got = (
                tuple(episode_starts.shape)
                if isinstance(episode_starts, Tensor)
                else type(episode_starts).__name__
            )
            raise ValueError(
                f"{name}: episode_starts must be shaped [B, T] = {(batch, length)} (bool), got {got}"
            )
        episode_starts = episode_starts.to(torch.bool)
    return episode_starts


def _keep_mask(starts_tm: Tensor | None) -> Tensor | None:
    """[T, B] bool resets -> [T, B, 1] fp32 (1 = keep the carried state, 0 = reset)."""
    return None if starts_tm is None else (~starts_tm).to(torch.float32).unsqueeze(-1).contiguous()


# --------------------------------------------------------------------------- loop backend (CPU)
class _LoopScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over time-major [T, B, H]; a already holds the resets (a_t = 0)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        a, b = a.contiguous(), b.contiguous()
        out = torch.empty_like(b)
        h = h0
        for t in range(a.shape[0]):
            torch.addcmul(b[t], a[t], h, out=out[t])
            h = out[t]
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, out, h0 = ctx.saved_tensors
        length = a.shape[0]
        db = torch.empty_like(out)  # db_t = dh_t, the total gradient reaching h_t
        db[length - 1].copy_(grad[length - 1])
        for t in range(length - 2, -1, -1):
            torch.addcmul(grad[t], a[t + 1], db[t + 1], out=db[t])
        da = torch.empty_like(out)  # da_t = dh_t * h_{t-1}
        torch.mul(db[0], h0, out=da[0])
        torch.mul(db[1:], out[:-1], out=da[1:])
        return da, db, a[0] * db[0]


class _GatedLoopScan(torch.autograd.Function):
    """Fused minGRU recurrence over time-major kp = [k | p] ([T, B, 2H]) -> h [T, B, H].

    Everything per step works on one [B, 2H] slab that stays in cache; the backward recomputes
    sigmoid and g from kp (nothing but h is stored) and loops backwards once.
    """

    @staticmethod
    def forward(ctx: Any, kp: Tensor, h0: Tensor, keep: Tensor | None) -> Tensor:
        kp = kp.contiguous()
        hidden = kp.shape[-1] // 2
        out = kp.new_empty(kp.shape[0], kp.shape[1], hidden)
        h = h0
        for t in range(kp.shape[0]):
            s = torch.sigmoid(kp[t])
            gp = torch.maximum(kp[t, :, hidden:] + 0.5, s[:, hidden:])
            if keep is not None:
                h = h * keep[t]
            torch.lerp(h, gp, s[:, :hidden], out=out[t])
            h = out[t]
        ctx.save_for_backward(kp, out, h0, keep)
        ctx.has_keep = keep is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        kp, out, h0, keep = ctx.saved_tensors
        hidden = kp.shape[-1] // 2
        dkp = torch.empty_like(kp)
        one = torch.ones((), dtype=kp.dtype)
        carry: Tensor | None = None  # a_{t+1} * dh_{t+1}
        for t in range(kp.shape[0] - 1, -1, -1):
            dh = grad[t] if carry is None else grad[t] + carry
            s = torch.sigmoid(kp[t])
            z, p = s[:, :hidden], kp[t, :, hidden:]
            gp = torch.maximum(p + 0.5, s[:, hidden:])
            h_prev = out[t - 1] if t > 0 else h0
            if ctx.has_keep:
                h_prev = h_prev * keep[t]
            ds = torch.addcmul(s, s, s, value=-1.0)  # sigmoid' = s (1 - s), for both halves
            # dk = dh * (h~ - h_prev) * z (1 - z)
            torch.mul(torch.sub(gp, h_prev).mul_(dh), ds[:, :hidden], out=dkp[t, :, :hidden])
            # dp = dh * z * g'(p), g' = 1 for p >= 0 else sigmoid'(p)
            dgp = dh * z
            torch.mul(dgp, torch.where(p >= 0, one, ds[:, hidden:]), out=dkp[t, :, hidden:])
            carry = dh - dgp  # dh * (1 - z)
            if ctx.has_keep:
                carry = carry * keep[t]
        return dkp, carry, None


class _MinLSTMLoopScan(torch.autograd.Function):
    """Fused minLSTM recurrence over time-major pre = [pre_f | pre_i | p] ([T, B, 3H]) -> h [T, B, H].

    z = i' = sigmoid(logsigmoid(pre_i) - logsigmoid(pre_f)) (see `minlstm_gate_logit`), then as minGRU.
    Computing the gate logit per step avoids four full-size temporaries and a concatenation.
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, h0: Tensor, keep: Tensor | None) -> Tensor:
        pre = pre.contiguous()
        hidden = pre.shape[-1] // 3
        out = pre.new_empty(pre.shape[0], pre.shape[1], hidden)
        h = h0
        for t in range(pre.shape[0]):
            log_fi = F.logsigmoid(pre[t, :, : 2 * hidden])
            z = torch.sigmoid(log_fi[:, hidden:] - log_fi[:, :hidden])
            p = pre[t, :, 2 * hidden :]
            gp = torch.maximum(p + 0.5, torch.sigmoid(p))
            if keep is not None:
                h = h * keep[t]
            torch.lerp(h, gp, z, out=out[t])
            h = out[t]
        ctx.save_for_backward(pre, out, h0, keep)
        ctx.has_keep = keep is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, out, h0, keep = ctx.saved_tensors
        batch, hidden = pre.shape[1], pre.shape[-1] // 3
        dpre = torch.empty_like(pre)
        one = torch.ones((), dtype=pre.dtype)
        carry: Tensor | None = None  # a_{t+1} * dh_{t+1}
        for t in range(pre.shape[0] - 1, -1, -1):
            dh = grad[t] if carry is None else grad[t] + carry
            fi = pre[t, :, : 2 * hidden]
            log_fi = F.logsigmoid(fi)
            z = torch.sigmoid(log_fi[:, hidden:] - log_fi[:, :hidden])
            p = pre[t, :, 2 * hidden :]
            sp = torch.sigmoid(p)
            gp = torch.maximum(p + 0.5, sp)
            h_prev = out[t - 1] if t > 0 else h0
            if ctx.has_keep:
                h_prev = h_prev * keep[t]
            # dk = dh (h~ - h_prev) z (1 - z); k = logsigmoid(pre_i) - logsigmoid(pre_f), and
            # d logsigmoid(x) / dx = sigmoid(-x): d pre_i = dk sigmoid(-pre_i), d pre_f = -dk sigmoid(-pre_f)
            dk = torch.sub(gp, h_prev).mul_(dh).mul_(z - z * z)
            torch.mul(torch.sigmoid(fi.neg()).view(batch, 2, hidden), dk.unsqueeze(1),
                      out=dpre[t, :, : 2 * hidden].view(batch, 2, hidden))  # fmt: skip
            dpre[t, :, :hidden].neg_()
            dgp = dh * z
            torch.mul(dgp, torch.where(p >= 0, one, sp - sp * sp), out=dpre[t, :, 2 * hidden :])
            carry = dh - dgp  # dh * (1 - z)
            if ctx.has_keep:
                carry = carry * keep[t]
        return dpre, carry, None


def _loop_scan_tm(a: Tensor, b: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    a, b = acc(a), acc(b)
    keep = _keep_mask(starts_tm)
    if keep is not None:
        a = a * keep.to(a.dtype)
    h0 = torch.zeros_like(b[0]) if h0 is None else h0.to(b.dtype)
    return _LoopScan.apply(a, b, h0)


def _gated_loop_tm(kp: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    kp = acc(kp)
    h0 = kp.new_zeros(kp.shape[1], kp.shape[2] // 2) if h0 is None else h0.to(kp.dtype)
    keep = _keep_mask(starts_tm)
    return _GatedLoopScan.apply(kp, h0, None if keep is None else keep.to(kp.dtype))


def _minlstm_loop_tm(pre: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    pre = acc(pre)
    h0 = pre.new_zeros(pre.shape[1], pre.shape[2] // 3) if h0 is None else h0.to(pre.dtype)
    keep = _keep_mask(starts_tm)
    return _MinLSTMLoopScan.apply(pre, h0, None if keep is None else keep.to(pre.dtype))


# --------------------------------------------------------------------------- log backend
def _log_prefix(la: Tensor, lb: Tensor) -> Tensor:
    """Inclusive log-space scan along dim 0: out_t = log(exp(la_t) * exp(out_{t-1}) + exp(lb_t)).

    Work-efficient odd/even recursion (log2(T) levels, O(T) work). la may be -inf (a reset);
    lb must be finite, which keeps every logaddexp away from (-inf, -inf) and its NaN gradient.
    """
    length = la.shape[0]
    if length == 1:
        return lb
    # Combine neighbours (0,1), (2,3), ...: the pair maps h -> a1 a0 h + (a1 b0 + b1).
    la0, la1 = la[0 : length - 1 : 2], la[1::2]
    pair_la = la0 + la1
    pair_lb = torch.logaddexp(lb[0 : length - 1 : 2] + la1, lb[1::2])
    odd = _log_prefix(pair_la, pair_lb)  # results at t = 1, 3, 5, ...
    # Even t >= 2 follow from the odd result just before them.
    even_rest = torch.logaddexp(odd[: (length - 1) // 2] + la[2::2], lb[2::2])
    even = torch.cat([lb[:1], even_rest])  # results at t = 0, 2, 4, ...
    paired = torch.stack([even[: length // 2], odd], dim=1).flatten(0, 1)
    return paired if length % 2 == 0 else torch.cat([paired, even[-1:]])


def _log_scan_from_logs(la: Tensor, lb: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    """h from log a (may be -inf) and finite log b, time-major fp32; h0 is added in linear space."""
    if starts_tm is not None:
        # a_t = 0 at a reset. torch.where, not log(0): the masked branch gets a zero gradient.
        la = torch.where(starts_tm.unsqueeze(-1), torch.full_like(la, float("-inf")), la)
    h = torch.exp(_log_prefix(la, lb))
    if h0 is not None:
        # h0's contribution is h0 * prod_{s<=t} a_s: linear space, so h0 may be 0 or negative.
        h = h + h0.to(h.dtype) * torch.exp(torch.cumsum(la, dim=0))
    return h


def _gated_log_tm(kp: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    k, p = acc(kp).chunk(2, dim=-1)
    la = -F.softplus(k)  # log(1 - z)
    lb = -F.softplus(-k) + log_g(p)  # log(z * g(p))
    return _log_scan_from_logs(la, lb, h0, starts_tm)


def _log_scan_tm(a: Tensor, b: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> Tensor:
    a, b = acc(a), acc(b)
    if bool((a < 0).any()) or bool((b <= 0).any()):
        raise ValueError(
            "scan backend 'log' needs a >= 0 and b > 0 (true for minGRU/minLSTM); "
            "use backend='loop' (or 'triton' on CUDA) for coefficients of any sign"
        )
    tiny = torch.finfo(a.dtype).tiny
    la = torch.where(a > 0, torch.log(a.clamp_min(tiny)), torch.full_like(a, float("-inf")))
    return _log_scan_from_logs(la, torch.log(b), h0, starts_tm)


# --------------------------------------------------------------------------- dispatch (time-major)
def scan_tm(
    a: Tensor, b: Tensor, h0: Tensor | None = None, starts_tm: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """Time-major scan: a, b [T, B, H], h0 [B, H], starts_tm [T, B] bool -> h [T, B, H] fp32."""
    backend = resolve_backend(backend, a.device)
    if backend in ("loop", "numba"):  # the compiled kernel is for the gated form only
        return _loop_scan_tm(a, b, h0, starts_tm)
    if backend == "log":
        return _log_scan_tm(a, b, h0, starts_tm)
    from .triton_scan import triton_scan_tm

    return triton_scan_tm(a, b, h0, starts_tm, gated=False)


def gated_scan_tm(
    kp: Tensor, h0: Tensor | None = None, starts_tm: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """Time-major gated scan: kp = [k | p] [T, B, 2H], h0 [B, H], starts_tm [T, B] -> h [T, B, H] fp32."""
    backend = resolve_backend(backend, kp.device)
    if backend == "loop":
        return _gated_loop_tm(kp, h0, starts_tm)
    if backend == "numba":
        from .numba_scan import numba_gated_tm

        return numba_gated_tm(acc(kp), h0, starts_tm)
    if backend == "log":
        return _gated_log_tm(kp, h0, starts_tm)
    from .triton_scan import triton_scan_tm

    k, p = kp.chunk(2, dim=-1)
    return triton_scan_tm(k, p, h0, starts_tm, gated=True)


def minlstm_gate_logit(pre_f: Tensor, pre_i: Tensor) -> Tensor:
    """k with sigmoid(k) = i / (f + i) for f = sigmoid(pre_f), i = sigmoid(pre_i): log i - log f.

    Finite even when both gates underflow (where f / (f + i) would be 0 / 0).
    """
    return F.logsigmoid(pre_i) - F.logsigmoid(pre_f)


def minlstm_scan_tm(
    pre: Tensor, h0: Tensor | None = None, starts_tm: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """Time-major minLSTM: pre = [pre_f | pre_i | p] [T, B, 3H] -> h [T, B, H]. The loop backend is fused;
    the others run the gated form on k = minlstm_gate_logit(pre_f, pre_i)."""
    backend = resolve_backend(backend, pre.device)
    if backend == "loop":
        return _minlstm_loop_tm(pre, h0, starts_tm)
    pre_f, pre_i, p = pre.chunk(3, dim=-1)
    return gated_scan_tm(torch.cat([minlstm_gate_logit(pre_f, pre_i), p], dim=-1), h0, starts_tm, backend)


# --------------------------------------------------------------------------- public, batch first
def scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    episode_starts: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t. a, b: [B, T, H]; h0: [B, H]; episode_starts: [B, T] bool -> h [B, T, H]."""
    starts = _check_inputs("scan", a, b, h0, episode_starts)
    starts_tm = None if starts is None else starts.transpose(0, 1)
    return scan_tm(a.transpose(0, 1), b.transpose(0, 1), h0, starts_tm, backend).transpose(0, 1)


def gated_scan(
    k: Tensor,
    p: Tensor,
    h0: Tensor | None = None,
    episode_starts: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """minGRU recurrence from pre-activations. k (gate), p (candidate): [B, T, H] -> h [B, T, H].

    h_t = (1 - sigmoid(k_t)) * h_{t-1} + sigmoid(k_t) * g(p_t).
    """
    starts = _check_inputs("gated_scan", k, p, h0, episode_starts)
    starts_tm = None if starts is None else starts.transpose(0, 1)
    kp = torch.cat([k, p], dim=-1).transpose(0, 1)
    return gated_scan_tm(kp, h0, starts_tm, backend).transpose(0, 1)
