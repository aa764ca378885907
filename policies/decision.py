"""Decision-Transformer-style model whose sequence model is any backbone of the library.

Decision Transformer (Chen et al. 2021) reads a trajectory as tokens (return-to-go R_t, state s_t,
action a_t) plus a timestep embedding and predicts a_t from the output at the s_t token. Here the
sequence model is a `Backbone`, so the same model trains by `forward` over whole segments and acts
by `step`, one environment tick at a time, carrying the backbone state through the episode instead
of re-encoding a K-step window at every tick.

Token layouts:
  "triple": 3 tokens per timestep, [R_0, s_0, a_0, R_1, s_1, a_1, ...]: the backbone sees 3T steps.
  "fused":  1 token per timestep, embed(R_t) + embed(s_t) + embed(a_{t-1}) (a_{-1} = 0): T steps.
            a_t is not known when it is predicted, so the fused token carries the previous action.
            `previous_actions=False` leaves a_{t-1} out (embed(R_t) + embed(s_t)): actions are strongly
            autocorrelated, and a model fed its last action can lower its loss by copying it instead of
            reading the state (the "copycat" shortcut of behaviour cloning from histories, Wen et al. 2020).

The model owns its input normalization: raw states are normalized with the dataset's mean/std
(buffers, so they travel with the weights), returns-to-go are divided by `return_scale`, and
continuous actions are mapped from the action space's bounds to [-1, 1] (the tanh head's range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones.base import (
    State,
    count_parameters,
    run_dropout,
    run_embedding,
    run_layer_norm,
    run_linear,
)
from .backbones.registry import make_backbone

TokenLayout = Literal["triple", "fused"]


@dataclass
class DecisionModelConfig:
    """What a DecisionModel is built from (saved as JSON beside the weights: `model_kwargs`).

    `discrete=True` means a `Discrete(act_dim)` action space: actions are integer indices and the head
    gives logits; otherwise actions are `[act_dim]` vectors and the head is tanh-squashed.
    """

    state_dim: int
    act_dim: int
    discrete: bool = False
    backbone_name: str = "mingru"
    hidden_dim: int = 128
    num_layers: int = 3
    backbone_options: dict[str, Any] = field(default_factory=dict)
    tokens: TokenLayout = "triple"
    previous_actions: bool = True  # fused tokens only: embed a_{t-1} into the token at t
    max_timestep: int = 1000  # size of the timestep embedding (longer episodes reuse the last one)
    return_scale: float = 1000.0  # returns-to-go are divided by this
    dropout: float = 0.1  # on the token embeddings
    # dataset statistics: observation mean/std [state_dim], continuous action bounds [act_dim]
    obs_mean: np.ndarray | Tensor | None = None
    obs_std: np.ndarray | Tensor | None = None
    action_low: np.ndarray | Tensor | None = None
    action_high: np.ndarray | Tensor | None = None


class DecisionModel(nn.Module):
    """(return-to-go, state, action) sequences -> actions, on any backbone (see DecisionModelConfig)."""

    def __init__(self, config: DecisionModelConfig) -> None:
        c = config
        state_dim, act_dim, discrete, tokens = c.state_dim, c.act_dim, c.discrete, c.tokens
        previous_actions, max_timestep, return_scale = c.previous_actions, c.max_timestep, c.return_scale
        hidden_dim, num_layers, backbone_name = c.hidden_dim, c.num_layers, c.backbone_name
        super().__init__()
        if state_dim <= 0 or act_dim <= 0:
            raise ValueError(
                f"DecisionModel: state_dim and act_dim must be positive, got {state_dim}, {act_dim}"
            )
        if tokens not in ("triple", "fused"):
            raise ValueError(f"DecisionModel: tokens must be 'triple' or 'fused', got {tokens!r}")
        if not previous_actions and tokens != "fused":
            raise ValueError(
                "DecisionModel: previous_actions=False needs tokens='fused' (triple tokens give each action "
                "a token of its own)"
            )
        if max_timestep <= 0 or return_scale <= 0:
            raise ValueError(
                f"DecisionModel: max_timestep and return_scale must be positive, got {max_timestep}, {return_scale}"
            )
        self.state_dim, self.act_dim, self.discrete = state_dim, act_dim, discrete
        self.tokens: TokenLayout = tokens
        self.previous_actions = previous_actions
        self.max_timestep = max_timestep
        self.return_scale = float(return_scale)
        self.hidden_dim = hidden_dim

        # Normalization statistics: buffers, so they are saved with the weights and follow .to(device).
        self.register_buffer("obs_mean", _vector(c.obs_mean, state_dim, 0.0))
        self.register_buffer("obs_std", _vector(c.obs_std, state_dim, 1.0).clamp_min(1e-6))
        if not discrete:
            low, high = _vector(c.action_low, act_dim, -1.0), _vector(c.action_high, act_dim, 1.0)
            if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
                raise ValueError("DecisionModel: continuous actions need finite bounds with high > low")
            self.register_buffer("action_low", low)
            self.register_buffer("action_high", high)

        self.embed_timestep = nn.Embedding(max_timestep, hidden_dim)
        self.embed_return = nn.Linear(1, hidden_dim)
        self.embed_state = nn.Linear(state_dim, hidden_dim)
        self.embed_action: nn.Module | None = None
        if previous_actions:
            self.embed_action = (
                nn.Embedding(act_dim + 1, hidden_dim) if discrete else nn.Linear(act_dim, hidden_dim)
            )
        self.embed_ln = nn.LayerNorm(hidden_dim)
        # nn.Dropout, not the Transformer's MaskDropout: a different mask stream here would change every
        # backbone's seeded results (the no-argument run, the comparison grid's cells) for ~0.6% of a step.
        self.embed_dropout = nn.Dropout(c.dropout)
        self.backbone = make_backbone(backbone_name, hidden_dim, hidden_dim, num_layers, **c.backbone_options)
        self.backbone_name = backbone_name
        self.head = nn.Linear(hidden_dim, act_dim)
        # GPT-style init for the embeddings and head; the backbone keeps its own init.
        for module in (
            self.embed_timestep,
            self.embed_return,
            self.embed_state,
            self.embed_action,
            self.head,
        ):
            if module is not None:
                _init_weights(module)

    # ------------------------------------------------------------------ normalization
    def normalize_states(self, states: Tensor) -> Tensor:
        return (states - self.obs_mean) / self.obs_std

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Env actions -> model units: [-1, 1] for continuous; indices unchanged for discrete."""
        if self.discrete:
            return actions
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        """Model units ([-1, 1]) -> env actions in the action space's bounds."""
        return self.action_low + (actions + 1.0) * 0.5 * (self.action_high - self.action_low)

    # ------------------------------------------------------------------ embeddings
    def _embed(
        self, returns_to_go: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Any leading shape [...]: -> (return, state, action, time) embeddings, each [..., H]
        (action None when the model takes no previous actions).

        returns_to_go [..., 1] raw; states [..., S] raw; actions in model units ([..., A] in [-1, 1],
        or [...] indices with -1 meaning "no action yet" for discrete); timesteps [...] int.
        Functional calls on the layers' parameters (see backbones.base.run_linear): the per-tick step
        runs this at every tick, where Module calls cost more than the arithmetic.
        """
        time = run_embedding(self.embed_timestep, timesteps.long().clamp(0, self.max_timestep - 1))
        ret = run_linear(self.embed_return, returns_to_go / self.return_scale)
        state = run_linear(self.embed_state, self.normalize_states(states))
        if self.embed_action is None:
            act = None
        elif self.discrete:
            act = run_embedding(self.embed_action, actions.long() + 1)  # index 0 = "no previous action"
        else:
            act = run_linear(self.embed_action, actions)
        return ret, state, act, time

    @staticmethod
    def _fused(ret: Tensor, sta: Tensor, act: Tensor | None, time: Tensor) -> Tensor:
        """One fused token's summed embeddings [..., H] (without a_{t-1} when act is None)."""
        x = ret + sta + time
        return x if act is None else x + act

    def _tokens(self, x: Tensor) -> Tensor:
        """Summed embeddings [..., H] -> backbone input tokens [..., H] (LayerNorm, dropout)."""
        return run_dropout(self.embed_dropout, run_layer_norm(self.embed_ln, x))

    def _action_out(self, h: Tensor) -> Tensor:
        """Backbone output [..., H] -> tanh action in [-1, 1] [..., A], or logits [..., A] (discrete)."""
        out = run_linear(self.head, h)
        return out if self.discrete else torch.tanh(out)

    def _forget_actions(self, actions: Tensor, starts: Tensor) -> Tensor:
        """Previous actions -> "none" (0, or index -1 when discrete) where an episode starts.
        actions [..., A] in model units or [...] indices, starts [...] bool -> same shape as actions."""
        mask = starts if self.discrete else starts.unsqueeze(-1)
        return torch.where(mask, -1 if self.discrete else 0.0, actions)  # one op per tick, dtype kept

    # ------------------------------------------------------------------ training: whole sequences
    def forward(
        self,
        returns_to_go: Tensor,
        states: Tensor,
        actions: Tensor,
        timesteps: Tensor,
        episode_starts: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[Tensor, State]:
        """Predict a_t for every t from (R_<=t, s_<=t, a_<t).

        returns_to_go [B, T, 1] (raw), states [B, T, S] (raw), actions [B, T, A] in model units
        (`normalize_actions`) or [B, T] indices (discrete), timesteps [B, T] int,
        episode_starts [B, T] bool or None -> (predictions [B, T, A]: tanh actions in [-1, 1] or
        logits, backbone state after the last token).
        """
        batch, length = states.shape[:2]
        if self.tokens == "triple":
            ret, sta, act, time = self._embed(returns_to_go, states, actions, timesteps)
            assert act is not None  # triple tokens always embed actions (checked in __init__)
            # [B, T, 3, H] -> [B, 3T, H]: R_t, s_t, a_t interleaved.
            seq = torch.stack([ret + time, sta + time, act + time], dim=2).reshape(batch, 3 * length, -1)
            starts = None
            if episode_starts is not None:
                # A new episode begins at its R token; s and a tokens never start one.
                starts = torch.zeros(batch, length, 3, dtype=torch.bool, device=states.device)
                starts[:, :, 0] = episode_starts.bool()
                starts = starts.reshape(batch, 3 * length)
            y, state = self.backbone(self._tokens(seq), state, starts)
            h = y.reshape(batch, length, 3, -1)[:, :, 1]  # outputs at the s_t tokens
        else:
            prev = self._previous_actions(actions, episode_starts)
            ret, sta, act, time = self._embed(returns_to_go, states, prev, timesteps)
            y, state = self.backbone(self._tokens(self._fused(ret, sta, act, time)), state, episode_starts)
            h = y
        return self._action_out(h), state

    def _previous_actions(self, actions: Tensor, episode_starts: Tensor | None) -> Tensor:
        """a_{t-1} for each t ("none" at t=0 and at episode starts): [B, T, A] or [B, T] indices."""
        none = -1 if self.discrete else 0.0
        prev = torch.cat([torch.full_like(actions[:, :1], none), actions[:, :-1]], dim=1)
        if episode_starts is not None:
            prev = self._forget_actions(prev, episode_starts.bool())
        return prev

    # ------------------------------------------------------------------ acting: one tick
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.backbone.initial_state(batch_size, device)

    def step(
        self,
        returns_to_go: Tensor,
        states: Tensor,
        prev_actions: Tensor,
        timesteps: Tensor,
        state: State,
        episode_starts: Tensor,
    ) -> tuple[Tensor, State]:
        """One env tick for B envs at once: feed a_{t-1} (if any), R_t and s_t; predict a_t.

        returns_to_go [B, 1] raw, states [B, S] raw, prev_actions [B, A] in model units or [B]
        indices (ignored where the episode starts), timesteps [B] int (t of R_t/s_t),
        episode_starts [B] bool -> (predictions [B, A] (tanh actions or logits), new state).
        Triple tokens: up to 3 backbone steps (a_{t-1}, R_t, s_t); fused: 1.
        """
        starts = episode_starts.bool()
        if self.tokens == "triple":
            ret, sta, act, time = self._embed(returns_to_go, states, prev_actions, timesteps)
            assert act is not None  # triple tokens always embed actions (checked in __init__)
            if not bool(starts.all()):
                # The action token of the previous tick. For rows whose episode starts now it is fed too
                # (batched), but the R_t step below resets their state, so it is forgotten.
                prev_time = run_embedding(
                    self.embed_timestep, (timesteps.long() - 1).clamp(0, self.max_timestep - 1)
                )
                _, state = self.backbone.step(self._tokens(act + prev_time), state)
            _, state = self.backbone.step(self._tokens(ret + time), state, starts)
            h, state = self.backbone.step(self._tokens(sta + time), state)
        else:
            prev = self._forget_actions(prev_actions, starts)
            ret, sta, act, time = self._embed(returns_to_go, states, prev, timesteps)
            h, state = self.backbone.step(self._tokens(self._fused(ret, sta, act, time)), state, starts)
        return self._action_out(h), state

    def predictions_to_actions(self, predictions: Tensor) -> Tensor:
        """Head output -> env actions: argmax indices (discrete) or actions in the space's bounds."""
        if self.discrete:
            return predictions.argmax(dim=-1)
        return self.unnormalize_actions(predictions)

    def num_parameters(self) -> int:
        return count_parameters(self)


def action_loss(
    model: DecisionModel, predictions: Tensor, targets: Tensor, mask: Tensor, total_steps: int | None = None
) -> Tensor:
    """Mean loss over real (unpadded) steps. predictions [B, T, A]; targets [B, T, A] (model units) or
    [B, T] indices; mask [B, T] bool. MSE for continuous actions (as DT), cross-entropy for discrete.
    `total_steps`: divide by this instead of the mask's count (the real steps of a larger batch these
    rows are part of: data-parallel shares then add up to the whole batch's mean)."""
    weight = mask.to(predictions.dtype)
    if model.discrete:
        per_step = F.cross_entropy(predictions.flatten(0, 1), targets.long().flatten(), reduction="none")
    else:
        per_step = ((predictions - targets) ** 2).mean(dim=-1).flatten()
    count = weight.sum().clamp_min(1.0) if total_steps is None else max(total_steps, 1)
    return (per_step * weight.flatten()).sum() / count


def _vector(value: np.ndarray | Tensor | None, size: int, default: float) -> Tensor:
    if value is None:
        return torch.full((size,), default, dtype=torch.float32)
    tensor = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
    if tensor.numel() != size:
        raise ValueError(f"DecisionModel: expected a statistics vector of size {size}, got {tensor.numel()}")
    return tensor


def _init_weights(module: nn.Module) -> None:
    nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
