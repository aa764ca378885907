"""sb3-contrib adapter: any recurrent backbone of the library inside `sb3_contrib.RecurrentPPO`.

    from sb3_contrib import RecurrentPPO
    from recurrl.policies.integrations.sb3 import MinGRUPolicy
    model = RecurrentPPO(MinGRUPolicy, "CartPoleNoVel-v1", policy_kwargs={"lstm_hidden_size": 64})

The policy subclasses sb3-contrib's `RecurrentActorCriticPolicy` and swaps its `nn.LSTM`s for our
backbone, so RecurrentPPO's rollout buffer, `predict`, `evaluate_policy`, `save` and `load` work
unchanged. Training sequences go through the backbone's `forward` with `episode_starts` in one call
(sb3-contrib's own LSTM path falls back to a per-step Python loop whenever an episode starts inside
a minibatch).

State layout. sb3-contrib stores recurrent state as an LSTM pair `(h, c)`, each
`[num_layers, n_envs, hidden_size]`, and reads `num_layers`/`hidden_size` off `policy.lstm_actor` to
size its buffer. `BackboneAsLSTM` reports `num_layers=1` and `hidden_size=S`, the number of state
values per env of the backbone (for minGRU: layers * inner width); `h` holds the backbone state
flattened per env and `c` is unused (kept at zeros). Zeros are the fresh state in both conventions.
`lstm_hidden_size` and `n_lstm_layers` keep their sb3 meaning for the *model*: the backbone's
width and depth.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from recurrl.policies.backbones.base import Backbone, State
from recurrl.policies.backbones.registry import make_backbone


class BackboneAsLSTM(nn.Module):
    """A backbone dressed as the `nn.LSTM` that sb3-contrib expects (attributes and state layout)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = backbone.input_dim
        self._shapes = backbone.state_shapes()
        self._sizes = [math.prod(shape) for shape, _ in self._shapes]
        self.num_layers = 1  # sb3 layout: h = [1, n_envs, hidden_size]
        self.hidden_size = max(1, sum(self._sizes))  # >= 1 so sb3's buffers are never empty

    # ----------------------------------------------------------------- state conversion
    def to_backbone_state(self, lstm_states: tuple[Tensor, Tensor]) -> State:
        """(h [1, B, S], c [1, B, S]) -> backbone state, tensors [B, *shape]."""
        flat = lstm_states[0][0]  # [B, S]
        parts = torch.split(flat, self._sizes, dim=1) if self._sizes else ()
        return tuple(
            part.reshape(flat.shape[0], *shape).to(dtype)
            for part, (shape, dtype) in zip(parts, self._shapes, strict=True)
        )

    def to_lstm_states(self, state: State, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone state -> (h [1, B, S], c [1, B, S] zeros)."""
        if state:
            flat = torch.cat([s.reshape(batch, -1).to(like.dtype) for s in state], dim=1)
        else:
            flat = like.new_zeros(batch, self.hidden_size)
        h = flat.unsqueeze(0)
        return h, torch.zeros_like(h)

    # ----------------------------------------------------------------- sb3's _process_sequence
    def process(
        self, features: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """features [n_seq * T, D] (sequence-major, as sb3 flattens), episode_starts [n_seq * T]
        -> (latent [n_seq * T, hidden], (h, c) after the last step)."""
        n_seq = lstm_states[0].shape[1]
        x = features.reshape(n_seq, -1, self.input_size)  # [n_seq, T, D]
        starts = episode_starts.reshape(n_seq, -1) > 0.5  # [n_seq, T] bool
        state = self.to_backbone_state(lstm_states)
        if x.shape[1] == 1:  # rollout / predict: one tick per env
            y, state = self.backbone.step(x[:, 0], state, starts[:, 0])  # [n_seq, H]
        else:  # training: the whole padded sequences in one call, resets wherever they fall
            y, state = self.backbone(x, state, starts)  # [n_seq, T, H]
        return y.reshape(-1, self.backbone.hidden_dim), self.to_lstm_states(state, n_seq, features)


class RecurrentBackbonePolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent actor-critic with a library backbone (`backbone=` a registry name).

    Takes every keyword of `RecurrentActorCriticPolicy`; `lstm_hidden_size` is the backbone width,
    `n_lstm_layers` its depth, `lstm_kwargs` its options (e.g. `{"scan": "loop"}` for minGRU).
    """

    default_backbone = "mingru"

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        backbone: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.backbone_name = backbone or self.default_backbone
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(
                f"{type(self).__name__} supports Box observation spaces, got {observation_space}; "
                "flatten Dict/Tuple observations first (gymnasium FlattenObservation)"
            )
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
        hidden = self.lstm_output_dim
        layers = self.lstm_actor.num_layers
        # Replace the LSTMs that the parent built with the backbone (same roles: actor, optional critic).
        self.lstm_actor = self._make(self.features_dim, hidden, layers)
        if self.lstm_critic is not None:
            self.lstm_critic = self._make(self.features_dim, hidden, layers)
        self.lstm_hidden_state_shape = (1, 1, self.lstm_actor.hidden_size)  # what predict() starts from
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _make(self, input_dim: int, hidden: int, layers: int) -> BackboneAsLSTM:
        return BackboneAsLSTM(
            make_backbone(self.backbone_name, input_dim, hidden, layers, **self.lstm_kwargs)
        )

    @staticmethod
    def _process_sequence(
        features: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor, lstm: nn.Module
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if isinstance(lstm, BackboneAsLSTM):
            return lstm.process(features, lstm_states, episode_starts)
        return RecurrentActorCriticPolicy._process_sequence(features, lstm_states, episode_starts, lstm)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            backbone=self.backbone_name,
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.lstm_actor.backbone.num_layers,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=self.lstm_kwargs,
        )
        return data


class MinGRUPolicy(RecurrentBackbonePolicy):
    """`RecurrentPPO(MinGRUPolicy, env)`: minGRU in place of the LSTM."""

    default_backbone = "mingru"


class MinLSTMPolicy(RecurrentBackbonePolicy):
    """`RecurrentPPO(MinLSTMPolicy, env)`: minLSTM in place of the LSTM."""

    default_backbone = "minlstm"
