"""The PPO objective on one minibatch of whole sequences: clipped surrogate, value loss, entropy bonus."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.rollout import RolloutBatch


@dataclass
class LossTerms:
    """The minibatch's loss and what is logged of it (the field order is the logged order)."""

    pg: Tensor  # clipped surrogate policy loss
    vf: Tensor  # value loss (0.5 * squared error, optionally clipped)
    ent: Tensor  # mean entropy of the action distribution
    kl: Tensor  # approximate KL(old || new), no gradient
    clip: Tensor  # fraction of ratios outside [1 - clip_coef, 1 + clip_coef], no gradient
    loss: Tensor  # what is minimized: pg - ent_coef * ent + vf_coef * vf

    def values(self) -> tuple[Tensor, ...]:
        # Not dataclasses.astuple: it deep-copies, and a non-leaf tensor cannot be deep-copied.
        return tuple(getattr(self, field.name) for field in fields(self))


def ppo_loss(
    dist: torch.distributions.Distribution, value: Tensor, mb: RolloutBatch, cfg: PPOConfig
) -> LossTerms:
    """`dist` and `value` [n, T]: the policy's outputs over the minibatch's sequences."""
    log_ratio = dist.log_prob(mb.actions) - mb.log_probs
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # the low-variance k3 estimator
        clip_fraction = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
    adv = mb.advantages
    if cfg.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    if cfg.clip_vloss:
        v_clipped = mb.values + (value - mb.values).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((value - mb.returns) ** 2, (v_clipped - mb.returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((value - mb.returns) ** 2).mean()
    entropy = dist.entropy().mean()
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    return LossTerms(pg_loss, v_loss, entropy, approx_kl, clip_fraction, loss)


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the whole rollout (NaN when the returns are constant)."""
    values, returns = values.flatten(), returns.flatten()
    var_returns = returns.var()
    return float("nan") if var_returns == 0 else float(1 - (returns - values).var() / var_returns)
