"""RMSNorm (Zhang & Sennrich 2019), Mamba's norm, on compiled CPU kernels (numba_rms_norm.py) in training.

    y = x * r * w,   r = 1 / sqrt(mean(x^2) + eps) over the last dim;   x [..., H], w [H] -> y [..., H]

torch's CPU `rms_norm` is a composite of elementwise ops, and autograd differentiates each of them: a
DT-Mamba training step (2 layers, width 64) spent ~1.3 ms of its ~39 ms in the ~25 small ops of its three
norms' forward and backward. Here one pass over each row forward and one backward, with the gradients in
closed form (as mamba_ssm's fused RMSNorm computes them):

    x_hat = x * r,   g_hat = g * w
    dw = sum over rows of g * x_hat,   dx = r * (g_hat - x_hat * mean(g_hat * x_hat))

Sums accumulate in the input's dtype (fp32, fp64 in the exact tests), as torch's do. A double backward
(create_graph=True) differentiates torch's `rms_norm` instead, as the scan kernels hand over to their
references; without numba, under autocast, forward-mode AD or on another device, torch's `rms_norm` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_backends import numba_available, outside_forward_ad


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x [..., H], weight [H] or None (no scale), eps -> y [..., H]: the kernels in CPU training with a
    weight (fp32/fp64, no autocast, not under forward-mode AD, numba installed), else torch's `rms_norm`
    (the same numbers)."""
    fused = (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and weight is not None
        and (x.requires_grad or weight.requires_grad)
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
        and outside_forward_ad()
        and numba_available()
    )
    if not fused:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    from .numba_rms_norm import NumbaRMSNorm

    return NumbaRMSNorm.apply(x, weight, eps)
