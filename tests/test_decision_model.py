"""DecisionModel: forward (training) and step (acting) agree, causality, heads, normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recurrl.policies.backbones.registry import BACKBONES
from recurrl.policies.decision import DecisionModel, DecisionModelConfig, action_loss

STATE_DIM, ACT_DIM = 5, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead (and stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(backbone: str, tokens: str = "triple", discrete: bool = False, **kw) -> DecisionModel:
    torch.manual_seed(0)
    options = {"max_context": 3 * 8} if backbone == "transformer" else {}
    config = DecisionModelConfig(
        STATE_DIM,
        ACT_DIM,
        discrete=discrete,
        backbone_name=backbone,
        hidden_dim=16,
        num_layers=2,
        backbone_options=options,
        tokens=tokens,
        max_timestep=50,
        obs_mean=np.arange(STATE_DIM, dtype=np.float32),
        obs_std=np.full(STATE_DIM, 2.0, np.float32),
        **kw,
    )
    return DecisionModel(config).eval()


def random_batch(batch: int, length: int, discrete: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rtg = torch.rand(batch, length, 1, generator=g) * 3000
    states = torch.randn(batch, length, STATE_DIM, generator=g) * 3
    if discrete:
        actions = torch.randint(0, ACT_DIM, (batch, length), generator=g)
    else:
        actions = torch.rand(batch, length, ACT_DIM, generator=g) * 2 - 1
    timesteps = torch.arange(length).repeat(batch, 1) + torch.randint(0, 10, (batch, 1), generator=g)
    starts = torch.zeros(batch, length, dtype=torch.bool)
    starts[0, 3] = True  # an episode begins mid-sequence in row 0
    starts[1, 0] = True
    timesteps[0, 3:] = torch.arange(length - 3)
    return rtg, states, actions, timesteps, starts


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("tokens", ["triple", "fused"])
def test_step_matches_forward(backbone: str, tokens: str) -> None:
    """Acting one tick at a time gives the predictions of training's forward, resets included."""
    model = make_model(backbone, tokens)
    rtg, states, actions, timesteps, starts = random_batch(3, 7, discrete=False)
    with torch.no_grad():
        expected, _ = model(rtg, states, actions, timesteps, starts)
        state = model.initial_state(3)
        prev = torch.zeros(3, ACT_DIM)
        got = []
        for t in range(7):
            step_starts = starts[:, t] | (t == 0)
            pred, state = model.step(rtg[:, t], states[:, t], prev, timesteps[:, t], state, step_starts)
            got.append(pred)
            prev = actions[:, t]
    torch.testing.assert_close(torch.stack(got, 1), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tokens", ["triple", "fused"])
def test_discrete_step_matches_forward(tokens: str) -> None:
    model = make_model("gru", tokens, discrete=True)
    rtg, states, actions, timesteps, starts = random_batch(3, 6, discrete=True)
    with torch.no_grad():
        expected, _ = model(rtg, states, actions, timesteps, starts)
        state = model.initial_state(3)
        prev = torch.zeros(3, dtype=torch.long)
        got = []
        for t in range(6):
            pred, state = model.step(
                rtg[:, t], states[:, t], prev, timesteps[:, t], state, starts[:, t] | (t == 0)
            )
            got.append(pred)
            prev = actions[:, t]
    torch.testing.assert_close(torch.stack(got, 1), expected, atol=2e-5, rtol=1e-4)
    assert expected.shape == (3, 6, ACT_DIM)  # logits
    assert model.predictions_to_actions(expected[:, -1]).dtype == torch.long


@pytest.mark.parametrize("tokens", ["triple", "fused"])
def test_prediction_of_a_t_does_not_see_a_t(tokens: str) -> None:
    """Causality: a_t's prediction ignores a_t and later inputs, but a_{t+1}'s depends on a_t."""
    model = make_model("gru", tokens)
    rtg, states, actions, timesteps, _ = random_batch(2, 6, discrete=False)
    with torch.no_grad():
        base, _ = model(rtg, states, actions, timesteps)
        changed = actions.clone()
        changed[:, 3] = -changed[:, 3]
        other, _ = model(rtg, states, changed, timesteps)
    torch.testing.assert_close(other[:, :4], base[:, :4])
    assert (other[:, 4] - base[:, 4]).abs().max() > 1e-6


@pytest.mark.parametrize("backbone", ["mingru", "transformer"])
@pytest.mark.parametrize("discrete", [False, True])
def test_without_previous_actions_step_matches_forward_and_ignores_actions(
    backbone: str, discrete: bool
) -> None:
    """previous_actions=False: no action embedding, predictions independent of every action fed,
    and one tick at a time still gives training's forward (resets included)."""
    model = make_model(backbone, "fused", discrete=discrete, previous_actions=False)
    assert not any(name.startswith("embed_action") for name in model.state_dict())
    rtg, states, actions, timesteps, starts = random_batch(3, 7, discrete=discrete)
    other = torch.randint(0, ACT_DIM, actions.shape) if discrete else -actions
    with torch.no_grad():
        expected, _ = model(rtg, states, actions, timesteps, starts)
        unchanged, _ = model(rtg, states, other, timesteps, starts)
        state = model.initial_state(3)
        got = []
        for t in range(7):
            prev = other[:, t]  # whatever is fed as the previous action is not read
            pred, state = model.step(
                rtg[:, t], states[:, t], prev, timesteps[:, t], state, starts[:, t] | (t == 0)
            )
            got.append(pred)
    torch.testing.assert_close(unchanged, expected)
    torch.testing.assert_close(torch.stack(got, 1), expected, atol=2e-5, rtol=1e-4)
    # The states are still read: changing one changes that tick's prediction.
    changed = states.clone()
    changed[:, 4] += 5.0
    with torch.no_grad():
        moved, _ = model(rtg, changed, actions, timesteps, starts)
    assert (moved[:, 4] - expected[:, 4]).abs().max() > 1e-6


def test_continuous_head_respects_action_bounds_and_normalization() -> None:
    low, high = np.array([-2.0, 0.0, -1.0]), np.array([2.0, 1.0, 3.0])
    model = make_model("gru", action_low=low, action_high=high)
    rtg, states, actions, timesteps, _ = random_batch(2, 4, discrete=False)
    env_actions = model.unnormalize_actions(actions)
    torch.testing.assert_close(model.normalize_actions(env_actions), actions)
    with torch.no_grad():
        pred, _ = model(rtg, states, actions, timesteps)
    out = model.predictions_to_actions(pred)
    assert (out >= torch.tensor(low, dtype=torch.float32)).all() and (
        out <= torch.tensor(high, dtype=torch.float32)
    ).all()
    # States are normalized inside: a shifted-and-scaled mean/std sees the same normalized input.
    torch.testing.assert_close(
        model.normalize_states(model.obs_mean + 2.0 * model.obs_std), torch.full((STATE_DIM,), 2.0)
    )


def test_action_loss_ignores_padding_and_learns() -> None:
    model = make_model("gru")
    model.train()
    rtg, states, actions, timesteps, _ = random_batch(4, 6, discrete=False)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 4:] = False
    pred, _ = model(rtg, states, actions, timesteps)
    garbage = actions.clone()
    garbage[:, 4:] = 100.0  # padded targets must not matter
    assert torch.allclose(action_loss(model, pred, actions, mask), action_loss(model, pred, garbage, mask))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        pred, _ = model(rtg, states, actions, timesteps)
        loss = action_loss(model, pred, actions, mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="tokens"):
        DecisionModel(DecisionModelConfig(STATE_DIM, ACT_DIM, backbone_name="gru", tokens="quadruple"))
    with pytest.raises(ValueError, match="size 5"):
        DecisionModel(DecisionModelConfig(STATE_DIM, ACT_DIM, backbone_name="gru", obs_mean=np.zeros(4)))
    with pytest.raises(ValueError, match="unknown backbone"):
        DecisionModel(DecisionModelConfig(STATE_DIM, ACT_DIM, backbone_name="nope"))
    with pytest.raises(ValueError, match="finite bounds"):
        DecisionModel(DecisionModelConfig(STATE_DIM, ACT_DIM, backbone_name="gru", action_low=np.full(3, -np.inf)))
    with pytest.raises(ValueError, match="previous_actions=False needs tokens='fused'"):
        DecisionModel(DecisionModelConfig(STATE_DIM, ACT_DIM, backbone_name="gru", tokens="triple", previous_actions=False))


