"""Mamba baseline (Gu & Dao 2023) on mambapy's blocks, with compiled CPU kernels for its sequence ops.

Layout: input projection to `hidden_dim` (d_model) -> `num_layers` pre-norm residual Mamba blocks
(mambapy's `ResidualBlock`: RMSNorm -> MambaBlock, + residual) -> final RMSNorm.

mambapy's own `forward` cannot start from a carried state or forget at episode starts, so this module
reuses its blocks (parameters and initialization) and runs their math itself. The two sequence ops,
the causal depthwise conv + SiLU and the selective scan, take the carried state and the resets (an
episode start forgets the conv inputs and the SSM state before it); kernels/selective_scan.py runs
them, on the backend `scan` names:

- "numba": compiled forward and backward kernels (numba_mamba.py, numba_mamba_conv.py). The default
  on CPU ("auto"), 5-10x faster there than the reference at T=256-1024.
- "mambapy": the reference and the default elsewhere: the conv as `d_conv` shifted, masked products
  and mambapy's parallel scan (`pscan`), with the resets as exp(delta A) = 0.

`step` keeps, per layer, the last `d_conv - 1` conv inputs and the SSM state, so a tick costs the
same at any episode length.

State (batch first, zeros = fresh): `(conv [B, L, ED, d_conv-1], ssm [B, L, ED, d_state])`,
ED = expand * hidden_dim.

`use_cuda_kernels=True` runs `mamba_ssm`'s fused selective-scan CUDA kernel when `mamba_ssm` is
installed and the input is on CUDA. That kernel takes neither an initial SSM state nor resets, so it
is used only for sequences that start fresh (no state passed) with no episode start after t=0 (the
usual offline-training segment); anything else runs the PyTorch path, which gives the same numbers.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from mambapy.mamba import MambaBlock, MambaConfig, ResidualBlock, RMSNorm
from torch import Tensor, nn

from .base import Backbone, State, compiled_step
from .kernels.rms_norm import rms_norm
from .kernels.selective_scan import check_backend, conv_silu, resolve_backend, selective_scan

# The compiled step measured faster than the eager one at every batch size up to 256 (1 and 2 threads,
# H=128, 1 layer; 3-7x at B=1-16); above that the eager step (MKL matmuls) runs, untested against it.
COMPILED_STEP_MAX_BATCH = 256


def _mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


class MambaBackbone(Backbone):
    """Stack of residual Mamba blocks. Options: d_state, d_conv, expand, use_cuda_kernels, scan."""

    name = "mamba"
    _cache_attrs = ("_param_device", "_fused_step")

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        use_cuda_kernels: bool = False,
        scan: str = "auto",
    ) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        _check_options(d_state, d_conv, expand)
        self.scan = check_backend(scan)
        self.config = MambaConfig(
            d_model=hidden_dim, n_layers=num_layers, d_state=d_state, d_conv=d_conv, expand_factor=expand
        )
        self.d_inner = self.config.d_inner
        self.d_state = d_state
        self.d_conv = d_conv
        self.use_cuda_kernels = use_cuda_kernels
        # The compiled step's parameter table (numba_mamba_step.MambaStepWeights), or why it cannot run
        # (a str); None = not looked at yet. Dropped on a move or a load (see Backbone._forget_caches).
        self._fused_step: Any = None
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList([ResidualBlock(self.config) for _ in range(num_layers)])
        self.norm_f = RMSNorm(hidden_dim, self.config.rms_norm_eps)

    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        dtype = self.input_proj.weight.dtype
        return [
            ((self.num_layers, self.d_inner, self.d_conv - 1), dtype),
            ((self.num_layers, self.d_inner, self.d_state), dtype),
        ]

    # ----------------------------------------------------------------- whole sequences
    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        # x: [B, T, D_in] -> y [B, T, H]; state (conv [B, L, ED, K-1], ssm [B, L, ED, N])
        batch, length, _ = x.shape
        fresh = state is None
        if state is None:  # the conv buffer as zeros; the SSM state as None, which the scan starts from
            (conv_shape, conv_dtype), _ = self.state_shapes()
            conv0, ssm0 = torch.zeros((batch, *conv_shape), dtype=conv_dtype, device=x.device), None
        else:
            conv0, ssm0 = state
        if episode_starts is None:
            episode_starts = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        segment = episode_starts.cumsum(dim=1)  # [B, T]: 0 = still the episode carried in `state`
        use_kernel = (
            self.use_cuda_kernels
            and x.is_cuda
            and fresh
            and not bool(episode_starts[:, 1:].any())
            and _mamba_ssm_available()
        )
        h = self.input_proj(x)  # [B, T, H]
        conv_states, ssm_states = [], []
        for i, layer in enumerate(self.layers):
            mixed, conv_state, ssm_state = self._mixer_forward(
                layer.mixer,
                _rms_norm(layer.norm, h),
                conv0[:, i],
                None if ssm0 is None else ssm0[:, i],
                episode_starts,
                segment,
                use_kernel,
            )
            h = h + mixed
            conv_states.append(conv_state)
            ssm_states.append(ssm_state)
        dtype = conv0.dtype
        # The CPU kernel's h_T is a transposed view of a [B, N, ED] buffer: stacking those buffers and
        # transposing the stack back is one contiguous copy, where stacking the views is a strided one.
        ssm = torch.stack([s.transpose(1, 2) for s in ssm_states], dim=1).transpose(2, 3)
        return _rms_norm(self.norm_f, h), (torch.stack(conv_states, dim=1).to(dtype), ssm.to(dtype))

    def _mixer_forward(
        self,
        mixer: MambaBlock,
        u: Tensor,
        conv_state: Tensor,
        ssm_state: Tensor | None,
        starts: Tensor,
        segment: Tensor,
        use_kernel: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """u: [B, T, H]; conv_state [B, ED, K-1]; ssm_state [B, ED, N] (None: zeros) -> (out [B, T, H], conv,
        ssm)."""
        xc, z = _in_proj_halves(mixer.in_proj, u)  # [B, T, ED] each
        carried = conv_state.transpose(1, 2).to(xc.dtype)  # [B, K-1, ED]: the last K-1 inputs, oldest first
        xs = conv_silu(
            xc, carried, mixer.conv1d.weight[:, 0, :], mixer.conv1d.bias, starts, self.scan
        )  # [B, T, ED]
        # The next conv buffer: the last K-1 inputs, zeroed where they precede the last episode start.
        # Carried inputs belong to segment 0 (the episode in progress); a start at t bumps it from t on.
        k, length = self.d_conv, xc.shape[1]
        tail = torch.cat([carried[:, length:], xc[:, -(k - 1) :]], dim=1)  # [B, K-1, ED]
        tail_same = F.pad(segment, (k - 1, 0))[:, -(k - 1) :] == segment[:, -1:]  # [B, K-1]
        new_conv_state = (tail * tail_same.unsqueeze(-1)).transpose(1, 2)  # [B, ED, K-1]

        if use_kernel:
            y, new_ssm_state = self._selective_scan_cuda(mixer, xs, z)
        else:
            y, new_ssm_state = self._selective_scan(mixer, xs, z, ssm_state, starts)
        return mixer.out_proj(y), new_conv_state, new_ssm_state

    def _ssm_inputs(self, mixer: MambaBlock, xs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """xs: [..., ED] -> delta [..., ED] (softplus applied), A [ED, N], B [..., N], C [..., N], D [ED]."""
        cfg = self.config
        dt, b, c = torch.split(mixer.x_proj(xs), [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = F.softplus(mixer.dt_proj(dt))
        return delta, -torch.exp(mixer.A_log), b, c, mixer.D

    def _selective_scan(
        self, mixer: MambaBlock, xs: Tensor, z: Tensor, h0: Tensor | None, starts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """xs, z: [B, T, ED], h0: [B, ED, N] or None (zeros), starts [B, T] -> (y * silu(z) [B, T, ED], h_T
        [B, ED, N]).

        As mamba_ssm's mamba_inner_fn, the scan takes dt_proj's weight, its bias (+ softplus) and the
        gate z, all fused in the CPU kernel."""
        cfg = self.config
        dt, b, c = torch.split(mixer.x_proj(xs), [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        a, bias = -torch.exp(mixer.A_log), mixer.dt_proj.bias
        # The scan runs in at least fp32 (bf16 products would drift over long sequences).
        weight = mixer.dt_proj.weight  # [ED, dt_rank]
        y, h_last = selective_scan(
            xs, dt, a, b, c, mixer.D, h0, starts, self.scan, z=z, delta_bias=bias, delta_weight=weight
        )
        return y.to(xs.dtype), h_last

    def _selective_scan_cuda(self, mixer: MambaBlock, xs: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """mamba_ssm's fused kernel (fresh state, no resets). xs, z: [B, T, ED] -> (y*silu(z), h_T)."""
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        cfg = self.config
        dt, b, c = torch.split(mixer.x_proj(xs), [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = dt @ mixer.dt_proj.weight.t()  # [B, T, ED]; bias + softplus are fused in the kernel
        y, last = selective_scan_fn(
            xs.transpose(1, 2).contiguous(),
            delta.transpose(1, 2).contiguous(),
            -torch.exp(mixer.A_log.float()),
            b.transpose(1, 2).contiguous(),
            c.transpose(1, 2).contiguous(),
            mixer.D.float(),
            z=z.transpose(1, 2).contiguous(),
            delta_bias=mixer.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=True,
        )
        return y.transpose(1, 2), last

    # ----------------------------------------------------------------- one tick
    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # x: [B, D_in] -> y [B, H]; state (conv [B, L, ED, K-1], ssm [B, L, ED, N])
        weights = compiled_step(self, x, state, COMPILED_STEP_MAX_BATCH)
        if weights is not None:
            y, conv, ssm = weights.step(x, *state)
            return y, (conv, ssm)
        h = self.input_proj(x)  # [B, H]
        conv_states, ssm_states = [], []
        for i, layer in enumerate(self.layers):
            mixer = layer.mixer
            # mambapy's own RMSNorm here, not torch's fused op: this is the path ONNX export traces, and
            # opset 17 has no rms_norm (the two gave identical fp32 outputs where compared).
            xc, z = mixer.in_proj(layer.norm(h)).chunk(2, dim=-1)  # [B, ED] each
            window = torch.cat([state[0][:, i].to(xc.dtype), xc.unsqueeze(-1)], dim=-1)  # [B, ED, K]
            xs = F.silu(mixer.conv1d.bias + (window * mixer.conv1d.weight[:, 0, :]).sum(-1))  # [B, ED]
            delta, a, b, c, d = self._ssm_inputs(mixer, xs)
            dtype = torch.promote_types(xs.dtype, torch.float32)
            delta, b, c, xf = delta.to(dtype), b.to(dtype), c.to(dtype), xs.to(dtype)
            d_a = torch.exp(delta.unsqueeze(-1) * a.to(dtype))  # [B, ED, N]
            d_bx = (delta * xf).unsqueeze(-1) * b.unsqueeze(1)  # [B, ED, N]
            ssm = d_a * state[1][:, i].to(dtype) + d_bx
            y = (ssm @ c.unsqueeze(-1)).squeeze(-1) + d.to(dtype) * xf  # [B, ED]
            h = h + mixer.out_proj(y.to(xs.dtype) * F.silu(z))
            conv_states.append(window[:, :, 1:].to(state[0].dtype))
            ssm_states.append(ssm.to(state[1].dtype))
        return self.norm_f(h), (torch.stack(conv_states, dim=1), torch.stack(ssm_states, dim=1))

    def _build_fused_step(self, device: torch.device) -> Any:
        """numba_mamba_step.MambaStepWeights for this backbone, or a str saying why the step stays eager."""
        backend = resolve_backend(self.scan, device)
        if backend != "numba":
            return f"scan={self.scan!r} resolves to {backend!r} on {device}"
        from .kernels.numba_mamba_step import MambaStepWeights, unsupported_reason

        reason = unsupported_reason(self)
        return reason if reason is not None else MambaStepWeights(self)


def _in_proj_halves(layer: nn.Linear, u: Tensor) -> tuple[Tensor, Tensor]:
    """mambapy's in_proj(u).chunk(2) as two matmuls on the weight's halves: u [..., H] -> xc, z [..., ED].
    The same products, but each half comes out contiguous; chunk's halves are strided views, which the
    CPU kernels copy (twice each per training step) before reading."""
    half = layer.out_features // 2
    bias = layer.bias
    xc = F.linear(u, layer.weight[:half], None if bias is None else bias[:half])
    z = F.linear(u, layer.weight[half:], None if bias is None else bias[half:])
    return xc, z


def _rms_norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """mambapy's RMSNorm (x * rsqrt(mean(x^2) + eps) * weight), its gradients in closed form in CPU
    training (kernels/rms_norm.py): x [..., H]."""
    return rms_norm(x, None if norm.use_mup else norm.weight, norm.eps)


def _check_options(d_state: int, d_conv: int, expand: int) -> None:
    """Whole numbers in range, or a ValueError naming them (a float width would fail deep in mambapy)."""
    values = {"d_state": (d_state, 1), "d_conv": (d_conv, 2), "expand": (expand, 1)}
    bad = [
        f"{name}={value!r} (need an integer >= {low})"
        for name, (value, low) in values.items()
        if isinstance(value, bool) or not isinstance(value, int) or value < low
    ]
    if bad:
        raise ValueError(f"MambaBackbone: bad options: {', '.join(bad)}")
