"""Mamba's RMSNorm on the compiled kernels (kernels/rms_norm.py) against torch's rms_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from recurrl.policies.backbones import make_backbone  # noqa: E402
from recurrl.policies.backbones.kernels.rms_norm import rms_norm  # noqa: E402


def _inputs(dtype: torch.dtype, shape: tuple[int, ...] = (5, 7, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    w = (torch.rand(shape[-1], generator=gen, dtype=dtype) + 0.5).requires_grad_()
    return x, w


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_forward_and_gradients_equal_torch(dtype, tol):
    x, w = _inputs(dtype)
    grad = torch.randn(x.shape, dtype=dtype)
    ours = rms_norm(x, w, 1e-5)
    assert ours.grad_fn is not None and "NumbaRMSNorm" in type(ours.grad_fn).__name__  # the kernel ran
    want = F.rms_norm(x, (x.shape[-1],), w, 1e-5)
    torch.testing.assert_close(ours, want, rtol=tol, atol=tol)
    got_dx, got_dw = torch.autograd.grad(ours, (x, w), grad)
    want_dx, want_dw = torch.autograd.grad(want, (x, w), grad)
    torch.testing.assert_close(got_dx, want_dx, rtol=tol, atol=tol)
    torch.testing.assert_close(got_dw, want_dw, rtol=tol, atol=tol * 10)  # a sum over 35 rows


def test_gradcheck_and_double_backward():
    x, w = _inputs(torch.float64, (3, 4, 6))
    fn = lambda a, b: rms_norm(a, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_only_the_wanted_gradient_and_torch_where_no_kernel_applies():
    x, w = _inputs(torch.float64)
    (dx,) = torch.autograd.grad(rms_norm(x, w.detach(), 1e-5).sum(), (x,))
    torch.testing.assert_close(dx, torch.autograd.grad(F.rms_norm(x, (24,), w.detach(), 1e-5).sum(), (x,))[0])
    with torch.no_grad():  # no backward to come: torch's op, the same numbers
        torch.testing.assert_close(rms_norm(x, w, 1e-5), F.rms_norm(x, (24,), w, 1e-5))
    no_weight = rms_norm(x, None, 1e-5)
    assert "NumbaRMSNorm" not in type(no_weight.grad_fn).__name__
    torch.testing.assert_close(no_weight, F.rms_norm(x, (24,), None, 1e-5))


def test_nan_row_stays_nan_and_other_rows_are_untouched():
    x, w = _inputs(torch.float32)
    x = x.detach().clone()
    x[0, 0, 3] = float("nan")
    x.requires_grad_()
    y = rms_norm(x, w, 1e-5)
    assert torch.isnan(y[0, 0]).all() and torch.isfinite(y[1:]).all() and torch.isfinite(y[0, 1:]).all()
    y.sum().backward()
    assert torch.isnan(x.grad[0, 0]).all() and torch.isfinite(x.grad[1:]).all()


def test_mamba_backbone_trains_with_it_and_matches_the_torch_norm(monkeypatch):
    """The whole backbone's loss and gradients equal those with torch's rms_norm (fp64)."""
    import recurrl.policies.backbones.mamba as mamba_module

    torch.manual_seed(0)
    model = make_backbone("mamba", 5, 16, num_layers=2).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    loss = model(x)[0].square().sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    monkeypatch.setattr(mamba_module, "rms_norm", lambda x, w, eps: F.rms_norm(x, (x.shape[-1],), w, eps))
    want_loss = model(x)[0].square().sum()
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
