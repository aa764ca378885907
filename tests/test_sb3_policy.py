"""The sb3-contrib adapter: our backbones inside RecurrentPPO (rollout buffer, predict, evaluate, save/load)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.evaluation import evaluate_policy

import recurrl.envs  # noqa: F401  (registers CartPoleNoVel-v1)
from recurrl.policies.backbones.registry import make_backbone
from recurrl.policies.integrations.sb3 import (
    BackboneAsLSTM,
    MinGRUPolicy,
    MinLSTMPolicy,
    RecurrentBackbonePolicy,
)


def _model(policy, **policy_kwargs) -> RecurrentPPO:
    return RecurrentPPO(
        policy,
        "CartPoleNoVel-v1",
        n_steps=32,
        batch_size=64,
        n_epochs=2,
        seed=0,
        policy_kwargs={"lstm_hidden_size": 16, **policy_kwargs},
    )


def _rollout_actions(model: RecurrentPPO, steps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic actions of `model` on a seeded episode sequence, carrying the state via predict."""
    env = gym.make("CartPoleNoVel-v1")
    obs, _ = env.reset(seed=3)
    state, start, actions, states = None, np.array([True]), [], []
    for _ in range(steps):
        action, state = model.predict(obs[None], state=state, episode_start=start, deterministic=True)
        actions.append(int(action[0]))
        states.append(state[0].copy())
        obs, _, terminated, truncated, _ = env.step(int(action[0]))
        start = np.array([terminated or truncated])
        if start[0]:
            obs, _ = env.reset()
    return np.array(actions), np.stack(states)


def test_process_sequence_matches_per_tick_steps() -> None:
    """Training path (one forward over padded sequences with resets) == rollout path (one tick at a time)."""
    torch.manual_seed(0)
    wrapper = BackboneAsLSTM(make_backbone("mingru", 3, 8, num_layers=2))
    n_seq, length = 3, 7
    features = torch.randn(n_seq * length, 3)
    starts = torch.zeros(n_seq, length)
    starts[0, 3] = 1.0
    starts[2, 0] = 1.0
    h0 = torch.randn(1, n_seq, wrapper.hidden_size)
    lstm_states = (h0, torch.zeros_like(h0))
    latent, (h_last, c_last) = wrapper.process(features, lstm_states, starts.flatten())
    x = features.reshape(n_seq, length, 3)
    ticks, states = [], lstm_states
    for t in range(length):
        y, states = wrapper.process(x[:, t], states, starts[:, t])
        ticks.append(y)
    torch.testing.assert_close(
        latent.reshape(n_seq, length, -1), torch.stack(ticks, dim=1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(h_last, states[0], atol=1e-5, rtol=1e-5)
    assert torch.all(c_last == 0)
    per_env = sum(int(np.prod(shape)) for shape, _ in wrapper.backbone.state_shapes())
    assert wrapper.hidden_size == per_env and wrapper.num_layers == 1


def test_recurrent_ppo_learn_predict_evaluate_save_load(tmp_path) -> None:
    model = _model(MinGRUPolicy)
    assert model.policy.lstm_actor.backbone.name == "mingru"
    assert not any(isinstance(m, torch.nn.LSTM) for m in model.policy.modules())
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=256)
    changed = [
        k for k, v in model.policy.state_dict().items() if "lstm_actor" in k and not torch.equal(v, before[k])
    ]
    assert changed, "the minGRU backbone received no gradient updates"

    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2)
    assert np.isfinite(mean_reward) and mean_reward > 0

    actions, states = _rollout_actions(model)
    assert states.shape == (40, 1, 1, model.policy.lstm_actor.hidden_size)
    assert np.abs(states).sum() > 0
    model.save(tmp_path / "mingru_ppo")
    loaded = RecurrentPPO.load(tmp_path / "mingru_ppo")
    assert isinstance(loaded.policy, MinGRUPolicy)
    loaded_actions, loaded_states = _rollout_actions(loaded)
    np.testing.assert_array_equal(actions, loaded_actions)
    np.testing.assert_allclose(states, loaded_states, atol=1e-6)


def test_minlstm_policy_and_shared_memory() -> None:
    model = _model(MinLSTMPolicy, shared_lstm=True, enable_critic_lstm=False, n_lstm_layers=2)
    assert model.policy.lstm_actor.backbone.name == "minlstm"
    assert model.policy.lstm_actor.backbone.num_layers == 2
    assert model.policy.lstm_critic is None
    model.learn(total_timesteps=64)


def test_any_registry_backbone_by_name() -> None:
    model = _model(RecurrentBackbonePolicy, backbone="gru")
    assert model.policy.lstm_actor.backbone.name == "gru"
    model.learn(total_timesteps=64)


def test_unsupported_observation_space_is_rejected() -> None:
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
    with pytest.raises(ValueError, match="Box observation spaces"):
        MinGRUPolicy(space, gym.spaces.Discrete(2), lambda _: 1e-3)
