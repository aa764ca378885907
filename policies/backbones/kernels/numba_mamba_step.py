"""The whole Mamba backbone tick as one compiled call (numba): the acting path on CPU.

An eager Mamba `step` is ~35 small torch ops per layer (RMSNorm, in_proj, the conv window, x_proj,
dt_proj, softplus, the state update, the gate, out_proj), each costing microseconds of dispatch at the
batch sizes agents act with. Here the input projection, every residual block and the final RMSNorm run
in one kernel call, with the state update vectorized over the SSM state (fast_exp).

Same math as the eager `MambaBackbone._step` and tested against it (fp32: the sums run in another
order than torch's matmuls, and exp is a 2-ulp polynomial, so outputs agree to float rounding).
Used only where nothing needs torch: CPU, fp32, no autograd, no autocast (see `MambaBackbone._step`).

Like numba_step.py (whose linear layer and parameter views it reuses), the kernel reads the
parameters in place through a table of their storage addresses, so optimizer steps and
`load_state_dict` are seen at the next tick; the table is rebuilt when a parameter's storage changes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor, nn

from .numba_math import JIT, fast_exp, silu, softplus
from .numba_step import ParamTable, _linear, _param

# Per block: one row of SLOTS indices into the address table (-1: absent).
NORM_W, IN_W, IN_B, CONV_W, CONV_B, XPROJ_W, DT_W, DT_B, A_LOG, D_SKIP, OUT_W, OUT_B = range(12)
SLOTS = 12
# Around the blocks: input projection and final RMSNorm.
INPUT_W, INPUT_B, NORM_F_W = range(3)


@njit(**JIT)
def _rms_norm(ws: np.ndarray, w_i: int, x: np.ndarray, eps: float) -> np.ndarray:
    """mambapy's RMSNorm over the last dim of x [B, H]: x / sqrt(mean(x^2) + eps) * weight."""
    batch, dim = x.shape
    gain = _param(ws, w_i, (dim,))
    y = np.empty_like(x)
    for b in range(batch):
        total = np.float32(0.0)
        for i in range(dim):
            total += x[b, i] * x[b, i]
        inv = np.float32(1.0 / math.sqrt(total / dim + eps))
        for i in range(dim):
            y[b, i] = x[b, i] * inv * gain[i]
    return y


@njit(**JIT)
def _conv_silu(
    ws: np.ndarray, slot: np.ndarray, xz: np.ndarray, conv: np.ndarray, conv_new: np.ndarray, layer: int
) -> np.ndarray:
    """One conv tap window per channel: the K-1 carried inputs conv[b, layer] and this tick's xz[:, :E]
    -> silu(conv) [B, E]; writes the shifted window to conv_new[b, layer]. Loops over E innermost."""
    batch, inner, taps = xz.shape[0], conv.shape[2], conv.shape[3] + 1
    weight = _param(ws, slot[CONV_W], (inner, taps))
    bias = _param(ws, slot[CONV_B], (inner,))
    xs = np.empty((batch, inner), dtype=np.float32)
    for b in range(batch):
        for e in range(inner):
            xs[b, e] = bias[e] + weight[e, taps - 1] * xz[b, e]
        for j in range(taps - 1):
            for e in range(inner):
                xs[b, e] += weight[e, j] * conv[b, layer, e, j]
        for e in range(inner):
            xs[b, e] = silu(xs[b, e])
        for e in range(inner):
            for j in range(taps - 2):
                conv_new[b, layer, e, j] = conv[b, layer, e, j + 1]
            conv_new[b, layer, e, taps - 2] = xz[b, e]
    return xs


@njit(**JIT)
def _ssm_update(
    ws: np.ndarray,
    slot: np.ndarray,
    xs: np.ndarray,
    xz: np.ndarray,
    dbc: np.ndarray,
    delta: np.ndarray,
    ssm: np.ndarray,
    ssm_new: np.ndarray,
    layer: int,
) -> np.ndarray:
    """h = exp(delta A) h + delta B x, y = (C . h + D x) * silu(z) -> y [B, E]; writes ssm_new[b, layer].
    dbc = [dt | B | C] [B, R + 2N] (x_proj's output); delta [B, E] before softplus (overwritten)."""
    batch, inner, n_state = xs.shape[0], ssm.shape[2], ssm.shape[3]
    rank = dbc.shape[1] - 2 * n_state
    a_log = _param(ws, slot[A_LOG], (inner, n_state))
    d_skip = _param(ws, slot[D_SKIP], (inner,))
    a = np.empty((inner, n_state), dtype=np.float32)  # A = -exp(A_log), shared by the batch
    for e in range(inner):
        for n in range(n_state):
            a[e, n] = -fast_exp(a_log[e, n])
    y = np.empty((batch, inner), dtype=np.float32)
    for b in range(batch):
        # Views, so the inner loop indexes with its loop variable (no wraparound check, vectorized).
        b_in, c_in = dbc[b, rank : rank + n_state], dbc[b, rank + n_state :]
        h_old, h_new = ssm[b, layer], ssm_new[b, layer]
        for e in range(inner):
            delta[b, e] = softplus(delta[b, e])
        for e in range(inner):
            dl = delta[b, e]
            dbx = dl * xs[b, e]
            acc = d_skip[e] * xs[b, e]
            for n in range(n_state):
                h = fast_exp(dl * a[e, n]) * h_old[e, n] + dbx * b_in[n]
                h_new[e, n] = h
                acc += h * c_in[n]
            y[b, e] = acc
        for e in range(inner):
            y[b, e] *= silu(xz[b, inner + e])
    return y


