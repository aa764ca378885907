"""Record a policy into a Minari dataset, and build D4RL-style dataset suites.

Collection runs `num_envs` copies of the env in a gymnasium vector env (same-step autoreset, so no
step is wasted on resets) and asks the policy for all of them in one batched call per tick.
Datasets are written with `minari.create_dataset_from_buffers` (Minari's DataCollector would import
jax), observations as float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import recurrl.envs  # noqa: F401  (registers the POMDP env ids)
from recurrl.envs.episodes import Episode, OfflineDataset
from recurrl.envs.scores import D4RL_REF_SCORES, d4rl_task_name

# policy(obs [B, *obs_shape], episode_starts [B] bool) -> actions [B, *act_shape]
PolicyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
    policy: str, env_id: str, *, num_envs: int, noise: float = 0.0, seed: int | None = None
) -> PolicyFn:
    """`random`, `scripted` (POMDP tasks) or a zoo algorithm name (tqc, sac, ppo, trpo, a2c, ars).

    `noise`: Gaussian action-noise std for zoo policies, epsilon for CartPoleNoVel's scripted expert,
    torque-noise std for PendulumNoVel's. Zoo policies are pickles: trusted files only.
    """
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
            for i, (o, a, r, te, tr) in enumerate(
                zip(
                    self.observations,
                    self.actions,
                    self.rewards,
                    self.terminations,
                    self.truncations,
                    strict=True,
                )
            )
        ]

    def to_offline_dataset(self, name: str, **kwargs: Any) -> OfflineDataset:
        env = gym.make(self.env_id)
        episodes = [
            Episode(o[:-1], a, r, te, tr, final_observation=o[-1])
            for o, a, r, te, tr in zip(
                self.observations,
                self.actions,
                self.rewards,
                self.terminations,
                self.truncations,
                strict=True,
            )
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

    vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    vec = vector_cls(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
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
    if steps is not None:
        for buffer in running:  # episodes cut by the step budget end in a truncation
            if buffer["rew"]:
                buffer["obs"] = buffer["obs"][: len(buffer["rew"]) + 1]
                buffer["trunc"][-1] = True
                _close(done, buffer)
    else:
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            setattr(done, name, getattr(done, name)[:episodes])
    done.seconds = time.perf_counter() - begin
    done.cpu_seconds = time.process_time() - cpu_begin
    return done


def collect_policy(
    env_id: str,
    policy: str,
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
) -> Collection:
    """Build the behavior policy `policy` (see `make_policy`) and record it with `collect`.

    `workers > 1` shards the envs and the budget over that many processes, each stepping its own
    vector env with its own copy of the policy: MuJoCo stepping is the bottleneck, and one process
    uses one core. Worker i seeds its envs and noise from `seed + 100_000 * i`.
    """
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


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def datasets_path(path: str | os.PathLike | None) -> Iterator[None]:
    """Point MINARI_DATASETS_PATH at `path` for the duration (None: leave it as it is)."""
    if path is None:
        yield
        return
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved


def check_new_dataset(dataset_id: str, overwrite: bool) -> None:
    """Refuse an existing dataset id unless `overwrite`: called before recording, so a clash costs
    nothing instead of the whole recording."""
    from minari.storage import get_dataset_path

    path = Path(get_dataset_path(dataset_id))
    if path.exists() and not overwrite:
        raise ValueError(
            f"Minari dataset {dataset_id!r} already exists at {path}; pass --overwrite to replace it"
        )


def write_minari(
    collection: Collection,
    dataset_id: str,
    *,
    algorithm_name: str,
    description: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Create Minari dataset `dataset_id` under MINARI_DATASETS_PATH; returns its directory."""
    import minari
    from minari.storage import get_dataset_path

    check_new_dataset(dataset_id, overwrite)
    path = Path(get_dataset_path(dataset_id))
    if path.exists():
        minari.delete_dataset(dataset_id)
    env = gym.make(collection.env_id)
    obs_space = env.observation_space
    act_space = env.action_space
    obs_space, act_space = _float32_box(obs_space), _float32_box(act_space)  # arrays are stored as float32
    env.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari's nags about missing author/permalink
        minari.create_dataset_from_buffers(
            dataset_id,
            collection.to_episode_buffers(),
            env=collection.env_id,
            eval_env=collection.env_id,
            algorithm_name=algorithm_name,
            author="recurrl collect",
            observation_space=obs_space,
            action_space=act_space,
            ref_min_score=ref_min_score if ref_max_score is not None else None,
            ref_max_score=ref_max_score,
            description=description,
        )
    return path


