"""The compiled minGRU/minLSTM step (policies/backbones/numba_step.py) against the eager step.

The compiled step is what acting runs on CPU (evaluation, PPO rollouts), so it must give the eager
step's outputs and states, follow every way weights change, and step aside wherever torch is needed.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from recurrl.policies.backbones.kernels.numba_step import StepWeights
from recurrl.policies.backbones.minrnn import COMPILED_STEP_MAX_BATCH, MinRNNBackbone
from recurrl.policies.backbones.registry import make_backbone

pytest.importorskip("numba")

MINRNN = ("mingru", "minlstm")
TOL = {"atol": 2e-5, "rtol": 1e-5}  # other summation order than torch's matmuls


def _pair(name: str, **options) -> tuple[MinRNNBackbone, MinRNNBackbone]:
    """(compiled, eager) backbones with the same weights."""
    torch.manual_seed(0)
    fused = make_backbone(name, 7, 16, 3, **options).eval()
    eager = copy.deepcopy(fused)
    eager.scan = "loop"  # the step's switch: the loop backend keeps the eager ops
    return fused, eager


def _uses_kernel(backbone: MinRNNBackbone) -> bool:
    return isinstance(backbone._fused_step, StepWeights)


def _rollout(
    backbone: MinRNNBackbone, x: torch.Tensor, starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step through x [B, T, D] with resets; -> (y [B, T, H], final h)."""
    state = backbone.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, state = backbone.step(x[:, t], state, starts[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state[0]


@pytest.mark.parametrize("name", MINRNN)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"expansion_factor": 1.5},  # wider cell: the output projection runs
        {"mlp_ratio": 0.0},  # no MLP
        {"mlp_ratio": 3.0, "dropout": 0.2},  # dropout is the identity in eval mode
    ],
)
@pytest.mark.parametrize("batch", [1, 5])
def test_compiled_step_matches_eager_and_scan(name: str, options: dict, batch: int) -> None:
    fused, eager = _pair(name, **options)
    x = torch.randn(batch, 12, 7) * 2
    starts = torch.rand(batch, 12) < 0.2
    with torch.no_grad():
        y_f, h_f = _rollout(fused, x, starts)
        assert _uses_kernel(fused) and not _uses_kernel(eager)
        y_e, h_e = _rollout(eager, x, starts)
        y_scan, (h_scan,) = fused(x, None, starts)
    torch.testing.assert_close(y_f, y_e, **TOL)
    torch.testing.assert_close(h_f, h_e, **TOL)
    torch.testing.assert_close(y_f, y_scan, **TOL)
    torch.testing.assert_close(h_f, h_scan, **TOL)


def test_gelu_tanh_and_saturated_inputs() -> None:
    fused, eager = _pair("minlstm")
    for backbone in (fused, eager):
        for block in backbone.blocks:
            block.mlp[1].approximate = "tanh"
    x = torch.randn(3, 7) * 1e4  # saturates every gate: the minLSTM logit must stay finite
    state = (torch.randn(3, 3, 16),)
    with torch.inference_mode():
        y_f, (h_f,) = fused.step(x, state)
        y_e, (h_e,) = eager.step(x, state)
    assert _uses_kernel(fused)
    assert torch.isfinite(y_f).all() and torch.isfinite(h_f).all()
    torch.testing.assert_close(y_f, y_e, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h_f, h_e, atol=1e-4, rtol=1e-4)


def test_eager_where_torch_is_needed() -> None:
    fused, _ = _pair("mingru", dropout=0.1)
    x, state = torch.randn(2, 7), fused.initial_state(2)
    y, _ = fused.step(x, state)  # autograd on: gradients must flow through the step
    assert y.requires_grad and fused._fused_step is None
    y.sum().backward()
    assert fused.input_proj.weight.grad is not None
    with torch.no_grad():
        fused.train()  # active dropout
        fused.step(x, state)
        assert fused._fused_step is None
        fused.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused.step(x, state)
        assert fused._fused_step is None
        fused.step(x, state)
        assert _uses_kernel(fused)
        fused.double()  # a move drops the views; fp64 runs eager
        fused.step(x.double(), (state[0].double(),))
        assert fused._fused_step is None
        fused.float()
        fused.norm = torch.nn.LayerNorm(16, elementwise_affine=False)  # a hand-edited backbone
        fused._forget_caches()
        y, _ = fused.step(x, state)
        assert isinstance(fused._fused_step, str) and "LayerNorm" in fused._fused_step
        assert torch.isfinite(y).all()


def _assert_same_step(fused: MinRNNBackbone, eager: MinRNNBackbone) -> None:
    x, state = torch.randn(4, 7), (torch.randn(4, 3, 16),)
    with torch.no_grad():
        y_f, _ = fused.step(x, state)
        y_e, _ = eager.step(x, state)
    assert _uses_kernel(fused)
    torch.testing.assert_close(y_f, y_e, **TOL)


def test_follows_weight_changes() -> None:
    fused, eager = _pair("mingru")
    _assert_same_step(fused, eager)  # views built

    # An optimizer step writes the parameters in place (fused AdamW does not even bump their version).
    for backbone in (fused, eager):
        torch.manual_seed(1)
        opt = torch.optim.AdamW(backbone.parameters(), lr=0.1, fused=True)
        backbone(torch.randn(2, 5, 7))[0].square().sum().backward()
        opt.step()
    _assert_same_step(fused, eager)

    # load_state_dict copies into the same storage; assign=True swaps the tensors.
    other, _ = _pair("mingru")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    for assign in (False, True):
        fused.load_state_dict(other.state_dict(), assign=assign)
        eager.load_state_dict(other.state_dict(), assign=assign)
        _assert_same_step(fused, eager)

    # Replacing a parameter's storage behind the module's back.
    with torch.no_grad():
        fused.input_proj.weight.data = fused.input_proj.weight.data * 3
        eager.input_proj.weight.data = eager.input_proj.weight.data * 3
    _assert_same_step(fused, eager)


def test_copies_and_pickles_get_their_own_views() -> None:
    fused, eager = _pair("minlstm")
    _assert_same_step(fused, eager)
    clone = copy.deepcopy(fused)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    restored = pickle.loads(pickle.dumps(fused))
    with torch.no_grad():
        for p in fused.parameters():
            p.mul_(0.5)  # must not leak into the copies
        for p in eager.parameters():
            p.mul_(0.5)
    _assert_same_step(fused, eager)
    reference = copy.deepcopy(eager)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(2.0)
    for copy_ in (clone, loaded, restored):
        _assert_same_step(copy_, reference)


def test_large_batches_run_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    import recurrl.policies.backbones.kernels.numba_step as numba_step

    calls = []
    kernel = numba_step.StepWeights.step
    monkeypatch.setattr(
        numba_step.StepWeights, "step", lambda self, x, h: calls.append(x.shape[0]) or kernel(self, x, h)
    )
    fused, eager = _pair("mingru")
    with torch.no_grad():
        for batch in (1, COMPILED_STEP_MAX_BATCH, COMPILED_STEP_MAX_BATCH + 1, 64):
            x, state = torch.randn(batch, 7), (torch.randn(batch, 3, 16),)
            torch.testing.assert_close(fused.step(x, state)[0], eager.step(x, state)[0], **TOL)
    assert calls == [1, COMPILED_STEP_MAX_BATCH]  # above the limit the eager ops are faster
