"""D4RL-style dataset suites: per env, recipes of zoo behavior policies and action noise for the
random, medium, medium-replay, expert and medium-expert tiers, recorded as `recurrl/<env>/<tier>-v0`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recurrl.envs.minari_writer import check_new_dataset, format_summary, record_dataset
from recurrl.envs.packages import split_env_id
from recurrl.envs.record import Collection, collect_policy
from recurrl.envs.scores import D4RL_REF_SCORES, d4rl_task_name


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
    task = d4rl_task_name(env_id) or split_env_id(env_id)[1].split("-")[0].lower()  # no ':' in an id
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
        export = None if export_dir is None else Path(export_dir) / f"{task or env_id}-{tier}-v0.hdf5"
        results[tier] = record_dataset(
            collection,
            dataset_id,
            recipe=recipe,
            description=description,
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            overwrite=overwrite,
            compress=compress,
            export_hdf5=export,
        )
        log(format_summary(results[tier]))
    return results