@njit(**JIT)
def _tick(
    ws: np.ndarray,
    layers: np.ndarray,
    top: np.ndarray,
    dims: np.ndarray,
    eps: float,
    x: np.ndarray,
    conv: np.ndarray,
    ssm: np.ndarray,
    conv_new: np.ndarray,
    ssm_new: np.ndarray,
) -> np.ndarray:
    """x [B, D], conv [B, L, E, K-1], ssm [B, L, E, N] (already reset where episodes start) -> y [B, H];
    writes conv_new and ssm_new. ws: the parameters' addresses; layers [L, SLOTS] and top [3] index
    into it; dims = [H, E, N, R] (width, inner width, state size, dt rank)."""
    hidden, inner, n_state, rank = dims[0], dims[1], dims[2], dims[3]
    u = _linear(ws, top[INPUT_W], top[INPUT_B], x, hidden)
    for layer in range(layers.shape[0]):
        slot = layers[layer]
        xz = _linear(ws, slot[IN_W], slot[IN_B], _rms_norm(ws, slot[NORM_W], u, eps), 2 * inner)  # [x | z]
        xs = _conv_silu(ws, slot, xz, conv, conv_new, layer)
        dbc = _linear(ws, slot[XPROJ_W], -1, xs, rank + 2 * n_state)  # [dt | B | C]
        delta = _linear(ws, slot[DT_W], slot[DT_B], np.ascontiguousarray(dbc[:, :rank]), inner)
        y = _ssm_update(ws, slot, xs, xz, dbc, delta, ssm, ssm_new, layer)
        u = u + _linear(ws, slot[OUT_W], slot[OUT_B], y, hidden)
    return _rms_norm(ws, top[NORM_F_W], u, eps)


def unsupported_reason(backbone: nn.Module) -> str | None:
    """Why this MambaBackbone's step cannot run compiled (None: it can). Every one the library builds
    can; a hand-edited one (non-fp32 or non-contiguous weights, mambapy's inner layernorms or muP
    norms without gains, a conv without bias) keeps the eager step."""
    if any(p.dtype != torch.float32 or not p.is_contiguous() for p in backbone.parameters()):
        return "parameters that are not contiguous fp32"
    config = backbone.config
    if config.inner_layernorms or config.mup or not config.conv_bias:
        return "mambapy options the kernel does not implement (inner_layernorms, mup, no conv bias)"
    return None


class MambaStepWeights(ParamTable):
    """What the kernel needs from one MambaBackbone: its parameters' addresses and the tables saying
    which address is which parameter."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        layers = []
        for block in backbone.layers:
            m = block.mixer
            layers.append(
                [(block.norm, "weight"), (m.in_proj, "weight"), (m.in_proj, "bias"), (m.conv1d, "weight"),
                 (m.conv1d, "bias"), (m.x_proj, "weight"), (m.dt_proj, "weight"), (m.dt_proj, "bias"),
                 (m, "A_log"), (m, "D"), (m.out_proj, "weight"), (m.out_proj, "bias")]
            )  # fmt: skip
        top = [(backbone.input_proj, "weight"), (backbone.input_proj, "bias"), (backbone.norm_f, "weight")]
        config = backbone.config
        dims = [backbone.hidden_dim, backbone.d_inner, backbone.d_state, config.dt_rank]
        self.pack(top, layers, SLOTS, dims, config.rms_norm_eps)

    def step(self, x: Tensor, conv: Tensor, ssm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One compiled tick. x [B, input_dim], conv [B, L, E, K-1], ssm [B, L, E, N], all fp32 CPU and
        already reset where episodes start -> (y [B, hidden_dim], conv_new, ssm_new)."""
        conv, ssm = conv.detach().contiguous(), ssm.detach().contiguous()
        conv_new, ssm_new = torch.empty_like(conv), torch.empty_like(ssm)
        y = self.run(_tick, x, conv.numpy(), ssm.numpy(), conv_new.numpy(), ssm_new.numpy())
        return y, conv_new, ssm_new
