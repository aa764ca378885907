"""Actor-critic for recurrent PPO: any backbone of the library (or an MLP, the no-memory control).

    obs [B, T, obs_dim] -> backbone(s) -> latent [B, T, hidden] -> actor head -> action distribution
                                                                 -> critic head -> value [B, T]

The same weights run two ways, like every backbone: `forward` over whole rollout sequences (PPO
update) and `step` one env tick at a time (rollout, evaluation). The policy state is one flat tuple
of batch-first tensors: the actor backbone's state followed by the critic backbone's (when the
critic has its own), so "reset env i" is still `mask_state(state, starts)`, and PPO can store and
index it without knowing which backbone is inside.

Actions: `Discrete(n)` -> categorical; 1-D `Box` -> diagonal Gaussian with a state-independent
log-std (CleanRL/SB3 convention; the trainer clips to the bounds when it sends actions to the env).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from recurrl.policies.backbones.base import Backbone, State, mask_state
from recurrl.policies.backbones.registry import BACKBONES, make_backbone

MLP = "mlp"


class MLPEncoder(Backbone):
    """Feed-forward "backbone" with an empty state: each tick sees only its own observation.

    The no-memory control for POMDP tasks. It follows the Backbone interface so PPO treats it like
    any other; `episode_starts` has nothing to reset.
    """

    name = MLP

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int = 2) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.Tanh()]
            width = hidden_dim
        self.net = nn.Sequential(*layers)

    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return []

    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        return self.net(x), ()  # [B, T, D] -> [B, T, H]

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.net(x), ()  # [B, D] -> [B, H]


def build_backbone(
    name: str, input_dim: int, hidden_dim: int, num_layers: int, options: dict | None
) -> Backbone:
    """A registry backbone by name, or the MLP control (`name="mlp"`)."""
    if name == MLP:
        if options:
            raise ValueError(f"backbone 'mlp' takes no options, got {sorted(options)}")
        return MLPEncoder(input_dim, hidden_dim, num_layers)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted([*BACKBONES, MLP]))}")
    return make_backbone(name, input_dim, hidden_dim, num_layers, **(options or {}))


@dataclass(frozen=True)
class SpaceSpec:
    """What the actor-critic needs to know about the env's spaces (also stored in checkpoints)."""

    obs_dim: int
    action_kind: str  # "discrete" or "continuous"
    action_dim: int  # number of discrete actions, or the Box dimension

    @staticmethod
    def from_spaces(observation_space: gym.Space, action_space: gym.Space) -> SpaceSpec:
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(
                f"PPO supports 1-D Box observation spaces only, got {observation_space}; flatten image "
                "observations with a gymnasium wrapper first (PPO's envs flatten Discrete/MultiDiscrete/Tuple/Dict "
                "ones themselves)"
            )
        if isinstance(action_space, gym.spaces.Discrete):
            if action_space.start != 0:
                raise ValueError(f"Discrete action spaces must start at 0, got start={action_space.start}")
            return SpaceSpec(int(observation_space.shape[0]), "discrete", int(action_space.n))
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
                raise ValueError(f"Box action space must have finite bounds, got {action_space}")
            return SpaceSpec(int(observation_space.shape[0]), "continuous", int(action_space.shape[0]))
        raise ValueError(
            f"unsupported action space {action_space}: PPO supports Discrete (categorical) and 1-D Box "
            "(Gaussian) actions; MultiDiscrete/MultiBinary/Dict/Tuple are not supported"
        )


