"""The compiled Mamba step (policies/backbones/kernels/numba_mamba_step.py) against the eager step and forward.

The compiled step is what acting runs on CPU (evaluation, PPO rollouts), so it must give the eager
step's outputs and states, agree with `forward` over whole sequences with resets, follow every way
weights change, and step aside wherever torch is needed.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from recurrl.policies.backbones import make_backbone
from recurrl.policies.backbones.mamba import COMPILED_STEP_MAX_BATCH, MambaBackbone

pytest.importorskip("numba")

from recurrl.policies.backbones.kernels.numba_mamba_step import MambaStepWeights  # noqa: E402

TOL = {"atol": 2e-5, "rtol": 1e-5}  # fp32, another summation order than torch's, a 2-ulp exp


def _pair(**options) -> tuple[MambaBackbone, MambaBackbone]:
    """(compiled, eager) backbones with the same weights."""
    torch.manual_seed(0)
    fused = make_backbone("mamba", 7, 16, 3, **options).eval()
    eager = copy.deepcopy(fused)
    eager.scan = "mambapy"  # the step's switch: the reference backend keeps the eager ops
    return fused, eager


def _uses_kernel(backbone: MambaBackbone) -> bool:
    return isinstance(backbone._fused_step, MambaStepWeights)


def _rollout(backbone: MambaBackbone, x: torch.Tensor, starts: torch.Tensor, state=None):
    """Step through x [B, T, D] with resets -> (y [B, T, H], final state)."""
    state = backbone.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = backbone.step(x[:, t], state, starts[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("options", [{}, {"d_state": 4, "d_conv": 2, "expand": 1}, {"d_conv": 5}])
@pytest.mark.parametrize("batch", [1, 5])
def test_compiled_step_matches_eager_step_and_forward(options: dict, batch: int) -> None:
    fused, eager = _pair(**options)
    x = torch.randn(batch, 12, 7) * 2
    starts = torch.rand(batch, 12) < 0.2
    with torch.no_grad():
        state0 = tuple(s * 0.5 for s in fused(torch.randn(batch, 6, 7))[1])  # a carried state
        y_f, s_f = _rollout(fused, x, starts, state0)
        assert _uses_kernel(fused) and not _uses_kernel(eager)
        y_e, s_e = _rollout(eager, x, starts, state0)
        y_seq, s_seq = fused(x, state0, starts)
    for got, want in ((y_f, y_e), (y_f, y_seq), *zip(s_f, s_e, strict=True), *zip(s_f, s_seq, strict=True)):
        torch.testing.assert_close(got, want, **TOL)


def test_saturated_inputs_stay_finite() -> None:
    fused, eager = _pair()
    x = torch.randn(3, 7) * 1e4  # huge pre-activations: softplus, SiLU and exp at their limits
    state = tuple(torch.randn_like(s) for s in fused.initial_state(3))
    with torch.inference_mode():
        y_f, s_f = fused.step(x, state)
        y_e, s_e = eager.step(x, state)
    assert _uses_kernel(fused)
    assert torch.isfinite(y_f).all() and all(torch.isfinite(s).all() for s in s_f)
    torch.testing.assert_close(y_f, y_e, atol=1e-4, rtol=1e-4)


def test_eager_where_torch_is_needed() -> None:
    fused, _ = _pair()
    x, state = torch.randn(2, 7), fused.initial_state(2)
    y, _ = fused.step(x, state)  # autograd on: gradients must flow through the step
    assert y.requires_grad and fused._fused_step is None
    y.sum().backward()
    assert fused.input_proj.weight.grad is not None
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused.step(x, state)
        assert fused._fused_step is None
        fused.step(x, state)
        assert _uses_kernel(fused)
        fused.double()  # a move drops the table; fp64 runs eager
        fused.step(x.double(), tuple(s.double() for s in state))
        assert fused._fused_step is None
        fused.float()
        fused.layers[0].mixer.config.inner_layernorms = True  # a mambapy option the kernel lacks
        fused._forget_caches()
        fused.step(x, state)
        assert isinstance(fused._fused_step, str) and "inner_layernorms" in fused._fused_step


def _assert_same_step(fused: MambaBackbone, eager: MambaBackbone) -> None:
    x = torch.randn(4, 7)
    state = tuple(torch.randn_like(s) for s in fused.initial_state(4))
    with torch.no_grad():
        y_f, _ = fused.step(x, state)
        y_e, _ = eager.step(x, state)
    assert _uses_kernel(fused)
    torch.testing.assert_close(y_f, y_e, **TOL)


def test_follows_weight_changes() -> None:
    fused, eager = _pair()
    _assert_same_step(fused, eager)
    # An optimizer step writes the parameters in place; the eager twin gets the new values copied.
    opt = torch.optim.AdamW(fused.parameters(), lr=0.1, fused=True)
    fused(torch.randn(2, 5, 7))[0].square().sum().backward()
    opt.step()
    eager.load_state_dict(fused.state_dict())
    _assert_same_step(fused, eager)
    other, _ = _pair()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    for assign in (False, True):  # load_state_dict copies into the same storage; assign=True swaps them
        fused.load_state_dict(other.state_dict(), assign=assign)
        eager.load_state_dict(other.state_dict(), assign=assign)
        _assert_same_step(fused, eager)
    with torch.no_grad():  # a parameter's storage replaced behind the module's back
        fused.layers[1].mixer.A_log.data = fused.layers[1].mixer.A_log.data * 0.5
        eager.layers[1].mixer.A_log.data = eager.layers[1].mixer.A_log.data * 0.5
    _assert_same_step(fused, eager)


def test_copies_and_pickles_get_their_own_tables() -> None:
    fused, eager = _pair()
    _assert_same_step(fused, eager)
    copies = [copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))]
    with torch.no_grad():
        for p in (*fused.parameters(), *eager.parameters()):
            p.mul_(0.5)  # must not leak into the copies
    _assert_same_step(fused, eager)
    reference = copy.deepcopy(eager)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(2.0)
    for copy_ in copies:
        _assert_same_step(copy_, reference)


def test_large_batches_run_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    kernel = MambaStepWeights.step
    monkeypatch.setattr(
        MambaStepWeights, "step", lambda self, x, *s: calls.append(x.shape[0]) or kernel(self, x, *s)
    )
    fused, eager = _pair()
    fused.layers = fused.layers[:1]
    eager.layers = eager.layers[:1]
    fused.num_layers = eager.num_layers = 1
    with torch.no_grad():
        for batch in (1, COMPILED_STEP_MAX_BATCH + 1):
            x = torch.randn(batch, 7)
            state = tuple(torch.randn_like(s) for s in fused.initial_state(batch))
            torch.testing.assert_close(fused.step(x, state)[0], eager.step(x, state)[0], **TOL)
    assert calls == [1]
