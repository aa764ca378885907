"""Behavior policies: the RL Baselines3 Zoo agents in ../shared/behavior-policies.

SECURITY: the zoo's `model.zip` (its `data` entry) and `vecnormalize.pkl` are Python pickles.
Unpickling runs code: load only files you trust, such as the ones shipped beside this repository.

The zips were written by an older stable-baselines3 that used the `gym` package. Rather than load
whole agents (optimizers, replay settings) we read the saved policy class and its keyword arguments,
build that policy for the Gymnasium v5 env's spaces, load `policy.pth` weights, and apply the
VecNormalize observation statistics ourselves: `clip((obs - mean) / sqrt(var + eps), -clip, clip)`.
Resolving the old `gym` references needs `gym` to be an alias of `gymnasium`; `gym_alias()` does it
only for the duration of a load.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

ALGOS = ("tqc", "sac", "ppo", "trpo", "a2c", "ars")
ZOO_ENV_NAMES = {"Hopper-v5": "Hopper", "HalfCheetah-v5": "HalfCheetah", "Walker2d-v5": "Walker2d"}
TRUST_WARNING = (
    "behavior-policy files (model.zip, vecnormalize.pkl) are pickles, which run code when loaded: "
    "load only files you trust"
)


def behavior_policies_dir() -> Path:
    """RECURRL_BEHAVIOR_POLICIES, else ../shared/behavior-policies beside the repository root."""
    override = os.environ.get("RECURRL_BEHAVIOR_POLICIES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "behavior-policies"


@contextlib.contextmanager
def gym_alias() -> Iterator[None]:
    """Make `import gym` (and `gym.spaces.box`, ...) resolve to gymnasium, then undo it."""
    import gymnasium.spaces  # noqa: F401  (load the submodules the pickles name)

    aliases = {
        "gym" + name[len("gymnasium") :]: module
        for name, module in list(sys.modules.items())
        if name == "gymnasium" or name.startswith("gymnasium.")
    }
    saved = {name: sys.modules[name] for name in aliases if name in sys.modules}
    sys.modules.update(aliases)
    try:
        yield
    finally:
        for name in aliases:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)


@dataclass
class ObsNormalizer:
    """VecNormalize's observation statistics."""

    mean: np.ndarray
    var: np.ndarray
    clip_obs: float
    epsilon: float

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - self.mean) / np.sqrt(self.var + self.epsilon), -self.clip_obs, self.clip_obs)


def load_obs_normalizer(path: Path) -> ObsNormalizer:
    """Read the observation statistics out of a pickled VecNormalize (trusted files only)."""
    with gym_alias(), open(path, "rb") as file:
        vec_normalize = pickle.load(file)  # noqa: S301  (trusted zoo file, see module doc)
    if not getattr(vec_normalize, "norm_obs", True):
        raise ValueError(f"{path}: VecNormalize does not normalize observations; nothing to apply")
    rms = vec_normalize.obs_rms
    return ObsNormalizer(
        mean=np.asarray(rms.mean, dtype=np.float64),
        var=np.asarray(rms.var, dtype=np.float64),
        clip_obs=float(vec_normalize.clip_obs),
        epsilon=float(vec_normalize.epsilon),
    )


class BehaviorPolicy:
    """A zoo agent acting on batches of raw env observations.

    `noise_std` adds Gaussian noise (in action units, then clipped to the action bounds) for the
    noisy tiers of a dataset suite.
    """

    def __init__(
        self,
        policy: Any,
        action_space: gym.spaces.Box,
        normalizer: ObsNormalizer | None,
        name: str,
        noise_std: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.action_space = action_space
        self.normalizer = normalizer
        self.name = name
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray, episode_starts: np.ndarray | None = None) -> np.ndarray:
        """obs: [B, obs_dim] -> actions [B, act_dim] float32 (deterministic policy + optional noise)."""
        import torch

        obs = np.asarray(obs, dtype=np.float64)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        with torch.no_grad():
            actions = (
                self._deterministic(torch.as_tensor(obs, dtype=torch.float32)).numpy().astype(np.float64)
            )
        if getattr(self.policy, "squash_output", False):
            actions = self.policy.unscale_action(actions)  # tanh outputs in [-1, 1] -> env bounds
        if self.noise_std > 0:
            actions = actions + self.noise_std * self.rng.standard_normal(actions.shape)
        return np.clip(actions, self.action_space.low, self.action_space.high).astype(np.float32)

    def _deterministic(self, obs: Any) -> Any:
        """obs [B, obs_dim] -> the policy's deterministic action [B, act_dim] (before unscaling).

        Same result as SB3's `policy._predict(obs, deterministic=True)` for these MLP policies, without
        building a distribution object every tick (measured: about half the time per call).
        """
        import torch

        policy = self.policy
        if hasattr(policy, "actor") and hasattr(policy.actor, "get_action_dist_params"):  # SAC, TQC
            if policy.actor.use_sde:
                return policy._predict(obs, deterministic=True)
            mean, _, _ = policy.actor.get_action_dist_params(obs)
            return torch.tanh(mean)
        if hasattr(policy, "mlp_extractor") and not getattr(policy, "use_sde", False):  # PPO, TRPO, A2C
            features = policy.extract_features(obs, policy.pi_features_extractor)
            return policy.action_net(policy.mlp_extractor.forward_actor(features))
        return policy._predict(obs, deterministic=True)  # ARS and anything else


