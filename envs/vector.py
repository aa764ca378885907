"""Vector envs: gymnasium Sync/AsyncVectorEnv with same-step autoreset (PPO rollouts and every evaluation), plus input checks."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from recurrl.envs.packages import check_env_id


def make_vector_env(
    env_id: str, num_envs: int, vectorization: str = "sync", env_kwargs: dict[str, Any] | None = None
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` (made with `env_kwargs`). Same-step autoreset: when an episode ends,
    `step` returns the first observation of the next one and puts the last one in `infos["final_obs"]`."""
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    check_env_id(env_id)  # a 'module:EnvId' id's module is imported first
    try:
        return gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=[CheckObservationShape],
            **(env_kwargs or {}),
        )
    except (gym.error.DependencyNotInstalled, ImportError) as error:
        raise ValueError(f"environment {env_id!r} needs a package that is not installed: {error}") from error


class CheckObservationShape(gym.Wrapper):
    """An observation whose shape is not the env's observation_space's is an error naming both, at the
    reset or step that returns it (the vector env would otherwise fail to stack it, or a model later)."""

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        self._check(obs, "reset")
        return obs, info

    def step(self, action: Any) -> Any:
        result = self.env.step(action)
        self._check(result[0], "step")
        return result

    def _check(self, obs: Any, where: str) -> None:
        space = self.observation_space
        if isinstance(space, gym.spaces.Box) and np.shape(obs) != space.shape:
            raise ValueError(
                f"environment {self.spec.id if self.spec else self.env!s} returned an observation of shape "
                f"{np.shape(obs)} from {where}(), but its observation_space is {space} (shape {space.shape}); "
                "fix the env or wrap it so both agree"
            )


def check_finite(name: str, values: np.ndarray, env_id: str, global_step: int) -> None:
    """Report a NaN/Inf from the env at the step it happens, not as a NaN loss later."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values.reshape(values.shape[0], -1)))
        env_index = int(bad[0][0])
        raise ValueError(
            f"environment {env_id!r} returned a non-finite {name} (NaN or Inf) at global step {global_step} "
            f"in vector env {env_index}: {values[env_index]}; fix the environment or wrap it to sanitize its output"
        )
