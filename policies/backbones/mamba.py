"""Mamba baseline on `mambapy` (pure PyTorch selective scan; Gu & Dao 2023).

Layout: input projection to `hidden_dim` (d_model) -> `num_layers` pre-norm residual Mamba blocks
(mambapy's `ResidualBlock`: RMSNorm -> MambaBlock, + residual) -> final RMSNorm.

mambapy's own `forward` cannot start from a carried state or forget at episode starts, so this module
reuses its blocks (parameters and initialization) and runs their math itself:

- Causal depthwise conv: computed as `d_conv` shifted, masked products. A tap reaching back across an
  episode start is masked out (segment id = cumsum(episode_starts)), and taps reaching before t=0 read
  the conv buffer carried in the state. No Python loop over time.
- Selective scan h_t = dA_t * h_{t-1} + dBx_t: a reset zeroes dA_t at the start; the carried state
  enters as dBx_0 += dA_0 * h_0. Then mambapy's parallel scan (`pscan`) runs unchanged.

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

import torch
import torch.nn.functional as F
from mambapy.mamba import MambaBlock, MambaConfig, ResidualBlock, RMSNorm
from mambapy.pscan import pscan
from torch import Tensor, nn

from .base import Backbone, State


def _mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


class MambaBackbone(Backbone):
    """Stack of residual Mamba blocks. Options: d_state, d_conv, expand, use_cuda_kernels."""

    name = "mamba"

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        use_cuda_kernels: bool = False,
    ) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        if d_state <= 0 or d_conv < 2 or expand <= 0:
            raise ValueError(
                f"MambaBackbone: need d_state >= 1, d_conv >= 2, expand >= 1, "
                f"got d_state={d_state}, d_conv={d_conv}, expand={expand}"
            )
        self.config = MambaConfig(
            d_model=hidden_dim, n_layers=num_layers, d_state=d_state, d_conv=d_conv, expand_factor=expand
        )
        self.d_inner = self.config.d_inner
        self.d_state = d_state
        self.d_conv = d_conv
        self.use_cuda_kernels = use_cuda_kernels
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
        if state is None:
            fresh = True
            state = self.initial_state(batch, x.device)
        else:
            fresh = False
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
                layer.norm(h),
                state[0][:, i],
                state[1][:, i],
                episode_starts,
                segment,
                use_kernel,
            )
            h = h + mixed
            conv_states.append(conv_state.to(state[0].dtype))
            ssm_states.append(ssm_state.to(state[1].dtype))
        return self.norm_f(h), (torch.stack(conv_states, dim=1), torch.stack(ssm_states, dim=1))

    def _mixer_forward(
        self,
        mixer: MambaBlock,
        u: Tensor,
        conv_state: Tensor,
        ssm_state: Tensor,
        starts: Tensor,
        segment: Tensor,
        use_kernel: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """u: [B, T, H]; conv_state [B, ED, K-1]; ssm_state [B, ED, N] -> (out [B, T, H], conv, ssm)."""
        k = self.d_conv
        xc, z = mixer.in_proj(u).chunk(2, dim=-1)  # [B, T, ED] each
        # Extended conv input: the K-1 carried inputs, then this sequence. Carried inputs belong to
        # segment 0 (the episode in progress); an episode start at t bumps the segment id from t on.
        ext = torch.cat([conv_state.transpose(1, 2).to(xc.dtype), xc], dim=1)  # [B, K-1+T, ED]
        ext_segment = F.pad(segment, (k - 1, 0))  # [B, K-1+T]
        length = xc.shape[1]
        weight = mixer.conv1d.weight[:, 0, :]  # [ED, K]; out_t = sum_j w_j * in_{t-(K-1)+j}
        conv = mixer.conv1d.bias
        for j in range(k):
            same_episode = (ext_segment[:, j : j + length] == segment).unsqueeze(-1)  # [B, T, 1]
            conv = conv + weight[:, j] * (ext[:, j : j + length] * same_episode)
        xs = F.silu(conv)  # [B, T, ED]
        # The next conv buffer: the last K-1 inputs, zeroed where they precede the last episode start.
        tail_same = ext_segment[:, -(k - 1) :] == segment[:, -1:]  # [B, K-1]
        new_conv_state = (ext[:, -(k - 1) :] * tail_same.unsqueeze(-1)).transpose(1, 2)  # [B, ED, K-1]

        if use_kernel:
            y, new_ssm_state = self._selective_scan_cuda(mixer, xs, z)
        else:
            y, new_ssm_state = self._selective_scan(mixer, xs, ssm_state, starts)
            y = y * F.silu(z)
        return mixer.out_proj(y), new_conv_state, new_ssm_state

    def _ssm_inputs(self, mixer: MambaBlock, xs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """xs: [..., ED] -> delta [..., ED] (softplus applied), A [ED, N], B [..., N], C [..., N], D [ED]."""
        cfg = self.config
        dt, b, c = torch.split(mixer.x_proj(xs), [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = F.softplus(mixer.dt_proj(dt))
        return delta, -torch.exp(mixer.A_log), b, c, mixer.D

    def _selective_scan(
        self, mixer: MambaBlock, xs: Tensor, h0: Tensor, starts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """xs: [B, T, ED], h0: [B, ED, N], starts [B, T] -> (y [B, T, ED], h_T [B, ED, N])."""
        delta, a, b, c, d = self._ssm_inputs(mixer, xs)
        # The scan runs in at least fp32 (bf16 products would drift over long sequences).
        dtype = torch.promote_types(xs.dtype, torch.float32)
        delta, b, c, xf = delta.to(dtype), b.to(dtype), c.to(dtype), xs.to(dtype)
        # dA = exp(delta * A), exactly 0 at an episode start (exp(-inf)); in place, as these are the
        # biggest tensors here ([B, T, ED, N]) and neither product is saved for backward.
        log_a = (delta.unsqueeze(-1) * a.to(dtype)).masked_fill_(starts[..., None, None], float("-inf"))
        d_a = torch.exp(log_a)  # [B, T, ED, N]
        d_bx = (delta * xf).unsqueeze(-1) * b.unsqueeze(2)  # [B, T, ED, N]
        d_bx[:, 0] += d_a[:, 0] * h0.to(dtype)  # the carried state enters at t=0
        hs = pscan(d_a, d_bx)  # [B, T, ED, N]
        y = (hs @ c.unsqueeze(-1)).squeeze(-1) + d.to(dtype) * xf  # [B, T, ED]
        return y.to(xs.dtype), hs[:, -1]

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
        h = self.input_proj(x)  # [B, H]
        conv_states, ssm_states = [], []
        for i, layer in enumerate(self.layers):
            mixer = layer.mixer
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
