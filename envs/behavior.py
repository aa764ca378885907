"""Behavior policies: the RL Baselines3 Zoo agents in ../shared/behavior-policies.

Loaded without unpickling anything (envs/zoo_files.py): the network is built from the algorithm's
policy class and the zoo's `config.yml` (its `policy_kwargs` read as literals), its weights come from
`policy.pth` inside `model.zip` through `torch.load(weights_only=True)`, and the VecNormalize
observation statistics are read once from `vecnormalize.pkl` by a data-only unpickler (numpy arrays,
nothing else is called) and kept as JSON in a cache (`behavior_cache_dir()`), from which every later
load reads them. The zip's pickled `data` entry is never read. A `vecnormalize.pkl` the data-only
reader refuses is unpickled only with `trust_pickle=True` (`recurrl collect --trust-pickle`), which
says so when it happens; its statistics are then cached as JSON too.

The zips were written by an older stable-baselines3 for the `gym` v3 envs; the policies are built for
the Gymnasium v5 env's spaces (same shapes) and the VecNormalize statistics are applied here:
`clip((obs - mean) / sqrt(var + eps), -clip, clip)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurrl.envs.zoo_files import UnsafePickle, read_policy_weights, read_vecnormalize_stats, read_zoo_config

ALGOS = ("tqc", "sac", "ppo", "trpo", "a2c", "ars")
# The policy class each algorithm's zoo agents use, by the config.yml's `policy` name.
POLICY_CLASSES = {
    ("tqc", "MlpPolicy"): "sb3_contrib.tqc.policies:TQCPolicy",
    ("sac", "MlpPolicy"): "stable_baselines3.sac.policies:SACPolicy",
    ("ppo", "MlpPolicy"): "stable_baselines3.common.policies:ActorCriticPolicy",
    ("a2c", "MlpPolicy"): "stable_baselines3.common.policies:ActorCriticPolicy",
    ("trpo", "MlpPolicy"): "stable_baselines3.common.policies:ActorCriticPolicy",
    ("ars", "LinearPolicy"): "sb3_contrib.ars.policies:ARSLinearPolicy",
    ("ars", "MlpPolicy"): "sb3_contrib.ars.policies:ARSPolicy",
}
TRUST_PICKLE_ENV = "RECURRL_TRUST_PICKLE"  # "1": as trust_pickle=True (how --trust-pickle reaches workers)


def behavior_policies_dir() -> Path:
    """RECURRL_BEHAVIOR_POLICIES, else ../shared/behavior-policies beside the repository root."""
    override = os.environ.get("RECURRL_BEHAVIOR_POLICIES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "behavior-policies"


def zoo_env_names(env_id: str) -> list[str]:
    """The folder names an env's zoo agents may sit under: the id without its version ('Hopper-v5' ->
    'Hopper', as in ../shared/behavior-policies, trained on v3 and used on v5), then the full id
    ('CartPole-v1', the RL Zoo's own spelling)."""
    _, name, _ = gym.envs.registration.parse_env_id(env_id)
    return list(dict.fromkeys([name, env_id.replace("/", "-")]))


def zoo_agent_folder(algo: str, env_id: str, root: Path) -> Path:
    """root/ALGO/ENV_NAME holding model.zip and config.yml; a missing one names where it looked and
    which env folders this algorithm has."""
    candidates = [root / algo / name for name in zoo_env_names(env_id)]
    for folder in candidates:
        if (folder / "model.zip").is_file() and (folder / "config.yml").is_file():
            return folder
    present = sorted(p.name for p in (root / algo).iterdir() if p.is_dir()) if (root / algo).is_dir() else []
    raise FileNotFoundError(
        f"no {algo} behavior policy for {env_id}: looked for model.zip and config.yml in "
        f"{' and '.join(map(str, candidates))}; {root / algo} has "
        f"{', '.join(present) if present else 'no env folders'} (set RECURRL_BEHAVIOR_POLICIES to the folder "
        "holding ALGO/ENV_NAME/; default: ../shared/behavior-policies beside the repository)"
    )


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


def behavior_cache_dir() -> Path:
    """Where converted VecNormalize statistics are kept: RECURRL_BEHAVIOR_CACHE, else
    ~/.cache/recurrl/behavior-policies (the policies' own folder may be read-only)."""
    override = os.environ.get("RECURRL_BEHAVIOR_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "recurrl" / "behavior-policies"


def load_obs_normalizer(path: Path, trust_pickle: bool | None = None) -> ObsNormalizer:
    """The observation statistics of the pickled VecNormalize at `path`, from their JSON copy (beside it
    as vecnormalize.json, or in the cache, keyed by the pickle's sha256), else converted once (see
    the module doc); `trust_pickle` (default: $RECURRL_TRUST_PICKLE) allows a full unpickle."""
    raw = path.read_bytes()
    cached = behavior_cache_dir() / f"vecnormalize-{hashlib.sha256(raw).hexdigest()[:32]}.json"
    for candidate in (path.with_suffix(".json"), cached):
        if candidate.is_file():
            return _normalizer(json.loads(candidate.read_text()), candidate)
    try:
        stats = read_vecnormalize_stats(path)
    except UnsafePickle as error:
        if not (os.environ.get(TRUST_PICKLE_ENV) == "1" if trust_pickle is None else trust_pickle):
            raise ValueError(
                f"{error}: it is a pickle that only a full unpickle can read, which runs any code in it; if you "
                "trust the file, run once with --trust-pickle (Python: trust_pickle=True) and its statistics are "
                f"kept as JSON in {behavior_cache_dir()} for every later run"
            ) from error
        print(f"SECURITY: unpickling {path} as asked (--trust-pickle)", file=sys.stderr)
        from recurrl.envs.zoo_files import vecnormalize_stats

        with gym_alias(), open(path, "rb") as file:
            stats = vecnormalize_stats(pickle.load(file), path)  # noqa: S301  (explicitly trusted)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({**stats, "source": str(path)}, indent=1))
        tmp.replace(cached)
    except OSError:
        pass  # a read-only cache only means converting again next time
    return _normalizer(stats, path)


def _normalizer(stats: dict[str, Any], where: Path) -> ObsNormalizer:
    try:
        return ObsNormalizer(
            mean=np.asarray(stats["mean"], dtype=np.float64),
            var=np.asarray(stats["var"], dtype=np.float64),
            clip_obs=float(stats["clip_obs"]),
            epsilon=float(stats["epsilon"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: not VecNormalize statistics ({error}); delete it to convert again") from error


class BehaviorPolicy:
    """A zoo agent acting on batches of raw env observations.

    `noise_std` adds Gaussian noise (in action units, then clipped to the action bounds) for the
    noisy tiers of a dataset suite.
    """

    def __init__(
        self,
        policy: Any,
        action_space: gym.spaces.Space,
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
        if not isinstance(self.action_space, gym.spaces.Box):  # e.g. Discrete: SB3's own argmax
            with torch.no_grad():
                return self.policy._predict(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).numpy()
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
    trust_pickle: bool | None = None,
) -> BehaviorPolicy:
    """Load `ALGO/ENV_NAME` (model.zip's policy.pth, config.yml, vecnormalize statistics; folder names as
    in `zoo_env_names`) for any gymnasium env without unpickling anything (see the module doc;
    `trust_pickle` as in `load_obs_normalizer`)."""
    algo = algo.lower()
    if algo not in ALGOS:
        raise ValueError(f"unknown behavior policy {algo!r}; choose one of {', '.join(ALGOS)}")
    folder = zoo_agent_folder(algo, env_id, Path(root) if root is not None else behavior_policies_dir())
    zip_path, config_path = folder / "model.zip", folder / "config.yml"
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    state_dict = read_policy_weights(zip_path)
    config = read_zoo_config(config_path)
    if algo == "ars":
        # Old ARS files hold a bare `action_net` Linear; sb3-contrib 2.x wraps it in a Sequential.
        state_dict = {key.replace("action_net.", "action_net.0.", 1): value for key, value in state_dict.items()}
        config["policy_kwargs"] = {"with_bias": "action_net.0.bias" in state_dict, **(config.get("policy_kwargs") or {})}
    policy = build_zoo_policy(algo, config, obs_space, act_space, config_path)
    try:
        policy.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"{zip_path}: policy.pth does not fit the network config.yml describes: {str(error).splitlines()[0]}"
        ) from error
    policy.set_training_mode(False)
    normalizer_path = folder / "vecnormalize.pkl"
    normalizer = load_obs_normalizer(normalizer_path, trust_pickle) if normalizer_path.is_file() else None
    if normalizer is not None and normalizer.mean.shape != obs_space.shape:
        raise ValueError(
            f"{normalizer_path}: normalization statistics have shape {normalizer.mean.shape}, "
            f"env {env_id} observes {obs_space.shape}"
        )
    return BehaviorPolicy(policy, act_space, normalizer, f"{algo}/{folder.name}", noise_std, seed)


def build_zoo_policy(
    algo: str, config: dict[str, Any], obs_space: gym.Space, act_space: gym.Space, where: Path
) -> Any:
    """The SB3 policy network the zoo trained: the algorithm's class for config.yml's `policy`, built with
    its `policy_kwargs` (and `use_sde`) for these spaces, with freshly initialised weights."""
    import torch

    name = str(config.get("policy", "MlpPolicy"))
    target = POLICY_CLASSES.get((algo, name))
    if target is None:
        known = sorted(p for a, p in POLICY_CLASSES if a == algo)
        raise ValueError(f"{where}: policy {name!r} is not supported for {algo} (supported: {', '.join(known)})")
    module, class_name = target.split(":")
    policy_class = getattr(importlib.import_module(module), class_name)
    kwargs = dict(config.get("policy_kwargs") or {})
    if algo != "ars":
        kwargs.setdefault("use_sde", bool(config.get("use_sde", False)))
    # Old zoo files list the actor-critic layers as [dict(pi=..., vf=...)]; SB3 2.x wants the dict.
    arch = kwargs.get("net_arch")
    if isinstance(arch, list) and arch and isinstance(arch[0], dict):
        kwargs["net_arch"] = arch[0]
    try:
        with torch.device("cpu"):
            if algo == "ars":
                return policy_class(obs_space, act_space, **kwargs)
            return policy_class(obs_space, act_space, lambda _: 0.0, **kwargs)
    except TypeError as error:
        raise ValueError(f"{where}: policy_kwargs {kwargs} do not fit {class_name}: {error}") from error


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
