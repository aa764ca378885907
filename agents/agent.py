"""Trained agents in your own loop: `recurrl.load(checkpoint)` -> an agent with Stable-Baselines3's `predict`.

    agent = recurrl.load("runs/<name>")      # a run directory means its checkpoints/last
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    state, reward, start = None, 0.0, True
    for _ in range(1000):
        action, state = agent.predict(obs, state, episode_start=start, reward=reward)
        obs, reward, terminated, truncated, _ = env.step(action)
        start = terminated or truncated
        if start:
            obs, _ = env.reset()              # keep the state: episode_start=True makes it forget

`predict(obs, state=None, episode_start=None, deterministic=True, reward=None) -> (action, state)`:
`obs` is one observation or a batch `[B, ...]` (one row per env); `state` is carried by the caller
(None = fresh); `episode_start[b]` True means obs[b] is the first of a new episode (SB3's name and
meaning). The Decision agent also takes `reward`: the reward of the previous step, which it subtracts
from the return-to-go it conditions on, as the Decision Transformer does; each episode starts from the
target return set at load or by `set_target_return`.

Both agents run exactly what the project's evaluators run each tick (agents/decision/evaluation.py,
agents/ppo/evaluation.py): the same model step, the same inputs, the same compiled kernels, so a loop
of `predict` reproduces `recurrl evaluate` episode by episode (tests/test_agent_api.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from recurrl.agents.checkpoint import META, CheckpointError, read_meta
from recurrl.policies.backbones.base import State
from recurrl.policies.decision import DecisionModel

KINDS = ("decision", "ppo")


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its checkpoints/last)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    if (path / "checkpoints" / "last" / META).is_file():
        return path / "checkpoints" / "last"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    raise CheckpointError(
        f"{str(path)!r} is neither a checkpoint (no {META}) nor a run directory (no checkpoints/last)"
    )


def checkpoint_kind(path: Path) -> str:
    """'decision' or 'ppo'; anything else is a CheckpointError naming what was found."""
    kind = read_meta(path).get("kind")  # corrupt, not UTF-8, not an object, incomplete: one CheckpointError
    if kind not in KINDS:
        raise CheckpointError(
            f"{path}: unknown checkpoint kind {kind!r}; recurrl loads 'decision' and 'ppo' checkpoints"
        )
    return str(kind)


def load(
    path: str | Path, target_return: float | None = None, device: str | torch.device = "cpu"
) -> DecisionAgent | PPOAgent:
    """The agent saved at `path` (a checkpoint or a run directory), ready to `predict`.

    `target_return` (Decision agents only): the return each episode is conditioned on; default the
    checkpoint's first `eval.target_returns` (the one `recurrl train` evaluated with).
    The env packages the run imported (its config's `env_packages`) are imported again first.
    """
    path = checkpoint_path(path)
    if checkpoint_kind(path) == "decision":
        from recurrl.agents.decision.model_io import load_decision_checkpoint

        model, meta = load_decision_checkpoint(path, device)
        return DecisionAgent(model, meta, target_return, device)
    if target_return is not None:
        raise ValueError(f"{path} is a PPO checkpoint: target_return applies to Decision agents only")
    from recurrl.agents.ppo.evaluation import load_ppo_checkpoint

    policy, config, obs_norm = load_ppo_checkpoint(path, str(device))
    return PPOAgent(policy, config, obs_norm, device)


# ----------------------------------------------------------------------------- batching
def as_batch(obs: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> tuple[np.ndarray, bool]:
    """One observation of `shape` or a batch [B, *shape] -> ([B, prod(shape)] of `dtype`, was_single)."""
    array = np.asarray(obs, dtype=dtype)
    if array.shape == shape:
        return array.reshape(1, -1), True
    if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
        return array.reshape(array.shape[0], -1), False
    raise ValueError(f"observation must be shaped {shape} or [B, *{shape}], got {array.shape}")


def batch_flags(value: Any, batch: int, name: str, default: bool | float) -> np.ndarray:
    """episode_start / reward: None (-> default), a scalar, or one value per row -> [B]."""
    if value is None:
        return np.full(batch, default)
    array = np.asarray(value).reshape(-1)
    if array.size == 1:
        return np.full(batch, array[0])
    if array.size != batch:
        raise ValueError(f"{name} must have one value per observation row ({batch}), got {array.size}")
    return array


# ----------------------------------------------------------------------------- Decision agent
class DecisionState(NamedTuple):
    """What a Decision agent carries between ticks, per env row (zeros = fresh)."""

    backbone: State  # the backbone's recurrent state
    prev_action: Tensor  # a_{t-1}: [B, A] in model units ([-1, 1]) or [B] indices (discrete)
    returns_to_go: Tensor  # [B] float32: the return-to-go this tick was conditioned on
    timestep: Tensor  # [B] int64: this tick's t


def fresh_decision_state(model: DecisionModel, batch: int, device: torch.device | str) -> DecisionState:
    prev_shape = (batch,) if model.discrete else (batch, model.act_dim)
    return DecisionState(
        model.initial_state(batch, device),
        torch.zeros(prev_shape, dtype=torch.long if model.discrete else torch.float32, device=device),
        torch.zeros(batch, dtype=torch.float32, device=device),
        torch.zeros(batch, dtype=torch.long, device=device),
    )


def decision_tick(
    model: DecisionModel,
    obs: Tensor,
    reward: Tensor,
    episode_start: Tensor,
    target_return: Tensor,
    state: DecisionState,
) -> tuple[Tensor, DecisionState]:
    """One tick, the evaluator's bookkeeping as tensor ops (so ONNX export traces this very function).

    obs [B, S] raw, reward [B] float32 (the previous step's), episode_start [B] bool, target_return [B]
    -> (predictions [B, A]: tanh actions or logits, state with the new backbone state, return-to-go and
    timestep; prev_action is still the old one: the caller stores the action it takes).
    """
    # DT: condition on the return still to collect; a new episode starts from the target at t=0.
    rtg = torch.where(episode_start, target_return, state.returns_to_go - reward)
    timestep = torch.where(episode_start, torch.zeros_like(state.timestep), state.timestep + 1)
    pred, backbone = model.step(
        rtg.unsqueeze(-1), obs, state.prev_action, timestep, state.backbone, episode_start
    )
    return pred, DecisionState(backbone, state.prev_action, rtg, timestep)


class DecisionAgent:
    """A Decision (DT-style) agent acting one tick at a time with its backbone state carried."""

    kind = "decision"

    def __init__(
        self,
        model: DecisionModel,
        meta: dict[str, Any],
        target_return: float | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from recurrl.agents.decision.model_io import env_spec_from_meta

        self.model = model.eval()
        self.meta = meta
        self.device = torch.device(device)
        self.spec = env_spec_from_meta(meta)
        space = self.spec.observation_space
        self.obs_shape = tuple(space["shape"]) if space is not None else (model.state_dim,)
        targets = meta.get("config", {}).get("eval", {}).get("target_returns") or []
        if target_return is None and not targets:
            raise ValueError(
                f"{self.spec.env_id}: the checkpoint names no target return; pass target_return="
            )
        self.set_target_return(targets[0] if target_return is None else target_return)

    @property
    def target_return(self) -> float:
        return self._target

    def set_target_return(self, target_return: float) -> None:
        """The return episodes that start from now on are conditioned on (running episodes keep theirs)."""
        target = float(target_return)
        if not np.isfinite(target):
            raise ValueError(f"target return must be a finite number, got {target_return!r}")
        self._target = float(np.float32(target))  # the evaluator conditions on float32

    def make_env(self, **kwargs: Any) -> gym.Env:
        """The env the agent was trained for (the dataset's env id and kwargs)."""
        return gym.make(self.spec.env_id, **{**self.spec.env_kwargs, **kwargs})

    def initial_state(self, batch_size: int = 1) -> DecisionState:
        return fresh_decision_state(self.model, batch_size, self.device)

    @torch.inference_mode()
    def predict(
        self,
        obs: Any,
        state: DecisionState | None = None,
        episode_start: Any = None,
        deterministic: bool = True,
        reward: Any = None,
    ) -> tuple[np.ndarray, DecisionState]:
        """obs [*obs_shape] or [B, *obs_shape] -> (env action(s), state). `reward`: the previous step's
        reward per row (None = 0). `deterministic=False` samples discrete actions from the logits;
        continuous actions are always the model's (deterministic) output."""
        x, single = as_batch(obs, self.obs_shape)
        batch = x.shape[0]
        if state is None:
            state, starts = self.initial_state(batch), np.ones(batch, dtype=bool)
        else:
            self._check_state(state, batch)
            starts = batch_flags(episode_start, batch, "episode_start", False).astype(bool)
        rewards = batch_flags(reward, batch, "reward", 0.0).astype(np.float32)
        d = self.device
        pred, state = decision_tick(
            self.model,
            torch.from_numpy(x).to(d),
            torch.from_numpy(rewards).to(d),
            torch.from_numpy(starts).to(d),
            torch.full((batch,), self._target, dtype=torch.float32, device=d),
            state,
        )
        if self.model.discrete:
            if deterministic:
                index = pred.argmax(-1)
            else:
                index = torch.distributions.Categorical(logits=pred.float()).sample()
            state, action = state._replace(prev_action=index), index
        else:
            state = state._replace(prev_action=pred.float())
            action = self.model.predictions_to_actions(pred)
        out = action.cpu().numpy()
        return (out[0] if single else out), state

    def _check_state(self, state: Any, batch: int) -> None:
        if not isinstance(state, DecisionState):
            raise ValueError(
                f"state must be the DecisionState a previous predict returned (or None), got {type(state).__name__}"
            )
        if state.timestep.shape[0] != batch:
            raise ValueError(
                f"state holds {state.timestep.shape[0]} env rows but obs has {batch}; pass state=None to start fresh"
            )


# ----------------------------------------------------------------------------- PPO agent
class PPOAgent:
    """A recurrent PPO policy acting one tick at a time (actor only), for your loop or SB3's
    `evaluate_policy`. Observations are normalized with the statistics frozen in the checkpoint.

    An env with a structured observation space (Discrete, MultiDiscrete, Tuple, Dict) was trained on
    its observations flattened by gymnasium's FlattenObservation; `predict` takes the env's raw
    observations and flattens them the same way (`gymnasium.spaces.flatten`), so `make_env()`'s
    observations go in unchanged. (Raw only: a flat vector can look like a batch of raw Discrete
    observations. The ONNX export takes the flat vector: `gymnasium.spaces.flatten(space, obs)`.)"""

    kind = "ppo"

    def __init__(self, policy: Any, config: Any, obs_norm: Any, device: str | torch.device = "cpu") -> None:
        self.policy = policy.eval()
        self.config = config
        self.obs_norm = obs_norm
        self.device = torch.device(device)
        self.spec = policy.spec
        self.observation_space: gym.Space | None = None  # the env's raw space, where it is structured
        self.action_low, self.action_high = self._read_env_spaces()

    def _read_env_spaces(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """From the env: its structured observation space (kept to flatten observations), and the Box
        bounds Gaussian actions are clipped to, as in training. Envs with neither are not made."""
        from recurrl.envs.vector import is_structured

        try:
            env = self.make_env()
        except Exception as error:  # gymnasium raises many types for unknown ids
            warnings.warn(
                f"cannot make {self.config.env_id!r} to read its spaces ({error}); actions are not clipped "
                "and observations must be given flattened",
                stacklevel=3,
            )
            return None, None
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
        if is_structured(obs_space):
            self.observation_space = obs_space
        if self.spec.action_kind == "discrete":
            return None, None
        return np.asarray(act_space.low, np.float32), np.asarray(act_space.high, np.float32)

    def make_env(self, **kwargs: Any) -> gym.Env:
        """The env the agent was trained on, raw (its packages imported when the checkpoint loaded)."""
        import recurrl.envs  # noqa: F401  (registers the POMDP tasks)

        return gym.make(self.config.env_id, **kwargs)

    def initial_state(self, batch_size: int = 1) -> State:
        return self.policy.initial_state(batch_size, self.device)

    @torch.no_grad()  # as the evaluator (agents/ppo/evaluation.py): the same kernels, the same numbers
    def predict(
        self,
        obs: Any,
        state: State | None = None,
        episode_start: Any = None,
        deterministic: bool = True,
        reward: Any = None,
    ) -> tuple[np.ndarray, State]:
        """obs [obs_dim] or [B, obs_dim] -> (env action(s), state); for a structured observation space,
        one raw observation, a list of them or a vector env's batch (flattened here). `reward` is
        accepted and unused (the policy does not condition on it), so one loop drives both kinds."""
        if self.observation_space is not None:
            from recurrl.envs.vector import flatten_observations

            obs = flatten_observations(self.observation_space, obs)
        # The dtype as given: the evaluator normalizes the env's own (often float64) observations.
        x, single = as_batch(obs, (self.spec.obs_dim,), dtype=None)
        batch = x.shape[0]
        if state is None:
            state, starts = self.initial_state(batch), np.ones(batch, dtype=bool)
        else:
            if not isinstance(state, tuple) or any(s.shape[0] != batch for s in state):
                raise ValueError(
                    f"state must be the tuple a previous predict returned for {batch} env rows (or None)"
                )
            starts = batch_flags(episode_start, batch, "episode_start", False).astype(bool)
        d = self.device
        inputs = torch.as_tensor(self.obs_norm(x, update=False), device=d)
        dist, _, state = self.policy.act(inputs, state, torch.as_tensor(starts, device=d))
        action = self.policy.deterministic_action(dist) if deterministic else dist.sample()
        out = action.cpu().numpy()
        if self.spec.action_kind == "discrete":
            out = out.astype(np.int64)
        elif self.action_low is not None:
            out = np.clip(out, self.action_low, self.action_high)
        return (out[0] if single else out), state
