"""Shared machinery of minGRU and minLSTM: the single-recurrence layer and the residual backbone.

Both cells reduce to the same gated recurrence (see scan.py):
    h_t = (1 - z_t) * h_{t-1} + z_t * g(p_t),   z_t = sigmoid(k_t),
with k, p linear in x_t only. A layer subclass says how to get k and p from x (`preactivations`);
everything else (training by scan, acting by step, resets, h0) lives here once.

Layers run time-major internally (`forward_tm`), so the backbone transposes its input once and
every scan step works on a contiguous [B, H] slab.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, compiled_step, run_dropout, run_layer_norm, run_linear
from .kernels.scan import acc, gated_scan_tm
from .kernels.scan_backends import check_backend, resolve_backend


class MinRNNLayer(nn.Module):
    """One minimal recurrence, input_dim -> hidden_dim. Subclasses implement `preactivations`."""

    def __init__(self, input_dim: int, hidden_dim: int, scan: str = "auto") -> None:
        super().__init__()
        if input_dim <= 0 or hidden_dim <= 0:
            raise ValueError(
                f"{type(self).__name__}: input_dim and hidden_dim must be positive, got {input_dim}, {hidden_dim}"
            )
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.scan = check_backend(scan)

    def preactivations(self, x: Tensor) -> Tensor:
        """x: [..., input_dim] -> [k | p]: [..., 2 * hidden_dim] (gate logit, candidate pre-activation)."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, h0: Tensor | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: [B, T, input_dim], h0: [B, H] | None, episode_starts: [B, T] bool | None
        -> (h [B, T, H] (a time-major view, like nn.LSTM(batch_first=True)), h_last [B, H])."""
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be shaped [B, T, {self.input_dim}], got {got}")
        batch, length = x.shape[:2]
        if h0 is not None and tuple(h0.shape) != (batch, self.hidden_dim):
            raise ValueError(
                f"{name}: h0 must be shaped [B, H] = {(batch, self.hidden_dim)}, got {tuple(h0.shape)}"
            )
        if episode_starts is not None and tuple(episode_starts.shape) != (batch, length):
            raise ValueError(
                f"{name}: episode_starts must be shaped [B, T] = {(batch, length)}, got {tuple(episode_starts.shape)}"
            )
        starts_tm = None if episode_starts is None else episode_starts.to(torch.bool).transpose(0, 1)
        h = self.forward_tm(x.transpose(0, 1), h0, starts_tm)
        return h.transpose(0, 1), h[-1]

    def forward_tm(self, x: Tensor, h0: Tensor | None = None, starts_tm: Tensor | None = None) -> Tensor:
        """Time-major: x [T, B, input_dim], h0 [B, H], starts_tm [T, B] bool -> h [T, B, H] (fp32)."""
        return gated_scan_tm(self.preactivations(x), h0, starts_tm, self.scan)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One tick: x [B, input_dim], h [B, H] -> h [B, H] (fp32). Same ops as the loop scan's step."""
        kp = acc(self.preactivations(x))
        if h.dtype != kp.dtype:
            h = h.to(kp.dtype)
        hidden = self.hidden_dim
        s = torch.sigmoid(kp)
        candidate = torch.maximum(kp[:, hidden:] + 0.5, s[:, hidden:])  # g(p), see scan.g_activation
        return torch.lerp(h, candidate, s[:, :hidden])


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear -> Dropout, width * ratio inside.

    Still an nn.Sequential (state_dict keys 0.* and 2.*, as in saved checkpoints), but `forward` calls
    the functional ops on the layers' parameters instead of four Module calls: it runs once per block
    per tick when acting, where the calls cost more than the arithmetic.
    """

    def __init__(self, width: int, ratio: float, dropout: float) -> None:
        inner = max(1, round(width * ratio))
        super().__init__(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., width] -> [..., width]."""
        up, act, down, drop = self._modules.values()  # one lookup; self[i] is slower
        h = F.gelu(run_linear(up, x), approximate=act.approximate)
        return run_dropout(drop, run_linear(down, h))


