"""POMDP tasks: registered ids, check_env, hidden velocities, scripted experts that need memory."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from recurrl import envs
from recurrl.envs.behavior import evaluate_policy
from recurrl.envs.pomdp import scripted_expert


@pytest.mark.parametrize("env_id", envs.POMDP_ENV_IDS)
def test_registered_and_passes_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    assert env.observation_space.shape == (2,)
    check_env(env.unwrapped, skip_render_check=True)  # pygame (rendering) is not a dependency


def test_cartpole_observes_position_and_angle_only() -> None:
    full, partial = gym.make("CartPole-v1"), gym.make("CartPoleNoVel-v1")
    obs_full, _ = full.reset(seed=3)
    obs_partial, _ = partial.reset(seed=3)
    for action in [0, 1, 1, 0, 1]:
        np.testing.assert_array_equal(obs_partial, obs_full[[0, 2]])
        obs_full, *_ = full.step(action)
        obs_partial, *_ = partial.step(action)


def test_pendulum_observes_cos_sin_only() -> None:
    full, partial = gym.make("Pendulum-v1"), gym.make("PendulumNoVel-v1")
    obs_full, _ = full.reset(seed=5)
    obs_partial, _ = partial.reset(seed=5)
    for torque in [0.5, -1.0, 2.0]:
        np.testing.assert_allclose(obs_partial, obs_full[:2], atol=1e-6)
        obs_full, *_ = full.step(np.array([torque], dtype=np.float32))
        obs_partial, *_ = partial.step(np.array([torque], dtype=np.float32))


def test_scripted_experts_solve_the_tasks() -> None:
    cartpole = evaluate_policy(
        scripted_expert("CartPoleNoVel-v1", 4, seed=0), "CartPoleNoVel-v1", [0, 1, 2, 3]
    )
    assert cartpole.min() == 500.0
    pendulum = evaluate_policy(
        scripted_expert("PendulumNoVel-v1", 8, seed=0), "PendulumNoVel-v1", list(range(8))
    )
    assert pendulum.mean() > -250  # a random policy gets about -1200


def test_scripted_cartpole_expert_needs_memory() -> None:
    """Forgetting the previous observation every tick (velocity estimate 0) loses the pole."""
    expert = scripted_expert("CartPoleNoVel-v1", 4, seed=0)

    def memoryless(obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        return expert(obs, np.ones_like(episode_starts))

    assert evaluate_policy(memoryless, "CartPoleNoVel-v1", [0, 1, 2, 3]).mean() < 200


def test_unknown_scripted_expert() -> None:
    with pytest.raises(ValueError, match="no scripted expert"):
        scripted_expert("Hopper-v5")
