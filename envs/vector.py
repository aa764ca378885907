"""Vector envs: gymnasium Sync/AsyncVectorEnv with same-step autoreset (PPO rollouts and every evaluation), plus input checks.

PPO's envs (`flatten_obs=True`) see Discrete / MultiDiscrete / MultiBinary / Tuple / Dict observations
flattened into one float vector by gymnasium's FlattenObservation (discrete parts one-hot), per env, so
the final observation of an episode (`infos["final_obs"]`) is flattened as well.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from recurrl.envs.packages import check_env_id

# Observation spaces FlattenObservation turns into a fixed-size float vector that means something to
# an MLP input layer (Text would become character codes, Graph and Sequence have no fixed size).
FLATTENABLE = (
    gym.spaces.Box,
    gym.spaces.Discrete,
    gym.spaces.MultiDiscrete,
    gym.spaces.MultiBinary,
    gym.spaces.Tuple,
    gym.spaces.Dict,
)


def make_vector_env(
    env_id: str,
    num_envs: int,
    vectorization: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    flatten_obs: bool = False,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` (made with `env_kwargs`). Same-step autoreset: when an episode ends,
    `step` returns the first observation of the next one and puts the last one in `infos["final_obs"]`.
    `flatten_obs`: structured observations (see FLATTENABLE) arrive as one flat float vector."""
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    check_env_id(env_id)  # a 'module:EnvId' id's module is imported first
    wrappers = [flatten_structured, CheckObservationShape] if flatten_obs else [CheckObservationShape]
    try:
        return gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=wrappers,
            **(env_kwargs or {}),
        )
    except (gym.error.DependencyNotInstalled, ImportError) as error:
        raise ValueError(f"environment {env_id!r} needs a package that is not installed: {error}") from error


def is_structured(space: gym.Space) -> bool:
    """A space PPO sees flattened (anything but a Box)."""
    return not isinstance(space, gym.spaces.Box)


def unflattenable_part(space: gym.Space, path: str = "observation") -> str | None:
    """The first part of `space` that FLATTENABLE lacks, as "observation['mission'] (Text)", or None."""
    if isinstance(space, gym.spaces.Dict):
        parts = ((f"{path}[{key!r}]", sub) for key, sub in space.spaces.items())
    elif isinstance(space, gym.spaces.Tuple):
        parts = ((f"{path}[{i}]", sub) for i, sub in enumerate(space.spaces))
    elif isinstance(space, FLATTENABLE):
        return None
    else:
        return f"{path} ({type(space).__name__})"
    return next((bad for p, sub in parts if (bad := unflattenable_part(sub, p)) is not None), None)


def flatten_structured(env: gym.Env) -> gym.Env:
    """`env` with a structured observation space wrapped in FlattenObservation; a Box one as it is."""
    space = env.observation_space
    if not is_structured(space):
        return env
    bad = unflattenable_part(space)
    if bad is not None:
        name = env.spec.id if env.spec else type(env.unwrapped).__name__
        raise ValueError(
            f"environment {name!r}: PPO flattens Box, Discrete, MultiDiscrete, MultiBinary, Tuple and Dict "
            f"observations, but {bad} is not one of them; wrap the env to drop or encode that part"
        )
    return gym.wrappers.FlattenObservation(env)


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


def flatten_observations(space: gym.Space, obs: Any) -> np.ndarray:
    """Raw observation(s) of a structured `space` -> what PPO's envs give after FlattenObservation:
    one observation -> [D]; a list of them, or a batch as a vector env returns it -> [B, D]."""
    if space.contains(obs):
        return gym.spaces.flatten(space, obs)
    if isinstance(obs, list):
        rows = obs
    else:
        batch = gym.vector.utils.batch_space(space, _leading_size(obs))
        if not batch.contains(obs):
            raise ValueError(f"observation is neither one of {space} nor a batch of them: {obs!r}")
        rows = list(gym.vector.utils.iterate(batch, obs))
    for row in rows:
        if not space.contains(row):
            raise ValueError(f"observation {row!r} is not in the env's observation space {space}")
    return np.stack([gym.spaces.flatten(space, row) for row in rows])


def _leading_size(obs: Any) -> int:
    """The batch size of a batched structured observation (the first leaf's leading dimension)."""
    while isinstance(obs, (dict, tuple)):
        if not obs:
            return 0
        obs = next(iter(obs.values())) if isinstance(obs, dict) else obs[0]
    shape = np.shape(obs)
    return int(shape[0]) if shape else 0