class ResidualBlock(nn.Module):
    """Pre-norm block: u + cell(norm(u)) then u + mlp(norm(u)). The cell may be wider (expansion)."""

    def __init__(
        self,
        layer_cls: type[MinRNNLayer],
        width: int,
        inner: int,
        mlp_ratio: float,
        dropout: float,
        scan: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.cell = layer_cls(width, inner, scan=scan)
        # Projected back to the residual width only when the cell is wider (as in the paper's code).
        self.out = nn.Linear(inner, width, bias=False) if inner != width else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width) if mlp_ratio > 0 else None
        self.mlp = FeedForward(width, mlp_ratio, dropout) if mlp_ratio > 0 else None

    def forward(self, u: Tensor, h0: Tensor | None, starts_tm: Tensor | None) -> tuple[Tensor, Tensor]:
        """Time-major u [T, B, width], h0 [B, inner] -> (u [T, B, width], h_last [B, inner])."""
        h = self.cell.forward_tm(run_layer_norm(self.norm1, u), h0, starts_tm)
        return self._after_cell(u, h), h[-1]

    def step(self, u: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """u [B, width], h [B, inner] -> (u [B, width], h [B, inner])."""
        modules = self._modules  # see _after_cell
        h = modules["cell"].step(run_layer_norm(modules["norm1"], u), h)
        return self._after_cell(u, h), h

    def _after_cell(self, u: Tensor, h: Tensor) -> Tensor:
        """The block after its recurrence, shared by forward and step: u [..., width], cell output
        h [..., inner] -> u + drop(out(h)), then u + mlp(norm2(u)): [..., width]."""
        # This runs per block at every tick when acting: functional calls (see base.run_linear), and
        # submodules read from their dict (nn.Module.__getattr__ is reached only after a failed normal
        # attribute lookup, ~0.7 us each).
        modules = self._modules
        y = h if h.dtype == u.dtype else h.to(u.dtype)  # fp32 h into a bf16 stream under autocast
        out = modules["out"]
        if isinstance(out, nn.Linear):  # else nn.Identity: nothing to call
            y = run_linear(out, y)
        u = u + run_dropout(modules["drop"], y)
        mlp = modules.get("mlp")  # None (no MLP) is a plain attribute, not a submodule
        if mlp is not None:
            u = u + mlp.forward(run_layer_norm(modules["norm2"], u))
        return u


# Above this many sequences per tick the eager step is as fast or faster: the kernel's exp/erf are scalar
# libm calls, while torch's are vectorized, and MKL's matmuls pull ahead. Measured (1 and 2 threads,
# width 64 and 128, 1 and 3 layers): compiled 3-6x faster at batch 1, 1.2-2x at 16, even to 1.5x slower
# at 32-64, 3.5x slower at 256.
COMPILED_STEP_MAX_BATCH = 16


class MinRNNBackbone(Backbone):
    """Input projection, `num_layers` residual minRNN blocks, final LayerNorm. Output width hidden_dim.

    State: one tensor [B, num_layers, inner_dim] (the recurrent h of every layer; zeros = fresh),
    inner_dim = round(hidden_dim * expansion_factor).

    `step` runs as one compiled kernel (numba_step.py) where the scan backend resolves to numba (CPU,
    the default), the batch is at most COMPILED_STEP_MAX_BATCH and nothing needs eager torch: fp32,
    autograd off, no autocast, no active dropout. Otherwise, and with scan="loop", it runs the eager ops.
    """

    layer_cls: ClassVar[type[MinRNNLayer]]
    _cache_attrs = ("_param_device", "_fused_step")

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        *,
        expansion_factor: float = 1.0,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        scan: str = "auto",
    ) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        name = type(self).__name__
        if expansion_factor <= 0:
            raise ValueError(f"{name}: expansion_factor must be > 0, got {expansion_factor}")
        if mlp_ratio < 0:
            raise ValueError(f"{name}: mlp_ratio must be >= 0 (0 = no MLP), got {mlp_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        self.inner_dim = max(1, round(hidden_dim * expansion_factor))
        self.scan = check_backend(scan)
        self.dropout = dropout
        # The compiled step's parameter table (numba_step.StepWeights), or why it cannot run (a str);
        # None = not looked at yet. Dropped on a move or a load (see Backbone._forget_caches).
        self._fused_step: Any = None
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            ResidualBlock(self.layer_cls, hidden_dim, self.inner_dim, mlp_ratio, dropout, scan)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)

    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((self.num_layers, self.inner_dim), torch.float32)]

    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """x [B, T, input_dim], episode_starts [B, T] -> (y [B, T, hidden_dim], (h [B, num_layers, inner],))."""
        starts_tm = None if episode_starts is None else episode_starts.transpose(0, 1)
        u = run_linear(self.input_proj, x.transpose(0, 1))  # [T, B, hidden]: time-major from here on
        h0s = [None] * self.num_layers if state is None else state[0].unbind(1)
        last = []
        for block, h0 in zip(self.blocks, h0s, strict=True):
            u, h_last = block(u, h0, starts_tm)
            last.append(h_last)
        y = run_layer_norm(self.norm, u).transpose(0, 1).contiguous()
        return y, (torch.stack(last, dim=1),)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x [B, input_dim], state ([B, num_layers, inner],) -> (y [B, hidden_dim], state)."""
        weights = self._step_weights(x, state[0])
        if weights is not None:
            y, h = weights.step(x, state[0])
            return y, (h,)
        u = run_linear(self.input_proj, x)
        new = []
        # unbind: every layer's h [B, inner] in one op instead of one slice per layer
        for block, h in zip(self.blocks, state[0].unbind(1), strict=True):
            u, h = block.step(u, h)
            new.append(h)
        return run_layer_norm(self.norm, u), (torch.stack(new, dim=1),)

    def _step_weights(self, x: Tensor, h: Tensor) -> Any:
        """The compiled step's weights if this tick can run compiled, else None (eager step)."""
        if self.training and self.dropout > 0:
            return None
        return compiled_step(self, x, (h,), COMPILED_STEP_MAX_BATCH)

    def _build_fused_step(self, device: torch.device) -> Any:
        """numba_step.StepWeights for this backbone, or a str saying why the step stays eager."""
        backend = resolve_backend(self.scan, device)
        if backend != "numba":
            return f"scan={self.scan!r} resolves to {backend!r} on {device}"
        from .kernels.numba_step import StepWeights, unsupported_reason

        reason = unsupported_reason(self)
        return reason if reason is not None else StepWeights(self)
