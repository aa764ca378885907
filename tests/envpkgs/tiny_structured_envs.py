"""A tiny env package for tests/test_env_packages.py: importing it registers envs whose observations
are structured (Dict, Tuple, a Text part), as a third-party package would.

This folder is put on sys.path / PYTHONPATH by the tests only, so a fresh process does not have it
imported unless something (the CLI's --env-package, a checkpoint's env_packages) imports it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

BLANK = 2  # the cue's value after the first step: the agent must remember it


class CueMemoryEnv(gym.Env):
    """Dict(cue: Discrete(3), noise: Box(2)): the cue (0 or 1) is shown at the first step only, then
    BLANK; every step rewards 1 for the action equal to the cue. 8 steps per episode."""

    metadata: dict[str, Any] = {"render_modes": []}
    length = 8

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {"cue": spaces.Discrete(3), "noise": spaces.Box(-1.0, 1.0, (2,), np.float32)}
        )
        self.action_space = spaces.Discrete(2)
        self.cue, self.t = 0, 0

    def _obs(self) -> dict[str, Any]:
        noise = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"cue": self.cue if self.t == 0 else BLANK, "noise": noise}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        reward = float(int(action) == self.cue)
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {}


class TupleSignalEnv(gym.Env):
    """Tuple(Discrete(3), MultiDiscrete([2, 3])) observations, a 1-D Box action; reward -|a - sign|."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Tuple((spaces.Discrete(3), spaces.MultiDiscrete([2, 3])))
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def _obs(self) -> tuple[int, np.ndarray]:  # from the env's seeded RNG (the space's is not seeded)
        return int(self.np_random.integers(3)), self.np_random.integers([2, 3]).astype(np.int64)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[tuple, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[tuple, float, bool, bool, dict]:
        self.t += 1
        obs = self._obs()
        return obs, -abs(float(action[0]) - (obs[0] - 1)), False, self.t >= 6, {}


class CueBoxEnv(CueMemoryEnv):
    """CueMemoryEnv with a Box observation [cue is 0, cue is 1, noise] (for collect and the Decision agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)

    def _obs(self) -> np.ndarray:  # type: ignore[override]
        cue = self.cue if self.t == 0 else BLANK
        return np.array([cue == 0, cue == 1, self.np_random.uniform(-1, 1)], np.float32)


class MissionEnv(CueMemoryEnv):
    """As CueMemoryEnv, plus a Text part (as minigrid's mission), which PPO does not flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Dict({"cue": spaces.Discrete(3), "mission": spaces.Text(16)})

    def _obs(self) -> dict[str, Any]:
        return {"cue": self.cue if self.t == 0 else BLANK, "mission": "remember"}


ENVS = {
    "CueMemory-v0": CueMemoryEnv,
    "TupleSignal-v0": TupleSignalEnv,
    "CueBox-v0": CueBoxEnv,
    "Mission-v0": MissionEnv,
}
for name, cls in ENVS.items():
    if name not in gym.registry:  # a string entry point, as packages write it (Minari stores the spec)
        gym.register(name, entry_point=f"{__name__}:{cls.__name__}")
