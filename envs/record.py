"""Record a policy in a gymnasium vector env into a `Collection` of episodes (Minari's layout).

Collection runs `num_envs` copies of the env in a vector env (same-step autoreset, so no step is
wasted on resets) and asks the policy for all of them in one batched call per tick. Writing the
result as a dataset is envs.minari_writer's; the D4RL-style suites are envs.suites'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

import recurrl.envs  # noqa: F401  (registers the POMDP env ids)
from recurrl.envs.episodes import Episode, OfflineDataset
from recurrl.envs.packages import import_env_packages

# policy(obs [B, *obs_shape], episode_starts [B] bool) -> actions [B, *act_shape]
PolicyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# factory(env_id, num_envs=, noise=, seed=) -> PolicyFn: a policy that is not a name (an SB3 zip, a
# checkpoint); picklable (a module-level function or a partial of one) so worker processes build their own.
PolicyFactory = Callable[..., PolicyFn]


class RandomPolicy:
    """Uniform random actions from the env's action space, one independent stream per env."""

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int | None = None) -> None:
        self.spaces = [_copy_space(action_space, None if seed is None else seed + i) for i in range(num_envs)]

    def __call__(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        return np.stack([space.sample() for space in self.spaces])


def _copy_space(space: gym.Space, seed: int | None) -> gym.Space:
    import copy

    space = copy.deepcopy(space)
    space.seed(seed)
    return space


def make_policy(
    policy: str | PolicyFactory, env_id: str, *, num_envs: int, noise: float = 0.0, seed: int | None = None
) -> PolicyFn:
    """`random`, `scripted` (POMDP tasks), a zoo algorithm name (tqc, sac, ppo, trpo, a2c, ars) or a
    PolicyFactory (e.g. envs.sb3_models.sb3_policy_factory).

    `noise`: Gaussian action-noise std for zoo policies, epsilon for CartPoleNoVel's scripted expert,
    torque-noise std for PendulumNoVel's. Zoo policies load without unpickling (envs.behavior).
    """
    if callable(policy):
        return policy(env_id, num_envs=num_envs, noise=noise, seed=seed)
    if policy == "random":
        env = gym.make(env_id)
        space = env.action_space
        env.close()
        return RandomPolicy(space, num_envs, seed)
    if policy == "scripted":
        from recurrl.envs.pomdp import scripted_expert

        return scripted_expert(env_id, num_envs, noise=noise, seed=seed)
    from recurrl.envs.behavior import load_behavior_policy

    return load_behavior_policy(policy, env_id, noise_std=noise, seed=seed)


@dataclass
class Collection:
    """Recorded episodes in Minari's layout (T+1 observations each) plus how fast they came."""

    env_id: str
    observations: list[np.ndarray] = field(default_factory=list)  # each [T+1, *obs_shape]
    actions: list[np.ndarray] = field(default_factory=list)  # each [T, *act_shape]
    rewards: list[np.ndarray] = field(default_factory=list)  # each [T]
    terminations: list[np.ndarray] = field(default_factory=list)
    truncations: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock time of the collection loop
    cpu_seconds: float = 0.0  # CPU time of this process in it (excludes async workers)

    @property
    def num_steps(self) -> int:
        return int(sum(len(r) for r in self.rewards))

    @property
    def returns(self) -> np.ndarray:
        return np.array([r.sum(dtype=np.float64) for r in self.rewards])

    def extend(self, other: Collection) -> None:
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            getattr(self, name).extend(getattr(other, name))
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds

    def to_episode_buffers(self) -> list[Any]:
        from minari.data_collector import EpisodeBuffer

        return [
            EpisodeBuffer(id=i, observations=o, actions=a, rewards=r, terminations=te, truncations=tr)
            for i, (o, a, r, te, tr) in enumerate(self._episode_arrays())
        ]

    def _episode_arrays(self) -> Any:
        """(observations, actions, rewards, terminations, truncations) per recorded episode."""
        return zip(self.observations, self.actions, self.rewards, self.terminations, self.truncations, strict=True)

    def to_offline_dataset(self, name: str, **kwargs: Any) -> OfflineDataset:
        env = gym.make(self.env_id)
        episodes = [
            Episode(o[:-1], a, r, te, tr, final_observation=o[-1])
            for o, a, r, te, tr in self._episode_arrays()
        ]
        return OfflineDataset(name, episodes, self.env_id, env.observation_space, env.action_space, **kwargs)


def collect(
    env_id: str,
    policy: PolicyFn,
    *,
    steps: int | None = None,
    episodes: int | None = None,
    num_envs: int = 8,
    seed: int = 0,
    asynchronous: bool = False,
    progress: bool = True,
    description: str = "",
) -> Collection:
    """Run `policy` on `num_envs` envs until `steps` steps (exactly; episodes still running at the end
    are kept, marked truncated) or `episodes` complete episodes (running ones are dropped)."""
    if (steps is None) == (episodes is None):
        raise ValueError("give exactly one of steps or episodes")
    if (steps is not None and steps < 1) or (episodes is not None and episodes < 1) or num_envs < 1:
        raise ValueError(f"steps/episodes and num_envs must be positive (steps={steps}, episodes={episodes})")
    from tqdm import tqdm

    vec = _make_vector_env(env_id, num_envs, asynchronous)
    done = Collection(env_id)
    running: list[dict[str, list]] = [_new_buffer() for _ in range(num_envs)]
    obs, _ = vec.reset(seed=[seed + i for i in range(num_envs)])
    for i in range(num_envs):
        running[i]["obs"].append(obs[i])
    starts = np.ones(num_envs, dtype=bool)
    recorded = 0
    bar = tqdm(
        total=steps or episodes, unit="step" if steps else "ep", disable=not progress, desc=description
    )
    begin, cpu_begin = time.perf_counter(), time.process_time()
    try:
        while (steps is not None and recorded < steps) or (
            episodes is not None and len(done.rewards) < episodes
        ):
            actions = policy(obs, starts)
            next_obs, rewards, terms, truncs, infos = vec.step(actions)
            finished = np.logical_or(terms, truncs)
            for i in range(num_envs):
                if steps is not None and recorded >= steps:
                    break  # exact step budget: the remaining envs' last steps are not recorded
                buffer = running[i]
                buffer["act"].append(actions[i])
                buffer["rew"].append(rewards[i])
                buffer["term"].append(terms[i])
                buffer["trunc"].append(truncs[i])
                recorded += 1
                if finished[i]:
                    buffer["obs"].append(infos["final_obs"][i])
                    _close(done, buffer)
                    running[i] = _new_buffer()
                    if episodes is not None:
                        bar.update(1)
                buffer = running[i]
                buffer["obs"].append(next_obs[i])  # a fresh episode's first obs, or the next one
            if steps is not None:
                bar.n = recorded
                bar.refresh() if bar.n % 10000 < num_envs else None
            obs, starts = next_obs, finished
    finally:
        bar.close()
        vec.close()
    _settle_running(done, running, steps, episodes)
    done.seconds = time.perf_counter() - begin
    done.cpu_seconds = time.process_time() - cpu_begin
    return done


def _make_vector_env(env_id: str, num_envs: int, asynchronous: bool) -> gym.vector.VectorEnv:
    """`num_envs` copies of the env with same-step autoreset (no step is spent on a reset); a ValueError
    for Dict/Tuple observations, whose batch is not one array (the env is closed first)."""
    vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    vec = vector_cls(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    space = vec.single_observation_space
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):  # a batch of these is not one array
        vec.close()
        raise ValueError(
            f"{env_id}: collect records array observations (Box, Discrete, MultiDiscrete, MultiBinary), not "
            f"{type(space).__name__} ones; the Decision agent trains on Box observations (PPO flattens them)"
        )
    return vec


def _settle_running(
    done: Collection, running: list[dict[str, list]], steps: int | None, episodes: int | None
) -> None:
    """Settle the episodes still running when the loop stops: with a step budget they are kept, ending in
    a truncation; with an episode budget they are dropped, and episodes past the budget (several envs can
    finish on the last tick) are cut off."""
    if steps is not None:
        for buffer in running:  # episodes cut by the step budget end in a truncation
            if buffer["rew"]:
                buffer["obs"] = buffer["obs"][: len(buffer["rew"]) + 1]
                buffer["trunc"][-1] = True
                _close(done, buffer)
    else:
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            setattr(done, name, getattr(done, name)[:episodes])


def collect_policy(
    env_id: str,
    policy: str | PolicyFactory,
    *,
    noise: float = 0.0,
    steps: int | None = None,
    episodes: int | None = None,
    num_envs: int = 8,
    seed: int = 0,
    asynchronous: bool = False,
    workers: int = 1,
    progress: bool = True,
    description: str = "",
    env_packages: tuple[str, ...] = (),
) -> Collection:
    """Build the behavior policy `policy` (see `make_policy`) and record it with `collect`.

    `workers > 1` shards the envs and the budget over that many processes, each stepping its own
    vector env with its own copy of the policy: MuJoCo stepping is the bottleneck, and one process
    uses one core. Worker i seeds its envs and noise from `seed + 100_000 * i`. `env_packages` are
    imported first, in every worker (a spawned process starts without them).
    """
    import_env_packages(env_packages)
    if workers < 1 or workers > num_envs:
        raise ValueError(f"workers must be between 1 and num_envs={num_envs}, got {workers}")
    if workers == 1:
        fn = make_policy(policy, env_id, num_envs=num_envs, noise=noise, seed=seed)
        return collect(
            env_id,
            fn,
            steps=steps,
            episodes=episodes,
            num_envs=num_envs,
            seed=seed,
            asynchronous=asynchronous,
            progress=progress,
            description=description,
        )
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def share(total: int, i: int) -> int:
        return total // workers + (1 if i < total % workers else 0)

    jobs = []
    for i in range(workers):
        jobs.append(
            dict(
                env_id=env_id,
                policy=policy,
                noise=noise,
                steps=None if steps is None else share(steps, i),
                episodes=None if episodes is None else -(-episodes // workers),
                num_envs=share(num_envs, i),
                seed=seed + 100_000 * i,
                asynchronous=asynchronous,
                progress=progress and i == 0,  # one bar (worker 1's share) is enough to see it move
                description=f"{description} (worker 1/{workers})",
                env_packages=tuple(env_packages),
            )
        )
    begin = time.perf_counter()
    total = Collection(env_id)
    # spawn: a forked copy of a process that already holds torch/OpenMP threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for part in pool.map(_collect_worker, jobs):
            total.extend(part)
    if episodes is not None:
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            setattr(total, name, getattr(total, name)[:episodes])
    total.seconds = time.perf_counter() - begin  # wall clock of the whole run, not the sum of workers
    return total


def _collect_worker(job: dict[str, Any]) -> Collection:
    try:
        import torch

        torch.set_num_threads(1)  # one core per worker
    except ImportError:
        pass
    return collect_policy(**job)


def _new_buffer() -> dict[str, list]:
    return {"obs": [], "act": [], "rew": [], "term": [], "trunc": []}


def _close(collection: Collection, buffer: dict[str, list]) -> None:
    obs = np.asarray(buffer["obs"])
    collection.observations.append(obs.astype(np.float32) if obs.dtype == np.float64 else obs)
    actions = np.asarray(buffer["act"])
    collection.actions.append(actions.astype(np.float32) if actions.dtype == np.float64 else actions)
    collection.rewards.append(np.asarray(buffer["rew"], dtype=np.float64))
    collection.terminations.append(np.asarray(buffer["term"], dtype=bool))
    collection.truncations.append(np.asarray(buffer["trunc"], dtype=bool))
