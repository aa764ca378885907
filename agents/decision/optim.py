"""The Decision agent's optimizer: AdamW with weight decay on matrices only, and its learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from recurrl.agents.devices import fused_optimizer_options
from recurrl.policies.decision import DecisionModel

from .config import DecisionConfig


def param_groups(model: DecisionModel, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (nanoGPT/DT convention), not on biases, norms, embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_embedding = name.startswith("embed_timestep") or (
            model.discrete and name.startswith("embed_action")
        )
        (decay if param.ndim >= 2 and not is_embedding else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: DecisionModel, config: DecisionConfig, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model` and the LambdaLR that applies `lr_factor` to it."""
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(0.9, 0.999),
        **fused_optimizer_options(device),
    )
    # Reads the config at every step rather than a copy of its values, so extending a run
    # (`--resume ... steps=N`) re-plans the decay.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    return optimizer, scheduler


def lr_factor(config: DecisionConfig, step: int) -> float:
    """Multiplier of config.lr for optimizer step `step` (0-based): linear warmup over warmup_steps, then
    constant, or a half cosine from 1 down to min_lr_ratio at config.steps."""
    warmup = max(config.warmup_steps, 1)
    if step + 1 < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(max(step + 1 - warmup, 0) / max(config.steps - warmup, 1), 1.0)
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
