"""Per-env seeds for evaluation runs."""

from __future__ import annotations

import numpy as np


def vector_env_seeds(seed: int, num_envs: int) -> list[int]:
    """Seeds for the `num_envs` sub-envs of an evaluation run with seed `seed`.

    gymnasium's `VectorEnv.reset(seed=s)` seeds env i with s + i, so runs with seeds 0, 1 and 2 would share
    most of their envs (and a deterministic policy would replay the same episodes). Drawing the seeds from
    `SeedSequence(seed)` gives every evaluation seed its own set, reproducibly.
    """
    if seed < 0:
        raise ValueError(f"evaluation seed must be >= 0, got {seed}")
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(num_envs)]