def compress_minari_dataset(path: str | os.PathLike) -> int:
    """Rewrite a Minari hdf5 dataset's arrays with gzip + shuffle (lossless); returns the new size in bytes.

    Minari writes uncompressed, chunked arrays; this is for datasets shipped in the repository.
    Readers need nothing special (h5py decompresses transparently).
    """
    import h5py

    main = Path(path) / "data" / "main_data.hdf5"
    if not main.is_file():
        raise ValueError(f"{path} is not a Minari hdf5 dataset directory (no data/main_data.hdf5)")
    tmp = main.with_name("main_data.compressed.hdf5")

    def copy_group(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(dict(source.attrs))
        for key, item in source.items():
            if isinstance(item, h5py.Group):
                copy_group(item, target.create_group(key, track_order=True))
            else:
                data = item[()]
                options = {"compression": "gzip", "compression_opts": 9, "shuffle": True} if data.ndim else {}
                target.create_dataset(key, data=data, **options)
                target[key].attrs.update(dict(item.attrs))

    with h5py.File(main, "r") as source, h5py.File(tmp, "w", track_order=True, libver="latest") as target:
        copy_group(source, target)
    tmp.replace(main)
    metadata_path = main.parent / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["dataset_size"] = round(main.stat().st_size / 1e6, 1)  # Minari's unit: MB
    metadata_path.write_text(json.dumps(metadata))
    return main.stat().st_size


def _float32_box(space: gym.Space) -> gym.Space:
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float64:
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        return gym.spaces.Box(low, high, space.shape, np.float32)
    return space


# ---------------------------------------------------------------- D4RL-style suites


@dataclass(frozen=True)
class Segment:
    """Part of a tier: `fraction` of its steps recorded with `policy` plus action noise `noise`."""

    policy: str
    noise: float = 0.0
    fraction: float = 1.0


# One recipe per env. Returns quoted are measured on Gymnasium v5 (see envs/data/README.md and the
# behavior-policies README); "medium" aims at about one third of the expert's return, like D4RL's.
SUITE_RECIPES: dict[str, dict[str, list[Segment]]] = {
    "Hopper-v5": {
        "random": [Segment("random")],
        "medium": [Segment("sac", 0.1)],  # SAC stopped early: ~1100 deterministic
        "medium-replay": [  # stands in for a training replay buffer: increasing quality, noisy
            Segment("random", 0.0, 0.1),
            Segment("a2c", 0.3, 0.3),
            Segment("a2c", 0.1, 0.2),
            Segment("sac", 0.3, 0.2),
            Segment("sac", 0.1, 0.2),
        ],
        "expert": [Segment("trpo", 0.0)],  # ~3620
    },
    "HalfCheetah-v5": {
        "random": [Segment("random")],
        "medium": [Segment("ars", 0.1)],  # ~4700 deterministic, near 1/3 of tqc's 12100
        "medium-replay": [
            Segment("random", 0.0, 0.1),
            Segment("a2c", 0.3, 0.3),
            Segment("a2c", 0.1, 0.3),
            Segment("ars", 0.3, 0.3),
        ],
        "expert": [Segment("tqc", 0.0)],  # ~12100
    },
    "Walker2d-v5": {
        "random": [Segment("random")],
        "medium": [Segment("ars", 0.1)],  # ~990 deterministic (a2c ~670 is the only lower zoo agent)
        "medium-replay": [
            Segment("random", 0.0, 0.1),
            Segment("a2c", 0.3, 0.3),
            Segment("a2c", 0.1, 0.3),
            Segment("ars", 0.3, 0.3),
        ],
        "expert": [Segment("sac", 0.0)],  # ~3900 (tqc's returns vary more)
    },
}
SUITE_TIERS = ("random", "medium", "medium-replay", "expert", "medium-expert")


def suite_dataset_id(env_id: str, tier: str) -> str:
    """recurrl/hopper/medium-v0 for (Hopper-v5, medium)."""
    task = d4rl_task_name(env_id) or env_id.split("-")[0].lower()
    return f"recurrl/{task}/{tier}-v0"


def describe_recipe(segments: list[Segment]) -> str:
    parts = []
    for s in segments:
        noise = f" + N(0, {s.noise}^2) action noise" if s.noise else ""
        parts.append(f"{s.fraction:.0%} {s.policy}{noise}")
    return ", then ".join(parts)


def collect_segments(
    env_id: str,
    segments: list[Segment],
    *,
    steps: int,
    num_envs: int = 8,
    seed: int = 0,
    asynchronous: bool = False,
    workers: int = 1,
    progress: bool = True,
    label: str = "",
) -> Collection:
    """Record each segment's share of `steps` in order (the last one takes the rounding remainder)."""
    total = Collection(env_id)
    remaining = steps
    for index, segment in enumerate(segments):
        count = remaining if index == len(segments) - 1 else int(round(steps * segment.fraction))
        remaining -= count
        if count <= 0:
            continue
        part = collect_policy(
            env_id,
            segment.policy,
            noise=segment.noise,
            steps=count,
            num_envs=num_envs,
            seed=seed + 1000 * index,
            asynchronous=asynchronous,
            workers=workers,
            progress=progress,
            description=f"{label}{segment.policy}" + (f"+{segment.noise}" if segment.noise else ""),
        )
        total.extend(part)
    return total


def build_suite(
    env_id: str,
    *,
    steps: int = 1_000_000,
    tiers: tuple[str, ...] = SUITE_TIERS,
    num_envs: int = 8,
    seed: int = 0,
    asynchronous: bool = False,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    export_dir: str | os.PathLike | None = None,
    compress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Record the D4RL-style tiers of `env_id` as Minari datasets `recurrl/<env>/<tier>-v0`.

    medium-expert is medium + expert (2x steps, as in D4RL), reusing those tiers' recordings.
    Returns per-tier summaries (id, path, steps, episodes, mean return, steps/s).
    """
    if env_id not in SUITE_RECIPES:
        raise ValueError(f"no D4RL-style recipe for {env_id!r}; recipes exist for {', '.join(SUITE_RECIPES)}")
    unknown = [t for t in tiers if t not in SUITE_TIERS]
    if unknown:
        raise ValueError(f"unknown tier(s) {unknown}; tiers are {', '.join(SUITE_TIERS)}")
    recipes = SUITE_RECIPES[env_id]
    task = d4rl_task_name(env_id)
    ref_min, ref_max = D4RL_REF_SCORES[task] if task else (None, None)
    for tier in tiers:
        check_new_dataset(suite_dataset_id(env_id, tier), overwrite)
    recorded: dict[str, Collection] = {}
    results: dict[str, dict[str, Any]] = {}
    needed = set(tiers) | ({"medium", "expert"} if "medium-expert" in tiers else set())
    for tier in [t for t in SUITE_TIERS if t in needed]:
        if tier == "medium-expert":
            collection = Collection(env_id)
            collection.extend(recorded["medium"])
            collection.extend(recorded["expert"])
            recipe = f"medium ({describe_recipe(recipes['medium'])}) + expert ({describe_recipe(recipes['expert'])})"
        else:
            collection = collect_segments(
                env_id,
                recipes[tier],
                steps=steps,
                num_envs=num_envs,
                seed=seed,
                asynchronous=asynchronous,
                workers=workers,
                progress=progress,
                label=f"{tier}: ",
            )
            recipe = describe_recipe(recipes[tier])
        recorded[tier] = collection
        if tier not in tiers:
            continue
        dataset_id = suite_dataset_id(env_id, tier)
        description = (
            f"D4RL-style '{tier}' tier for {env_id} recorded by `recurrl collect --suite d4rl` "
            f"(seed {seed}, {num_envs} envs). Recipe: {recipe}. Reference scores are D4RL's."
        )
        path = write_minari(
            collection,
            dataset_id,
            algorithm_name=recipe,
            description=description,
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            overwrite=overwrite,
        )
        if compress:
            compress_minari_dataset(path)
        results[tier] = summarize_collection(collection, dataset_id, path)
        results[tier]["recipe"] = recipe
        if export_dir is not None:
            from recurrl.envs.datasets import export_hdf5

            name = f"{task or env_id}-{tier}-v0.hdf5"
            results[tier]["hdf5"] = str(
                export_hdf5(
                    collection.to_offline_dataset(dataset_id, ref_min_score=ref_min, ref_max_score=ref_max),
                    Path(export_dir) / name,
                )
            )
        log(format_summary(results[tier]))
    return results


def summarize_collection(collection: Collection, dataset_id: str, path: Path | None) -> dict[str, Any]:
    returns = collection.returns
    return {
        "dataset_id": dataset_id,
        "path": None if path is None else str(path),
        "steps": collection.num_steps,
        "episodes": len(returns),
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "seconds": round(collection.seconds, 2),
        "steps_per_second": round(collection.num_steps / max(collection.seconds, 1e-9), 1),
        "cpu_seconds": round(collection.cpu_seconds, 2),
        "steps_per_cpu_second": round(collection.num_steps / max(collection.cpu_seconds, 1e-9), 1),
    }


def format_summary(s: dict[str, Any]) -> str:
    return (
        f"{s['dataset_id']}: {s['steps']} steps, {s['episodes']} episodes, return mean {s['return_mean']:.1f} "
        f"(min {s['return_min']:.1f}, max {s['return_max']:.1f}); {s['steps_per_second']:.0f} steps/s "
        f"over {s['seconds']:.1f} s ({s['steps_per_cpu_second']:.0f} steps per CPU-second of this process) "
        f"-> {s['path']}"
    )
