"""The Backbone contract, checked the same way for every registered backbone."""

from __future__ import annotations

import pytest
import torch

from recurrl.policies.backbones import (
    BACKBONES,
    count_parameters,
    hidden_dim_for_budget,
    make_backbone,
    mask_state,
)
from recurrl.policies.backbones.base import (
    MaskDropout,
    mask_dropout,
    run_dropout,
    run_embedding,
    run_layer_norm,
    run_linear,
)

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


def test_mask_state_gives_exact_zeros_even_from_inf_and_nan_and_keeps_dtypes():
    state = (
        torch.tensor([[float("inf"), -1.0], [float("nan"), 2.0]]),
        torch.tensor([3, 4]),
        torch.ones(2, 3, dtype=torch.bfloat16),
    )
    masked = mask_state(state, torch.tensor([True, False]))
    assert masked[0][0].eq(0).all() and not masked[0][0].signbit().any()
    assert masked[0][1].isnan().any() and masked[0][1, 1] == 2.0  # rows that go on are untouched
    assert masked[1].tolist() == [0, 4] and masked[1].dtype == torch.int64
    assert masked[2].dtype == torch.bfloat16 and masked[2].sum() == 3


@pytest.mark.parametrize("name", ["mingru", "transformer"])
def test_device_check_follows_moves_and_loads(name):
    """The parameters' device is cached for the per-tick check; moving or loading the module refreshes it."""
    model = make_backbone(name, D_IN, HIDDEN, 2)
    weights = model.state_dict()
    x, state = torch.randn(2, D_IN), model.initial_state(2)
    model.step(x, state)  # caches "cpu"
    torch.nn.Sequential(model).to("meta")  # moved through a parent module
    with pytest.raises(ValueError, match="parameters are on meta"):
        model.step(x, state)
    model.load_state_dict(weights, assign=True)  # back on the CPU by swapping tensors
    y, _ = model.step(x, state)
    assert y.device.type == "cpu"


def test_functional_calls_equal_the_module_calls():
    """run_* (the per-tick path) give exactly what calling the module gives, parametrized weights included."""
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    layers = [torch.nn.Linear(6, 4), torch.nn.Linear(6, 4, bias=False)]
    parametrized = torch.nn.Linear(6, 4)
    torch.nn.utils.parametrize.register_parametrization(parametrized, "weight", _Double())
    for layer in [*layers, parametrized]:
        assert torch.equal(run_linear(layer, x), layer(x))
    for norm in (torch.nn.LayerNorm(6), torch.nn.LayerNorm(6, elementwise_affine=False)):
        if norm.weight is not None:
            torch.nn.init.normal_(norm.weight)
        assert torch.equal(run_layer_norm(norm, x), norm(x))
    embedding = torch.nn.Embedding(5, 4, padding_idx=0)
    index = torch.tensor([[0, 3], [4, 1]])
    assert torch.equal(run_embedding(embedding, index), embedding(index))
    drop = torch.nn.Dropout(0.5)
    assert run_dropout(drop.eval(), x) is x and run_dropout(torch.nn.Dropout(0.0).train(), x) is x
    torch.manual_seed(1)
    got = run_dropout(drop.train(), x)
    torch.manual_seed(1)
    assert torch.equal(got, drop(x))


def test_mask_dropout_is_seeded_inverted_dropout_with_the_mask_in_backward():
    x = torch.rand(200, 500) + 0.5  # no zeros: a zero output means a dropped entry
    x.requires_grad_(True)
    torch.manual_seed(3)
    y = mask_dropout(x, 0.2)
    for drop in (MaskDropout(0.2).train(), lambda t: run_dropout(MaskDropout(0.2).train(), t)):
        torch.manual_seed(3)
        assert torch.equal(drop(x), y)  # seeded: the same draws again
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.8) < 0.01  # keep probability 1 - p
    torch.testing.assert_close(y[kept], x[kept] / 0.8)  # kept entries scaled by 1 / (1 - p)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.8)  # the gradient goes through the same mask
    assert MaskDropout(0.2).eval()(x) is x and MaskDropout(0.0).train()(x) is x


@pytest.mark.parametrize("heads", [1, 2])
def test_transformer_dropout_attention_equals_sdpa_without_the_dropout(heads):
    """The training-with-attention-dropout path computes what SDPA computes, up to the dropout."""
    model = make_backbone("transformer", D_IN, HIDDEN, 1, n_heads=heads, dropout=0.0).double()
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, heads, 9, HIDDEN // heads, dtype=torch.float64, generator=generator) for _ in range(3))
    allowed = (torch.rand(3, 1, 9, 9, generator=generator) < 0.5) | torch.eye(9, dtype=torch.bool)
    allowed &= torch.ones(9, 9, dtype=torch.bool).tril()
    for mask in (None, allowed):
        got = model._dropout_attention(q, k, v, model._causal_bias(mask, 9, q))
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        torch.testing.assert_close(got, want)


class _Double(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight
