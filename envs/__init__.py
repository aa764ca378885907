"""Environments and offline datasets.

Importing this package registers the POMDP tasks with gymnasium (`CartPoleNoVel-v1`,
`PendulumNoVel-v1`), so `gym.make("CartPoleNoVel-v1")` works after `import recurrl.envs`. Kept light: torch,
stable-baselines3 and minari are imported only by the modules that need them.
"""

from __future__ import annotations

import gymnasium as gym

POMDP_ENV_IDS = ("CartPoleNoVel-v1", "PendulumNoVel-v1")


def _register_pomdp_envs() -> None:
    if "CartPoleNoVel-v1" not in gym.registry:
        gym.register(
            id="CartPoleNoVel-v1",
            entry_point="recurrl.envs.pomdp:CartPoleNoVelEnv",
            max_episode_steps=500,
            reward_threshold=475.0,
        )
    if "PendulumNoVel-v1" not in gym.registry:
        gym.register(
            id="PendulumNoVel-v1",
            entry_point="recurrl.envs.pomdp:PendulumNoVelEnv",
            max_episode_steps=200,
            reward_threshold=-300.0,  # the preset's target (configs/ppo/PendulumNoVel-v1.yaml)
        )


_register_pomdp_envs()
