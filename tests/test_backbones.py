"""The Backbone contract, checked the same way for every registered backbone."""

from __future__ import annotations

import pytest
import torch

from policies.backbones import BACKBONES, count_parameters, hidden_dim_for_budget, make_backbone, mask_state

NAMES = sorted(BACKBONES)
D_IN, HIDDEN = 5, 16


def _make(name: str, num_layers: int = 2):
    torch.manual_seed(0)
    model = make_backbone(name, D_IN, HIDDEN, num_layers).double()
    return model.eval()


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*mingru"):
        make_backbone("rwkv", 4, 8)


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_step_loop_with_state_and_resets(name):
    model = _make(name)
    batch, length = 3, 17
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, D_IN, dtype=torch.float64, generator=generator)
    starts = torch.rand(batch, length, generator=generator) < 0.2
    starts[0, 0] = True
    # A non-trivial initial state: whatever a prefix leaves behind.
    prefix = torch.randn(batch, 4, D_IN, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        _, state0 = model(prefix)
        y_seq, state_seq = model(x, state0, starts)
        state, outputs = state0, []
        for t in range(length):
            y_t, state = model.step(x[:, t], state, starts[:, t])
            outputs.append(y_t)
    y_loop = torch.stack(outputs, dim=1)
    assert y_seq.shape == (batch, length, HIDDEN)
    torch.testing.assert_close(y_seq, y_loop, rtol=1e-7, atol=1e-8)
    for s_seq, s_loop in zip(state_seq, state, strict=True):
        torch.testing.assert_close(s_seq, s_loop.to(s_seq.dtype), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_reset_forgets_everything_before(name):
    """Output after a reset must not depend on what came before it."""
    model = _make(name)
    generator = torch.Generator().manual_seed(2)
    tail = torch.randn(2, 6, D_IN, dtype=torch.float64, generator=generator)
    head = torch.randn(2, 5, D_IN, dtype=torch.float64, generator=generator)
    x = torch.cat([head, tail], dim=1)
    starts = torch.zeros(2, 11, dtype=torch.bool)
    starts[:, 5] = True
    with torch.no_grad():
        y_full, _ = model(x, None, starts)
        y_tail, _ = model(tail)
    torch.testing.assert_close(y_full[:, 5:], y_tail, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = make_backbone(name, D_IN, HIDDEN, 2)
    x = torch.randn(2, 9, D_IN)
    starts = torch.zeros(2, 9, dtype=torch.bool)
    starts[1, 4] = True
    y, _ = model(x, model.initial_state(2), starts)
    (y.square().mean()).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, f"{name}: no gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_rejected_clearly(name):
    model = make_backbone(name, D_IN, HIDDEN)
    with pytest.raises(ValueError, match=r"\[B, T, input_dim\]"):
        model(torch.randn(2, 7))
    with pytest.raises(ValueError, match="input_dim=5"):
        model(torch.randn(2, 3, D_IN + 1))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.ones(2, 3, D_IN, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, input_dim\]"):
        model.step(torch.randn(2, 3, D_IN), model.initial_state(2))
    with pytest.raises(ValueError, match="episode_starts must have shape"):
        model(torch.randn(2, 3, D_IN), None, torch.zeros(2, 4, dtype=torch.bool))
    # A state for another batch size, and a state from another backbone, are refused.
    with pytest.raises(ValueError, match="batch"):
        model.step(torch.randn(2, D_IN), model.initial_state(3))
    other = "lstm" if name != "lstm" else "gru"
    foreign = make_backbone(other, D_IN, HIDDEN + 8).initial_state(2)
    with pytest.raises(ValueError, match="state"):
        model.step(torch.randn(2, D_IN), foreign)


def test_mask_state_zeroes_only_starting_rows():
    state = (torch.ones(3, 2, 4), torch.arange(3))
    masked = mask_state(state, torch.tensor([False, True, False]))
    assert masked[0][1].abs().sum() == 0 and masked[0][0].sum() == 8 and masked[1].tolist() == [0, 0, 2]


@pytest.mark.parametrize("name", ["mingru", "lstm", "transformer"])
def test_hidden_dim_for_budget_matches_parameter_budget(name):
    budget = 50_000
    width = hidden_dim_for_budget(name, 11, budget, num_layers=2)
    assert width % 8 == 0
    assert count_parameters(make_backbone(name, 11, width, 2)) <= budget
    assert count_parameters(make_backbone(name, 11, width + 8, 2)) > budget
