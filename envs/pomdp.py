"""Partially observed classic-control tasks: the velocities are removed from the observation.

A feed-forward policy cannot tell which way the pole is moving from one observation; a recurrent
one can, by remembering the previous one. These are the memory tests of Stable-Baselines3 /
sb3-contrib (CartPole without velocity), registered as real gymnasium ids so `check_env`, vector
envs and `gym.make` work as for any other env:

- `CartPoleNoVel-v1`: CartPole-v1 observing `[cart position, pole angle]` (velocities dropped).
- `PendulumNoVel-v1`: Pendulum-v1 observing `[cos(theta), sin(theta)]` (angular velocity dropped).

Each comes with a scripted expert that recovers the velocities by finite differences of consecutive
observations (so it needs memory, exactly like the agents that learn from its data) and acts on a
hand-made controller; it makes small memory-requiring datasets in seconds.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

CARTPOLE_OBS_INDICES = (0, 2)  # x, theta of (x, x_dot, theta, theta_dot)


class CartPoleNoVelEnv(CartPoleEnv):
    """CartPole whose observation is `[x, theta]`: the cart and pole velocities are hidden."""

    def __init__(self, render_mode: str | None = None, **kwargs) -> None:
        super().__init__(render_mode=render_mode, **kwargs)
        high = self.observation_space.high[list(CARTPOLE_OBS_INDICES)]
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[list(CARTPOLE_OBS_INDICES)], reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return obs[list(CARTPOLE_OBS_INDICES)], info


class PendulumNoVelEnv(PendulumEnv):
    """Pendulum whose observation is `[cos(theta), sin(theta)]`: the angular velocity is hidden."""

    def __init__(self, render_mode: str | None = None, g: float = 10.0) -> None:
        super().__init__(render_mode=render_mode, g=g)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def _get_obs(self) -> np.ndarray:
        theta = self.state[0]
        return np.array([np.cos(theta), np.sin(theta)], dtype=np.float32)


class CartPoleNoVelExpert:
    """Scripted CartPole controller for `[x, theta]` observations, batched over `num_envs`.

    Velocities are finite differences of consecutive observations (CartPole's Euler step makes
    `(x_t - x_{t-1}) / tau` the previous velocity exactly); the first step of an episode assumes
    zero velocity. The linear feedback gains were tuned by hand on CartPole-v1 and reach the 500-step
    limit from CartPole's random starts.
    """

    tau = 0.02  # CartPole's integration step
    gains = np.array([0.5, 1.0, 10.0, 2.5])  # on (x, x_dot, theta, theta_dot)

    def __init__(self, num_envs: int = 1, epsilon: float = 0.0, seed: int | None = None) -> None:
        self.num_envs = num_envs
        self.epsilon = epsilon  # probability of a uniformly random action, for data diversity
        self.rng = np.random.default_rng(seed)
        self.previous = np.zeros((num_envs, 2))

    def __call__(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        """obs: [num_envs, 2]; episode_starts: [num_envs] bool -> actions [num_envs] int64."""
        obs = np.asarray(obs, dtype=np.float64)
        starts = np.asarray(episode_starts, dtype=bool)[:, None]
        previous = np.where(starts, obs, self.previous)
        velocity = (obs - previous) / self.tau
        self.previous = obs
        state = np.stack([obs[:, 0], velocity[:, 0], obs[:, 1], velocity[:, 1]], axis=1)
        actions = (state @ self.gains > 0).astype(np.int64)
        random = self.rng.random(self.num_envs) < self.epsilon
        actions[random] = self.rng.integers(0, 2, size=int(random.sum()))
        return actions


class PendulumNoVelExpert:
    """Scripted Pendulum swing-up for `[cos, sin]` observations, batched over `num_envs`.

    The angular velocity is the wrapped angle difference over `dt` (Pendulum's semi-implicit Euler
    step makes it exact after the first step). Far from upright it pumps energy towards the upright
    energy; near upright it holds the pole with a PD controller.
    """

    dt = 0.05
    max_torque = 2.0

    def __init__(self, num_envs: int = 1, noise_std: float = 0.0, seed: int | None = None) -> None:
        self.num_envs = num_envs
        self.noise_std = noise_std  # Gaussian torque noise, for data diversity
        self.rng = np.random.default_rng(seed)
        self.previous = np.zeros(num_envs)

    def __call__(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        """obs: [num_envs, 2]; episode_starts: [num_envs] bool -> actions [num_envs, 1] float32."""
        obs = np.asarray(obs, dtype=np.float64)
        theta = np.arctan2(obs[:, 1], obs[:, 0])  # 0 is upright
        previous = np.where(np.asarray(episode_starts, dtype=bool), theta, self.previous)
        theta_dot = (np.angle(np.exp(1j * (theta - previous)))) / self.dt
        self.previous = theta
        # Energy with m = l = 1, g = 10 (Pendulum's dynamics: theta'' = 15 sin(theta) + 3 u):
        # E = theta_dot^2 / 6 + 5 (cos(theta) - 1) / ... we only need its sign relative to upright (0).
        energy = theta_dot**2 / 6.0 - 5.0 * (1.0 - np.cos(theta))
        swing = -np.sign(theta_dot + 1e-6) * np.sign(energy) * self.max_torque
        hold = -10.0 * theta - 2.0 * theta_dot
        near_top = np.cos(theta) > 0.85
        torque = np.where(near_top, hold, swing)
        torque = torque + self.noise_std * self.rng.standard_normal(self.num_envs)
        return np.clip(torque, -self.max_torque, self.max_torque).astype(np.float32)[:, None]


def scripted_expert(env_id: str, num_envs: int = 1, noise: float = 0.0, seed: int | None = None):
    """The scripted expert of a POMDP env id; `noise` is epsilon (CartPole) or torque std (Pendulum)."""
    if env_id == "CartPoleNoVel-v1":
        return CartPoleNoVelExpert(num_envs, epsilon=noise, seed=seed)
    if env_id == "PendulumNoVel-v1":
        return PendulumNoVelExpert(num_envs, noise_std=noise, seed=seed)
    raise ValueError(
        f"no scripted expert for {env_id!r}; scripted experts: CartPoleNoVel-v1, PendulumNoVel-v1"
    )
