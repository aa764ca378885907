"""Reference returns and normalized scores (D4RL convention: 100 * (R - min) / (max - min))."""

from __future__ import annotations

import numpy as np

# D4RL's reference returns (random policy, expert policy) for its MuJoCo locomotion tasks.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}

# The Gymnasium env each D4RL task name is evaluated on here (same observation/action shapes).
D4RL_ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


# The Decision Transformer paper's evaluation targets (Chen et al. 2021, first of each pair).
DT_TARGET_RETURNS: dict[str, float] = {"halfcheetah": 6000.0, "hopper": 3600.0, "walker2d": 5000.0}


def default_target_return(env_id: str, episode_returns: np.ndarray) -> tuple[float, str]:
    """The return a Decision agent is conditioned on when none is given -> (target, where it came from)."""
    task = d4rl_task_name(env_id)
    if task is not None:
        return DT_TARGET_RETURNS[task], f"the DT paper's target for {task}"
    best = float(np.max(episode_returns))
    return best, "the dataset's best episode return"


def d4rl_task_name(env: str) -> str | None:
    """'Hopper-v5', 'hopper', 'hopper-medium-v2' -> 'hopper'; None when not a D4RL locomotion task."""
    lowered = env.lower().replace("_", "").replace("-", "")
    for name in D4RL_REF_SCORES:
        if lowered.startswith(name):
            return name
    return None


def d4rl_reference_scores(env: str) -> tuple[float, float]:
    """D4RL's (min, max) reference returns for halfcheetah, hopper or walker2d (any spelling of the env)."""
    name = d4rl_task_name(env)
    if name is None:
        raise ValueError(
            f"no D4RL reference scores for {env!r}: D4RL defines them for {', '.join(D4RL_REF_SCORES)} only"
        )
    return D4RL_REF_SCORES[name]


def normalized_score(
    returns: float | np.ndarray,
    ref_min_score: float | None,
    ref_max_score: float | None,
    name: str = "dataset",
) -> float | np.ndarray:
    """100 * (R - min) / (max - min); ValueError when either reference score is missing."""
    if ref_min_score is None or ref_max_score is None:
        raise ValueError(
            f"{name} has no reference scores (ref_min_score/ref_max_score), so no normalized score can be "
            "computed; report raw returns, or use a dataset whose metadata has them"
        )
    if ref_max_score == ref_min_score:
        raise ValueError(f"{name}: ref_max_score equals ref_min_score ({ref_min_score}); cannot normalize")
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min_score) / (ref_max_score - ref_min_score)
    return float(score) if score.ndim == 0 else score