def _head(input_dim: int, hidden: int, output_dim: int, last_gain: float) -> nn.Sequential:
    """A one-hidden-layer tanh MLP head with orthogonal init (the PPO convention)."""
    layers: list[nn.Module] = []
    width = input_dim
    if hidden > 0:
        layers += [nn.Linear(input_dim, hidden), nn.Tanh()]
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    for i, layer in enumerate(m for m in layers if isinstance(m, nn.Linear)):
        is_last = i == sum(isinstance(m, nn.Linear) for m in layers) - 1
        nn.init.orthogonal_(layer.weight, last_gain if is_last else float(np.sqrt(2)))
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Backbone(s) + actor head + critic head. `shared=True` uses one backbone for both."""

    def __init__(
        self,
        spec: SpaceSpec,
        backbone: str = "mingru",
        hidden_dim: int = 64,
        num_layers: int = 1,
        shared: bool = True,
        head_hidden: int = 64,
        backbone_options: dict | None = None,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.shared = shared
        self.actor_backbone = build_backbone(backbone, spec.obs_dim, hidden_dim, num_layers, backbone_options)
        self.critic_backbone = (
            None
            if shared
            else build_backbone(backbone, spec.obs_dim, hidden_dim, num_layers, backbone_options)
        )
        out = spec.action_dim
        self.actor_head = _head(hidden_dim, head_hidden, out, last_gain=0.01)
        self.critic_head = _head(hidden_dim, head_hidden, 1, last_gain=1.0)
        self.log_std = (
            nn.Parameter(torch.full((out,), log_std_init)) if spec.action_kind == "continuous" else None
        )
        self._n_actor_state = len(self.actor_backbone.state_shapes())

    # ----------------------------------------------------------------- state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        state = self.actor_backbone.initial_state(batch_size, device)
        if self.critic_backbone is not None:
            state = state + self.critic_backbone.initial_state(batch_size, device)
        return state

    def split_state(self, state: State | None) -> tuple[State | None, State | None]:
        """The flat policy state -> (actor backbone's part, critic backbone's part (empty when shared))."""
        if state is None:
            return None, None
        return state[: self._n_actor_state], state[self._n_actor_state :]

    @property
    def separate_critic(self) -> bool:
        """The critic has its own backbone: its values can be computed apart from acting (`act`)."""
        return self.critic_backbone is not None

    # ----------------------------------------------------------------- the two modes
    def forward(
        self, obs: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Distribution, Tensor, State]:
        """obs [B, T, obs_dim], episode_starts [B, T] -> (distribution over [B, T] actions, value [B, T], state)."""
        actor_state, critic_state = self.split_state(state)
        latent_pi, actor_state = self.actor_backbone(obs, actor_state, episode_starts)  # [B, T, H]
        if self.critic_backbone is None:
            latent_vf, critic_state = latent_pi, ()
        else:
            latent_vf, critic_state = self.critic_backbone(obs, critic_state, episode_starts)
        value = self.critic_head(latent_vf).squeeze(-1)  # [B, T]
        return self._distribution(self.actor_head(latent_pi)), value, actor_state + critic_state

    def step(
        self, obs: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Distribution, Tensor, State]:
        """One tick. obs [B, obs_dim], episode_starts [B] -> (distribution over [B] actions, value [B], state)."""
        if episode_starts is not None:
            state = mask_state(state, episode_starts.to(torch.bool))
        actor_state, critic_state = self.split_state(state)
        latent_pi, actor_state = self.actor_backbone.step(obs, actor_state)  # [B, H]
        if self.critic_backbone is None:
            latent_vf, critic_state = latent_pi, ()
        else:
            latent_vf, critic_state = self.critic_backbone.step(obs, critic_state)
        value = self.critic_head(latent_vf).squeeze(-1)  # [B]
        return self._distribution(self.actor_head(latent_pi)), value, actor_state + critic_state

    def act(
        self, obs: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Distribution, Tensor | None, State]:
        """One tick of acting. obs [B, obs_dim], episode_starts [B] -> (distribution, value [B] or None, state).

        With a shared backbone this is `step`. With a separate critic only the actor runs: the value is
        None and the critic's part of the state is returned unchanged. A rollout then gets all its values
        at once from `critic_forward` over the whole rollout (one parallel scan instead of a critic step
        per tick; the same values, since forward and step agree), and evaluation skips the critic.
        """
        if not self.separate_critic:
            return self.step(obs, state, episode_starts)
        actor_state, critic_state = self.split_state(state)
        if episode_starts is not None:
            actor_state = mask_state(actor_state, episode_starts.to(torch.bool))
        latent_pi, actor_state = self.actor_backbone.step(obs, actor_state)  # [B, H]
        return self._distribution(self.actor_head(latent_pi)), None, actor_state + critic_state

    def critic_forward(
        self, obs: Tensor, state: State | None, episode_starts: Tensor | None
    ) -> tuple[Tensor, State]:
        """The separate critic alone over whole sequences: obs [B, T, obs_dim], the full policy `state`
        at the sequences' start (only its critic part is read), episode_starts [B, T]
        -> (values [B, T], the critic's part of the state after the last step)."""
        if self.critic_backbone is None:
            raise ValueError("critic_forward needs a separate critic backbone (shared=False)")
        _, critic_state = self.split_state(state)
        latent_vf, critic_state = self.critic_backbone(obs, critic_state, episode_starts)
        return self.critic_head(latent_vf).squeeze(-1), critic_state

    def _distribution(self, out: Tensor) -> Distribution:
        """Actor head output [..., action_dim] -> a distribution whose batch shape is [...]."""
        if self.log_std is None:
            return Categorical(logits=out, validate_args=False)  # skip per-tick checks: hot path
        return Independent(
            Normal(out, self.log_std.exp().expand_as(out), validate_args=False), 1, validate_args=False
        )

    @staticmethod
    def sample(dist: Distribution) -> tuple[Tensor, Tensor]:
        """A sampled action and its log-probability (the per-tick rollout path).

        Categorical: the Gumbel-max trick on the normalized logits, argmax(logits + Gumbel noise), which
        draws from the same distribution as `dist.sample()`; with the log-prob gathered from the same
        logits it costs ~8 us per tick instead of ~36 us for torch's multinomial sample + log_prob.
        """
        if isinstance(dist, Categorical):
            logits = dist.logits
            action = (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)
            return action, logits.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        action = dist.sample()
        return action, dist.log_prob(action)

    @staticmethod
    def deterministic_action(dist: Distribution) -> Tensor:
        """The mode: argmax for categorical, the mean for Gaussian."""
        if isinstance(dist, Categorical):
            return dist.probs.argmax(-1)
        return dist.mean
