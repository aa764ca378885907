"""Behavior policies from any object with SB3's `predict`, and from a user's own SB3 / sb3-contrib model zip.

`PredictPolicy` records anything with `predict(obs, state, episode_start, deterministic) -> (actions,
state)` (Stable-Baselines3's signature, which recurrl's agents share): the state is carried for the
whole batch of envs and each row forgets it at its episode start, so recurrent policies (RecurrentPPO,
a recurrl PPO checkpoint) act as they were trained.

`load_sb3_policy` loads a model zip with the library's own `ALGO.load`, the algorithm read from the
zip's `data` JSON (the policy class's module and name) unless given. Unlike the zoo reader
(envs/behavior.py), `ALGO.load` unpickles parts of the zip (spaces, schedules): only for your own files.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

# Algorithm name -> its class; the policy-class module -> the algorithm that saves it.
SB3_ALGOS = {
    "a2c": "stable_baselines3:A2C",
    "ddpg": "stable_baselines3:DDPG",
    "dqn": "stable_baselines3:DQN",
    "ppo": "stable_baselines3:PPO",
    "sac": "stable_baselines3:SAC",
    "td3": "stable_baselines3:TD3",
    "ars": "sb3_contrib:ARS",
    "crossq": "sb3_contrib:CrossQ",
    "maskableppo": "sb3_contrib:MaskablePPO",
    "qrdqn": "sb3_contrib:QRDQN",
    "recurrentppo": "sb3_contrib:RecurrentPPO",
    "tqc": "sb3_contrib:TQC",
    "trpo": "sb3_contrib:TRPO",
}
POLICY_MODULES = {
    "stable_baselines3.dqn.policies": "dqn",
    "stable_baselines3.sac.policies": "sac",
    "stable_baselines3.td3.policies": "td3",  # DDPG saves TD3's policy; TD3.load acts the same
    "sb3_contrib.ars.policies": "ars",
    "sb3_contrib.crossq.policies": "crossq",
    "sb3_contrib.common.maskable.policies": "maskableppo",
    "sb3_contrib.qrdqn.policies": "qrdqn",
    "sb3_contrib.common.recurrent.policies": "recurrentppo",
    "sb3_contrib.tqc.policies": "tqc",
}


class PredictPolicy:
    """A `predict`-style model as a collection policy (envs.record.PolicyFn) over a batch of envs.

    `normalize` maps raw observations to what the model expects (VecNormalize statistics); `noise` is a
    Gaussian action std for Box actions (clipped to the bounds) and a random-action probability otherwise.
    """

    def __init__(
        self,
        model: Any,
        action_space: gym.Space,
        name: str,
        normalize: Any = None,
        noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.model, self.action_space, self.name = model, action_space, name
        self.normalize, self.noise = normalize, noise
        self.rng = np.random.default_rng(seed)
        self.state: Any = None

    def __call__(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        if self.normalize is not None:
            obs = self.normalize(np.asarray(obs, dtype=np.float64)).astype(np.float32)
        actions, self.state = self.model.predict(
            obs, state=self.state, episode_start=np.asarray(episode_starts, dtype=bool), deterministic=True
        )
        actions = np.asarray(actions)
        if self.noise <= 0:
            return actions
        if isinstance(self.action_space, gym.spaces.Box):
            noisy = actions + self.noise * self.rng.standard_normal(actions.shape)
            return np.clip(noisy, self.action_space.low, self.action_space.high).astype(actions.dtype)
        explore = self.rng.random(len(actions)) < self.noise
        random = np.stack([self.action_space.sample() for _ in range(len(actions))])
        return np.where(explore.reshape((-1,) + (1,) * (actions.ndim - 1)), random, actions)


def sb3_algo(path: Path) -> str:
    """The algorithm that saved the SB3 zip at `path`, read from its `data` JSON (nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        policy_class = data["policy_class"]
        module = policy_class["__module__"]
    except (zipfile.BadZipFile, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not a Stable-Baselines3 model zip (no readable 'data' entry naming a policy class: {error!r})"
        ) from None
    if module in POLICY_MODULES:
        return POLICY_MODULES[module]
    match = re.match(r"<function (\w+)\.__init__", str(policy_class.get("__init__", "")))
    if module == "stable_baselines3.common.policies" and match and "ActorCritic" in match.group(1):
        # PPO, A2C and TRPO save the same policy class; their hyperparameters tell them apart.
        return "ppo" if "clip_range" in data else "trpo" if "cg_max_steps" in data else "a2c"
    raise ValueError(
        f"{path}: cannot tell which algorithm saved it (policy class from {module}); pass --algo "
        f"({', '.join(SB3_ALGOS)})"
    )


def load_sb3_model(path: str | Path, algo: str | None = None) -> Any:
    """`ALGO.load(path)` on the CPU (this unpickles parts of the zip: your own files only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--policy {str(path)!r}: no such file")
    name = (algo or sb3_algo(path)).lower()
    if name not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 algorithm {name!r}; choose one of {', '.join(SB3_ALGOS)}")
    module, class_name = SB3_ALGOS[name].split(":")
    algorithm = getattr(importlib.import_module(module), class_name)
    from recurrl.envs.behavior import gym_alias

    try:
        with gym_alias():  # zips written with the old `gym` package name its spaces
            return algorithm.load(path, device="cpu")
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as error:
        raise ValueError(
            f"{path}: {class_name}.load cannot read it ({type(error).__name__}: {error})"
        ) from None


def load_sb3_policy(
    path: str | Path,
    env_id: str,
    *,
    num_envs: int,
    noise: float = 0.0,
    seed: int | None = None,
    algo: str | None = None,
    vecnormalize: str | Path | None = None,
) -> PredictPolicy:
    """The SB3 model zip at `path` acting on `env_id` (spaces checked), observations normalized by the
    VecNormalize file `vecnormalize` (read data-only, as the zoo's) when given."""
    from recurrl.envs.behavior import load_obs_normalizer

    model = _model(path, algo)
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    for what, mine, theirs in (
        ("observation", obs_space, model.observation_space),
        ("action", act_space, model.action_space),
    ):
        if mine.shape != theirs.shape or type(mine) is not type(theirs):
            raise ValueError(f"{path} was trained on {what} space {theirs}, but {env_id} has {mine}")
    normalize = None
    if vecnormalize is not None:
        normalize = load_obs_normalizer(Path(vecnormalize))
        if normalize.mean.shape != obs_space.shape:
            raise ValueError(
                f"--vecnormalize {vecnormalize}: statistics for observations of shape {normalize.mean.shape}, "
                f"but {env_id} observes shape {obs_space.shape}"
            )
    return PredictPolicy(model, act_space, f"sb3:{Path(path).name}", normalize, noise, seed)


def sb3_policy_factory(path: str | Path, algo: str | None, vecnormalize: str | Path | None) -> Any:
    """A picklable `factory(env_id, num_envs=, noise=, seed=)` for envs.record (worker processes build
    their own copy); checked once here so bad input fails before any worker starts."""
    _model(path, algo)
    return functools.partial(load_sb3_policy, str(path), algo=algo, vecnormalize=vecnormalize)


def _model(path: str | Path, algo: str | None) -> Any:
    path = Path(path)
    mtime_ns = path.stat().st_mtime_ns if path.is_file() else None  # missing: load_sb3_model says so
    return _cached_model(str(path), algo, mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, algo: str | None, mtime_ns: int | None) -> Any:
    """`load_sb3_model`, once per file version and process: the factory's check and the policy built in
    this process (or in forked workers, which inherit the cache) share one unpickled model, read-only
    (`predict` does not change it). mtime_ns is part of the key: a rewritten zip is read again."""
    return load_sb3_model(path, algo)