def load_behavior_policy(
    algo: str,
    env_id: str,
    *,
    noise_std: float = 0.0,
    seed: int | None = None,
    root: str | os.PathLike | None = None,
) -> BehaviorPolicy:
    """Load `ALGO/ENV/model.zip` (+ vecnormalize.pkl) for a Gymnasium v5 env. Trusted files only."""
    import torch
    from stable_baselines3.common.save_util import load_from_zip_file

    algo = algo.lower()
    if algo not in ALGOS:
        raise ValueError(f"unknown behavior policy {algo!r}; choose one of {', '.join(ALGOS)}")
    if env_id not in ZOO_ENV_NAMES:
        raise ValueError(f"no zoo behavior policies for {env_id!r}; available for {', '.join(ZOO_ENV_NAMES)}")
    folder = Path(root) if root is not None else behavior_policies_dir()
    folder = folder / algo / ZOO_ENV_NAMES[env_id]
    zip_path = folder / "model.zip"
    if not zip_path.is_file():
        raise FileNotFoundError(
            f"no behavior policy at {zip_path}; set RECURRL_BEHAVIOR_POLICIES to the folder holding "
            "ALGO/ENV/model.zip (default: ../shared/behavior-policies beside the repository)"
        )
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()

    # The zoo's schedules are pickled closures we never call: replace them instead of unpickling.
    custom_objects = {
        "learning_rate": 0.0,
        "lr_schedule": lambda _: 0.0,
        "clip_range": lambda _: 0.0,
        "delta_std_schedule": lambda _: 0.0,  # ARS
        "observation_space": obs_space,
        "action_space": act_space,
    }
    with gym_alias(), torch.device("cpu"):
        data, params, _ = load_from_zip_file(zip_path, custom_objects=custom_objects, device="cpu")
    policy_class = data["policy_class"]
    kwargs = dict(data.get("policy_kwargs") or {})
    state_dict = params["policy"]
    if algo == "ars":
        # Old ARS files hold a bare `action_net` Linear; sb3-contrib 2.x wraps it in a Sequential.
        state_dict = {
            key.replace("action_net.", "action_net.0.", 1): value for key, value in state_dict.items()
        }
        kwargs.setdefault("with_bias", "action_net.0.bias" in state_dict)
        policy = policy_class(obs_space, act_space, **kwargs)
    else:
        # Old zoo files list the actor-critic layers as [dict(pi=..., vf=...)]; SB3 2.x wants the dict.
        arch = kwargs.get("net_arch")
        if isinstance(arch, list) and arch and isinstance(arch[0], dict):
            kwargs["net_arch"] = arch[0]
        policy = policy_class(obs_space, act_space, lambda _: 0.0, **kwargs)
    policy.load_state_dict(state_dict)
    policy.set_training_mode(False)
    normalizer_path = folder / "vecnormalize.pkl"
    normalizer = load_obs_normalizer(normalizer_path) if normalizer_path.is_file() else None
    if normalizer is not None and normalizer.mean.shape != obs_space.shape:
        raise ValueError(
            f"{normalizer_path}: normalization statistics have shape {normalizer.mean.shape}, "
            f"env {env_id} observes {obs_space.shape}"
        )
    return BehaviorPolicy(policy, act_space, normalizer, f"{algo}/{ZOO_ENV_NAMES[env_id]}", noise_std, seed)


def evaluate_policy(policy: Any, env_id: str, seeds: list[int]) -> np.ndarray:
    """One episode per seed, all envs stepped together with batched actions; returns [len(seeds)].

    `policy(obs [B, obs_dim], episode_starts [B]) -> actions [B, ...]`, e.g. a BehaviorPolicy.
    """
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in seeds])
    try:
        obs, _ = vec.reset(seed=list(seeds))
        returns = np.zeros(len(seeds))
        running = np.ones(len(seeds), dtype=bool)
        starts = np.ones(len(seeds), dtype=bool)
        while running.any():
            obs, rewards, terms, truncs, _ = vec.step(policy(obs, starts))
            returns += np.where(running, rewards, 0.0)  # finished envs reset and go on; ignore them
            running &= ~(terms | truncs)
            starts[:] = False
    finally:
        vec.close()
    return returns
