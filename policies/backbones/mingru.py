"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"), trained by scan, run by step.

    z_t = sigmoid(Linear_z(x_t)),  h~_t = g(Linear_h(x_t)),  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

The gates depend on x_t only, so h_t = a_t * h_{t-1} + b_t is a linear recurrence (see scan.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import run_linear
from .minrnn import MinRNNBackbone, MinRNNLayer


class MinGRULayer(MinRNNLayer):
    """One minGRU recurrence: x [B, T, input_dim] -> h [B, T, hidden_dim]; `step` for one tick."""

    def __init__(self, input_dim: int, hidden_dim: int, scan: str = "auto") -> None:
        super().__init__(input_dim, hidden_dim, scan)
        # One matmul for both Linear_z and Linear_h: rows [0, H) give z, rows [H, 2H) give h~.
        self.proj = nn.Linear(input_dim, 2 * hidden_dim)

    def preactivations(self, x: Tensor) -> Tensor:
        """x [..., input_dim] -> [k | p] [..., 2H]: k = Linear_z(x), p = Linear_h(x)."""
        return run_linear(self.proj, x)  # functional: this runs per layer at every tick (see base.run_linear)


class MinGRU(MinRNNBackbone):
    """Residual stack of minGRU layers (options: expansion_factor, mlp_ratio, dropout, scan)."""

    name = "mingru"
    layer_cls = MinGRULayer
