"""Mamba's two sequence ops, each behind one call with resets and a carried state, a backend per device.

Selective scan (`selective_scan`), with mamba_ssm's options: delta_bias (delta := softplus(delta +
delta_bias)), the gate z (y := y * silu(z)) and, as mamba_inner_fn fuses dt_proj, delta_weight W [E, R]
(delta given as the rank-R dt [B, T, R]; delta := dt @ W^T before the bias):
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t,   y_t = C_t . h_t + D * x_t
    x, delta, z [B, T, E]; A [E, N]; B, C [B, T, N]; D, delta_bias [E]; h0 [B, E, N]; starts [B, T] bool
    -> y [B, T, E], h_T [B, E, N]. An episode start at t means h_{t-1} := 0.
Causal depthwise conv + SiLU (`conv_silu`):
    xs_t = silu(bias + sum_j w_j * in_{t-(K-1)+j}), in_s = 0 for s before the latest episode start <= t
    xc [B, T, E]; carried [B, K-1, E] (in_s for s = -(K-1)..-1, oldest first); w [E, K]; bias [E]
    -> xs [B, T, E].

Backends:
- "numba": the compiled forward and backward (numba_mamba.py, numba_mamba_conv.py), CPU only. The
  default on CPU.
- "mambapy": mambapy's parallel scan (`pscan`) in plain PyTorch, with the resets as exp(delta A) = 0
  and h0 entering at t=0, and the conv as K shifted, masked products. The reference the kernels are
  tested against; it runs on any device, and GPUs without mamba_ssm run it.
- "auto": numba on CPU when numba is installed, else mambapy.

Neither the scan kernel's backward nor `pscan`'s is differentiable, and neither has a forward-mode
derivative. Where those are needed the kernel hands over to `selective_scan_loop`, a plain loop over
time in torch ops (slow, but autograd can differentiate it any number of times): under forward-mode
AD the forward runs it, and a double backward (create_graph=True) differentiates through it. The
conv kernel does the same with `conv_silu_torch`.

Both accumulate in fp32 (fp64 for fp64 inputs, used by exact tests), also under bf16 autocast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mambapy.pscan import pscan
from torch import Tensor

from .scan_backends import numba_available, outside_forward_ad

BACKENDS = ("auto", "numba", "mambapy")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numba" and not numba_available():
        raise ValueError("scan='numba' needs the numba package (pip install numba); use scan='mambapy'")
    return backend


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'numba' on CPU (when installed), else 'mambapy'; checks the kernel can run on `device`."""
    check_backend(backend)
    if backend == "auto":
        return "numba" if device.type == "cpu" and numba_available() else "mambapy"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"scan='numba' needs CPU tensors, got {device}; use scan='mambapy' (or 'auto')")
    return backend


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    h0: Tensor | None = None,
    starts: Tensor | None = None,
    backend: str = "auto",
    *,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scan on the resolved backend. Returns y [B, T, E] and h_T [B, E, N] in the accumulation dtype."""
    _check_shapes(x, delta, a, b, c, d, h0, starts, z, delta_bias, delta_weight)
    dtype = acc_dtype(x.dtype)
    batch, length, inner = x.shape
    if starts is None:
        starts = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
    tensors = (x, delta, a, b, c, d, h0, z, delta_bias, delta_weight)
    inputs = tuple(None if t is None else t.to(dtype) for t in tensors)
    numba = resolve_backend(backend, x.device) == "numba"
    if numba and outside_forward_ad():
        from .numba_mamba import NumbaSelectiveScan

        # h0 may stay None here: the kernel starts from zeros without a copy of a zero tensor.
        return NumbaSelectiveScan.apply(*inputs, starts.to(torch.bool))
    # The torch paths: forward-mode AD on the numba backend runs the loop reference, which has it.
    xf, delta_f, af, bf, cf, df, h0f, zf, bias_f, weight_f = inputs  # f: in the accumulation dtype
    if h0f is None:
        h0f = x.new_zeros(batch, inner, a.shape[1], dtype=dtype)
    args = (xf, _project_delta_fast(delta_f, weight_f), af, bf, cf, df, h0f, zf, bias_f, starts)
    return selective_scan_loop(*args) if numba else selective_scan_mambapy(*args)


def project_delta(delta: Tensor, delta_weight: Tensor | None) -> Tensor:
    """dt [B, T, R] @ delta_weight^T [R, E] -> delta [B, T, E] (Mamba's dt_proj without its bias); delta
    itself without a weight. Plain autograd: the double-backward reference uses it."""
    return delta if delta_weight is None else F.linear(delta, delta_weight)


def _project_delta_fast(delta: Tensor, delta_weight: Tensor | None) -> Tensor:
    """`project_delta` for the torch paths' forward: the narrow-input product (see `_NarrowLinear`) in CPU
    training without autocast (whose casts it would skip)."""
    cpu = delta.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
    if delta_weight is not None and cpu and torch.is_grad_enabled():
        return _NarrowLinear.apply(delta, delta_weight)
    return project_delta(delta, delta_weight)


class _NarrowLinear(torch.autograd.Function):
    """x @ W^T for a narrow x ([..., R], R = dt_rank, e.g. 8), with the weight's gradient taken as
    (x^T g)^T: autograd's g^T x reads g [B*T, ED] transposed and, at R = 8, costs 10x more on CPU
    (measured 87 vs 8 ms at B*T = 16384, ED = 256)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        # x is a column slice of x_proj's output: made contiguous first, the product took 55 instead
        # of 196 us at B*T = 1280, R = 4, ED = 128 (MKL's strided path).
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        # Both products with the wide side as the output: MKL's [M, K] @ [K, R] with R = 4 took 200 us
        # against 50 us for (W^T g^T)^T at M = 1280, K = 128 (the same sums).
        dx = (weight.t() @ g2.t()).t().reshape(x.shape)
        return dx, (x2.t() @ g2).t()


def conv_silu(
    xc: Tensor, carried: Tensor, weight: Tensor, bias: Tensor, starts: Tensor, backend: str = "auto"
) -> Tensor:
    """The conv + SiLU on the resolved backend, in xc's dtype (cast it to fp32 first for the kernel)."""
    batch, length, inner = xc.shape
    k = weight.shape[-1]
    expected = {"carried": (carried, (batch, k - 1, inner)), "weight": (weight, (inner, k)),
                "bias": (bias, (inner,)), "episode_starts": (starts, (batch, length))}  # fmt: skip
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"conv_silu: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    if resolve_backend(backend, xc.device) == "numba" and outside_forward_ad():
        from .numba_mamba_conv import NumbaConvSilu

        dtype = acc_dtype(xc.dtype)
        parts = (t.to(dtype) for t in (xc, carried, weight, bias))
        return NumbaConvSilu.apply(*parts, starts.to(torch.bool))
    return conv_silu_torch(xc, carried, weight, bias, starts)


def conv_silu_torch(xc: Tensor, carried: Tensor, weight: Tensor, bias: Tensor, starts: Tensor) -> Tensor:
    """The vectorized conv + SiLU (the kernel's reference): K shifted products over the carried inputs
    and xc, each masked where its tap reaches across an episode start (another segment id)."""
    k, length = weight.shape[-1], xc.shape[1]
    segment = starts.cumsum(dim=1)  # [B, T]: 0 = still the episode the carried inputs belong to
    ext = torch.cat([carried.to(xc.dtype), xc], dim=1)  # [B, K-1+T, E]
    ext_segment = F.pad(segment, (k - 1, 0))  # [B, K-1+T]
    conv = bias
    for j in range(k):  # out_t = bias + sum_j w_j * in_{t-(K-1)+j}
        same_episode = (ext_segment[:, j : j + length] == segment).unsqueeze(-1)  # [B, T, 1]
        conv = conv + weight[:, j] * (ext[:, j : j + length] * same_episode)
    return F.silu(conv)


def step_size(delta: Tensor, delta_bias: Tensor | None) -> Tensor:
    """mamba_ssm's delta_bias option: delta := softplus(delta + delta_bias) when a bias is given."""
    return delta if delta_bias is None else F.softplus(delta + delta_bias)


def gated(y: Tensor, z: Tensor | None) -> Tensor:
    """mamba_ssm's z option: y := y * silu(z) when a gate is given."""
    return y if z is None else y * F.silu(z)


def selective_scan_mambapy(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    h0: Tensor,
    z: Tensor | None,
    delta_bias: Tensor | None,
    starts: Tensor,
) -> tuple[Tensor, Tensor]:
    """The reference, on mambapy's `pscan`: same arguments as `selective_scan` (one float dtype)."""
    delta = step_size(delta, delta_bias)
    # exp(delta A), exactly 0 at an episode start (exp(-inf)); in place, as these are the biggest
    # tensors here ([B, T, E, N]) and neither product is saved for backward.
    log_a = (delta.unsqueeze(-1) * a).masked_fill_(starts[..., None, None], float("-inf"))
    d_a = torch.exp(log_a)  # [B, T, E, N]
    d_bx = (delta * x).unsqueeze(-1) * b.unsqueeze(2)  # [B, T, E, N]
    d_bx[:, 0] += d_a[:, 0] * h0  # the carried state enters at t=0
    hs = pscan(d_a, d_bx)  # [B, T, E, N]
    y = (hs @ c.unsqueeze(-1)).squeeze(-1) + d * x  # [B, T, E]
    return gated(y, z), hs[:, -1]


def selective_scan_loop(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    h0: Tensor,
    z: Tensor | None,
    delta_bias: Tensor | None,
    starts: Tensor,
) -> tuple[Tensor, Tensor]:
    """The recurrence step by step in plain torch ops (differentiable any number of times, forward-mode
    AD too): same arguments as `selective_scan`. O(T) small ops: for the cases the kernel cannot do."""
    delta = step_size(delta, delta_bias)
    keep = (~starts).to(x.dtype)[..., None, None]  # [B, T, 1, 1]: 0 at an episode start
    h, ys = h0, []
    for t in range(x.shape[1]):
        d_a = torch.exp(delta[:, t, :, None] * a)  # [B, E, N]
        h = d_a * (h * keep[:, t]) + (delta[:, t] * x[:, t])[..., None] * b[:, t, None, :]
        ys.append((h * c[:, t, None, :]).sum(-1) + d * x[:, t])  # [B, E]
    y = torch.stack(ys, dim=1)
    return gated(y, z), h


def _check_shapes(
    x: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor,
    h0: Tensor | None,
    starts: Tensor | None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_weight: Tensor | None = None,
) -> None:
    """A clear ValueError for inconsistent shapes or devices: the compiled kernel does not check its
    indices, so a wrong shape reaching it would read out of bounds instead of raising."""
    if x.ndim != 3 or a.ndim != 2:
        raise ValueError(
            f"selective_scan: x must be [B, T, E] and A [E, N], got {tuple(x.shape)}, {tuple(a.shape)}"
        )
    batch, length, inner = x.shape
    n_state = a.shape[1]
    if delta_weight is not None and (delta_weight.ndim != 2 or delta.ndim != 3):
        raise ValueError(
            "selective_scan: with a delta_weight [E, R], delta must be the rank-R input [B, T, R], got "
            f"delta_weight {tuple(delta_weight.shape)}, delta {tuple(delta.shape)}"
        )
    rank = None if delta_weight is None else delta_weight.shape[1]
    expected = {
        "delta": (delta, (batch, length, inner if rank is None else rank)),
        "delta_weight": (delta_weight, (inner, rank)),
        "A": (a, (inner, n_state)),
        "B": (b, (batch, length, n_state)),
        "C": (c, (batch, length, n_state)),
        "D": (d, (inner,)),
        "h0": (h0, (batch, inner, n_state)),
        "episode_starts": (starts, (batch, length)),
        "z": (z, (batch, length, inner)),
        "delta_bias": (delta_bias, (inner,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.device != x.device:
            raise ValueError(f"selective_scan: {name} is on {tensor.device} but x is on {x.device}")
    if not all(t.is_floating_point() for t in (x, delta, a, b, c, d)) or not (
        delta_weight is None or delta_weight.is_floating_point()
    ):
        raise ValueError("selective_scan: x, delta, A, B, C, D and delta_weight must be floating point")
