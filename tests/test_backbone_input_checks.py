"""Backbone API input checks (issue 22): dtype, empty sequences and foreign states are ValueErrors naming
what was expected, and the compiled CPU step gives NaN where the eager step does instead of raising."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from recurrl.policies.backbones import BACKBONES, make_backbone

NAMES = sorted(BACKBONES)
D_IN, HIDDEN = 5, 16


@pytest.mark.parametrize("name", NAMES)
def test_input_dtype_must_be_the_parameters(name):
    model = make_backbone(name, D_IN, HIDDEN)
    x = torch.randn(2, 3, D_IN)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"expected torch.float32 input .*got {dtype}"):
            model(x.to(dtype))
        with pytest.raises(ValueError, match="expected torch.float32 input"):
            model.step(x[:, 0].to(dtype), model.initial_state(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision feeds bf16 to fp32 weights
        model(x.bfloat16())
    model.double()  # the check follows the parameters
    model(x.double())
    with pytest.raises(ValueError, match="expected torch.float64 input"):
        model(x)


@pytest.mark.parametrize("name", NAMES)
def test_empty_sequence_is_refused(name):
    model = make_backbone(name, D_IN, HIDDEN)
    with pytest.raises(ValueError, match=r"empty sequence.*\(2, 0, 5\).*T=0"):
        model(torch.randn(2, 0, D_IN))


@pytest.mark.parametrize("name", NAMES)
def test_a_same_shaped_state_of_another_backbone_is_refused(name):
    """mingru and minlstm states have the same shapes: only the record of the maker tells them apart."""
    model = make_backbone(name, D_IN, HIDDEN, 2)
    other = make_backbone("minlstm" if name == "mingru" else "mingru", D_IN, HIDDEN, 2)
    with pytest.raises(ValueError, match=r"made by another backbone, Min(GRU|LSTM)\(input_dim=5, hidden_dim=16"):
        model.step(torch.randn(3, D_IN), other.initial_state(3))
    with pytest.raises(ValueError, match="made by another backbone"):
        model(torch.randn(3, 4, D_IN), other(torch.randn(3, 2, D_IN))[1])
    # Its own states pass, from any instance of the same configuration, and survive copies and pickles.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        _, state = model(torch.randn(3, 4, D_IN))
        for carried in (state, copy.deepcopy(state), pickle.loads(pickle.dumps(state)), tuple(state)):
            twin.step(torch.randn(3, D_IN), carried)
    assert pickle.loads(pickle.dumps(model)) is not None  # the backbone itself still pickles


def test_states_of_different_widths_report_the_maker():
    model, other = make_backbone("mingru", D_IN, HIDDEN), make_backbone("mingru", D_IN, HIDDEN + 8)
    with pytest.raises(ValueError, match="hidden_dim=24"):
        model.step(torch.randn(2, D_IN), other.initial_state(2))


def _eager_step(model, x, state):
    scan, model.scan, model._fused_step = model.scan, "loop", None
    try:
        return model.step(x, state)
    finally:
        model.scan, model._fused_step = scan, None


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_compiled_step_gives_nan_where_the_eager_step_does(name, bad):
    torch.manual_seed(0)
    model = make_backbone(name, D_IN, HIDDEN, 2).eval()
    x = torch.randn(3, D_IN)
    x[1, 2] = bad
    state = model.initial_state(3)
    with torch.no_grad():
        y, (h,) = model.step(x, state)  # compiled (numba) on CPU: must not raise
        y_eager, (h_eager,) = _eager_step(model, x, state)
    assert model._fused_step is None or not isinstance(model._fused_step, str)
    torch.testing.assert_close(torch.isnan(y), torch.isnan(y_eager))
    torch.testing.assert_close(torch.isnan(h), torch.isnan(h_eager))
    finite = ~torch.isnan(y_eager)
    torch.testing.assert_close(y[finite], y_eager[finite], rtol=1e-4, atol=1e-5)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2]]).any()
    # A NaN state (e.g. from a diverged run) is NaN out, too.
    with torch.no_grad():
        y, _ = model.step(torch.randn(2, D_IN), (torch.full((2, 2, HIDDEN), math.nan),))
    assert torch.isnan(y).all()


def test_non_finite_target_return_reaching_the_compiled_step_is_nan_not_an_error(tiny_hopper_dataset_path, tmp_path):
    """The Decision model's compiled tick with an infinite return-to-go: NaN actions, no ZeroDivisionError."""
    from tiny_agents import decision_checkpoint

    from recurrl.agents.decision.model_io import load_decision_checkpoint

    model, _ = load_decision_checkpoint(decision_checkpoint(tmp_path / "ckpt", tiny_hopper_dataset_path, "mingru"))
    model.eval()
    with torch.no_grad():
        predictions, _ = model.step(
            torch.full((2, 1), math.inf),
            torch.zeros(2, model.state_dim),
            torch.zeros(2, model.act_dim),
            torch.zeros(2, dtype=torch.long),
            model.initial_state(2),
            torch.ones(2, dtype=torch.bool),
        )
    assert torch.isnan(predictions).all()
