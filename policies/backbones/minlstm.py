"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), trained by scan, run by step.

    f_t = sigmoid(Linear_f(x_t)),  i_t = sigmoid(Linear_i(x_t)),  h~_t = g(Linear_h(x_t))
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),  h_t = f'_t * h_{t-1} + i'_t * h~_t

Since f' + i' = 1, minLSTM is the gated recurrence of scan.py with z = i' = sigmoid(k),
k = log i - log f = logsigmoid(pre_i) - logsigmoid(pre_f). That is the paper's own log-space form
(log f' = -softplus(k), log i' = -softplus(-k)) and, unlike f / (f + i), it never divides 0 by 0
when both gates saturate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import run_linear
from .kernels.scan import acc, minlstm_gate_logit, minlstm_scan_tm
from .minrnn import MinRNNBackbone, MinRNNLayer


class MinLSTMLayer(MinRNNLayer):
    """One minLSTM recurrence: x [B, T, input_dim] -> h [B, T, hidden_dim]; `step` for one tick."""

    def __init__(self, input_dim: int, hidden_dim: int, scan: str = "auto") -> None:
        super().__init__(input_dim, hidden_dim, scan)
        # One matmul for Linear_f, Linear_i, Linear_h (rows [0, H), [H, 2H), [2H, 3H)).
        self.proj = nn.Linear(input_dim, 3 * hidden_dim)

    def preactivations(self, x: Tensor) -> Tensor:
        """x [..., input_dim] -> [k | p] [..., 2H] with sigmoid(k) = i / (f + i), p = Linear_h(x)."""
        pre_f, pre_i, p = run_linear(self.proj, x).chunk(3, dim=-1)
        return torch.cat([minlstm_gate_logit(pre_f, pre_i), p], dim=-1)

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One tick: x [B, input_dim], h [B, H] -> h [B, H]. Same ops as the fused loop scan's step."""
        pre = acc(run_linear(self.proj, x))  # functional: per layer at every tick (see base.run_linear)
        if h.dtype != pre.dtype:
            h = h.to(pre.dtype)
        hidden = self.hidden_dim
        log_fi = F.logsigmoid(pre[:, : 2 * hidden])  # one op for log f and log i
        z = torch.sigmoid(log_fi[:, hidden:] - log_fi[:, :hidden])  # i / (f + i)
        p = pre[:, 2 * hidden :]
        return torch.lerp(h, torch.maximum(p + 0.5, torch.sigmoid(p)), z)

    def forward_tm(self, x: Tensor, h0: Tensor | None = None, starts_tm: Tensor | None = None) -> Tensor:
        """Time-major: x [T, B, input_dim], h0 [B, H], starts_tm [T, B] -> h [T, B, H]."""
        return minlstm_scan_tm(run_linear(self.proj, x), h0, starts_tm, self.scan)


class MinLSTM(MinRNNBackbone):
    """Residual stack of minLSTM layers (options: expansion_factor, mlp_ratio, dropout, scan)."""

    name = "minlstm"
    layer_cls = MinLSTMLayer