def test_state_dict_keys_are_those_of_saved_checkpoints() -> None:
    """The lean per-tick path must not rename anything: checkpoints written before still load."""
    model = make_model("mingru", "fused")
    block = [
        "norm1.weight",
        "norm1.bias",
        "cell.proj.weight",
        "cell.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
    ]
    expected = [
        "obs_mean",
        "obs_std",
        "action_low",
        "action_high",
        "embed_timestep.weight",
        "embed_return.weight",
        "embed_return.bias",
        "embed_state.weight",
        "embed_state.bias",
        "embed_action.weight",
        "embed_action.bias",
        "embed_ln.weight",
        "embed_ln.bias",
        "backbone.input_proj.weight",
        "backbone.input_proj.bias",
        *(f"backbone.blocks.{i}.{key}" for i in range(2) for key in block),
        "backbone.norm.weight",
        "backbone.norm.bias",
        "head.weight",
        "head.bias",
    ]
    assert list(model.state_dict()) == expected
    fresh = make_model("mingru", "fused")
    fresh.load_state_dict(model.state_dict())  # strict


@pytest.mark.parametrize("discrete", [False, True])
def test_step_forgets_the_previous_action_where_an_episode_starts(discrete: bool) -> None:
    """Fused tokens: a_{t-1} of a row whose episode starts is replaced by "none", whatever it was."""
    model = make_model("mingru", "fused", discrete=discrete)
    rtg, states, _, timesteps, _ = random_batch(2, 4, discrete=discrete)
    none = torch.full((2,), -1) if discrete else torch.zeros(2, ACT_DIM)
    junk = torch.tensor([2, 1]) if discrete else torch.full((2, ACT_DIM), 0.7)
    starts = torch.tensor([True, False])
    with torch.no_grad():
        state = model.initial_state(2)
        got, _ = model.step(rtg[:, 0], states[:, 0], junk, timesteps[:, 0], state, starts)
        want, _ = model.step(rtg[:, 0], states[:, 0], none, timesteps[:, 0], state, starts)
    torch.testing.assert_close(got[0], want[0])  # row 0 starts: its previous action is ignored
    assert (got[1] - want[1]).abs().max() > 1e-6  # row 1 goes on: it is used


def test_training_mode_dropout_matches_the_modules() -> None:
    """The functional token path draws dropout exactly like the nn.Dropout/nn.LayerNorm modules."""
    model = make_model("mingru", "fused", dropout=0.3).train()
    x = torch.randn(4, 6, model.hidden_dim)
    torch.manual_seed(7)
    got = model._tokens(x)
    torch.manual_seed(7)
    want = model.embed_dropout(model.embed_ln(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got == 0).any()  # dropout did act
