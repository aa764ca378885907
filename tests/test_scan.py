"""Scan backends (loop, log, numba) against a plain float64 recurrence, with h0 and resets."""

from __future__ import annotations

import pytest
import torch

import recurrl.policies.backbones.kernels.scan_backends as backends_module
from recurrl.policies.backbones.kernels.scan import (
    g_activation,
    gated_scan,
    log_g,
    minlstm_scan_tm,
    scan,
)
from recurrl.policies.backbones.kernels.scan_backends import resolve_backend

BACKENDS = ["loop", "log", "numba"]


def reference(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, starts: torch.Tensor | None
) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t, one step at a time in float64, resets zero the carried state."""
    a, b = a.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.double()
    out = []
    for t in range(a.shape[1]):
        if starts is not None:
            h = h * (~starts[:, t]).double().unsqueeze(-1)
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def gated_coefficients(k: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's minGRU: a = 1 - z, b = z * g(p), with g written as the paper's two branches."""
    z = torch.sigmoid(k.double())
    g = torch.where(p >= 0, p.double() + 0.5, torch.sigmoid(p.double()))
    return 1 - z, z * g


def random_inputs(
    batch: int, length: int, hidden: int, scale: float = 1.0, dtype=torch.float64, seed: int = 0
):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, length, hidden, generator=gen, dtype=dtype) * scale
    p = torch.randn(batch, length, hidden, generator=gen, dtype=dtype) * scale
    h0 = torch.rand(batch, hidden, generator=gen, dtype=dtype) - 0.3  # mixed signs are allowed for h0
    starts = torch.rand(batch, length, generator=gen) < 0.15
    return k, p, h0, starts


def test_g_matches_paper_definition() -> None:
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    expected = torch.where(x >= 0, x + 0.5, torch.sigmoid(x))
    torch.testing.assert_close(g_activation(x), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(log_g(x), torch.log(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("with_starts", [False, True])
def test_gated_scan_matches_reference(backend: str, with_h0: bool, with_starts: bool) -> None:
    k, p, h0, starts = random_inputs(3, 37, 5)
    h0 = h0 if with_h0 else None
    starts = starts if with_starts else None
    a, b = gated_coefficients(k, p)
    h = gated_scan(k, p, h0, starts, backend)
    torch.testing.assert_close(h, reference(a, b, h0, starts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generic_scan_matches_reference(backend: str) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 41, 6, generator=gen, dtype=torch.float64)
    a[0, 5] = 0.0  # an exact zero coefficient must not break the log backend
    b = torch.rand(2, 41, 6, generator=gen, dtype=torch.float64) + 0.01
    h0 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    starts = torch.rand(2, 41, generator=gen) < 0.2
    torch.testing.assert_close(
        scan(a, b, h0, starts, backend), reference(a, b, h0, starts), rtol=1e-12, atol=1e-12
    )


def test_loop_scan_accepts_any_sign() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(2, 20, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 20, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        scan(a, b, backend="loop"), reference(a, b, None, None), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_scan_gradcheck(backend: str) -> None:
    k, p, h0, starts = random_inputs(2, 9, 3)
    inputs = tuple(t.clone().requires_grad_() for t in (k, p, h0))
    assert torch.autograd.gradcheck(lambda k, p, h0: gated_scan(k, p, h0, starts, backend), inputs)


def test_generic_loop_scan_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    starts = torch.tensor([[False, False, True, False, False, False, True, False], [True] + [False] * 7])
    assert torch.autograd.gradcheck(lambda a, b, h0: scan(a, b, h0, starts, "loop"), (a, b, h0))


def test_generic_log_scan_gradcheck() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(2, 8, 3, generator=gen, dtype=torch.float64).add(0.05).requires_grad_()
    b = torch.rand(2, 8, 3, generator=gen, dtype=torch.float64).add(0.05).requires_grad_()
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    starts = torch.rand(2, 8, generator=gen) < 0.3
    assert torch.autograd.gradcheck(lambda a, b, h0: scan(a, b, h0, starts, "log"), (a, b, h0))


def test_log_scan_fp32_long_sequence_matches_float64_loop() -> None:
    """fp32 log-space scan over T=4096 stays close to the float64 recurrence (no precision drift)."""
    k, p, h0, starts = random_inputs(2, 4096, 8, scale=2.0, dtype=torch.float32, seed=5)
    a, b = gated_coefficients(k, p)
    for s in (None, starts):
        h = gated_scan(k, p, h0, s, "log")
        assert h.dtype == torch.float32
        torch.testing.assert_close(h.double(), reference(a, b, h0, s), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_starts", [False, True])
def test_saturated_gates_stay_finite_at_4096(backend: str, with_starts: bool) -> None:
    """Pre-activations at +-8 (gates near 0 and 1) over T=4096: no NaN/Inf forward or backward."""
    gen = torch.Generator().manual_seed(6)
    sign = torch.where(torch.rand(2, 4096, 16, generator=gen) < 0.5, -1.0, 1.0)
    k = (8.0 * sign).requires_grad_()
    p = (8.0 * sign.flip(-1)).requires_grad_()
    h0 = torch.ones(2, 16, requires_grad=True)
    starts = torch.rand(2, 4096, generator=gen) < 0.05 if with_starts else None
    h = gated_scan(k, p, h0, starts, backend)
    assert torch.isfinite(h).all()
    h.square().mean().backward()
    for tensor in (k, p, h0):
        assert torch.isfinite(tensor.grad).all()
    a, b = gated_coefficients(k.detach(), p.detach())
    torch.testing.assert_close(
        h.detach().double(), reference(a, b, h0.detach(), starts), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_accumulates_in_fp32(backend: str) -> None:
    k, p, h0, starts = random_inputs(2, 300, 8, dtype=torch.float32, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = gated_scan(k.bfloat16(), p.bfloat16(), h0, starts, backend)
    assert h.dtype == torch.float32 and torch.isfinite(h).all()
    a, b = gated_coefficients(k.bfloat16().float(), p.bfloat16().float())
    torch.testing.assert_close(h.double(), reference(a, b, h0, starts), rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_value_error() -> None:
    k, p, h0, starts = random_inputs(2, 5, 3)
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        gated_scan(k[0], p[0])
    with pytest.raises(ValueError, match="same shape"):
        gated_scan(k, p[:, :4])
    with pytest.raises(ValueError, match="h0"):
        gated_scan(k, p, h0[:, :2])
    with pytest.raises(ValueError, match="episode_starts"):
        gated_scan(k, p, h0, starts[:, :3])
    with pytest.raises(ValueError, match="unknown scan backend"):
        gated_scan(k, p, backend="blelloch")
    with pytest.raises(ValueError, match="b > 0"):
        scan(torch.rand(1, 4, 2), -torch.rand(1, 4, 2), backend="log")


@pytest.mark.parametrize("backend", ["log", "numba"])
def test_minlstm_backends_match_fused_loop(backend: str) -> None:
    """minLSTM through the gated kernels (k = log i - log f) == the loop backend's own fused minLSTM."""
    gen = torch.Generator().manual_seed(8)
    pre = (3 * torch.randn(29, 3, 3 * 4, generator=gen, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    starts = torch.rand(29, 3, generator=gen) < 0.15
    grad = torch.randn(29, 3, 4, generator=gen, dtype=torch.float64)
    results = []
    for name in ("loop", backend):
        h = minlstm_scan_tm(pre, h0, starts, name)
        (h * grad).sum().backward()
        results.append((h.detach(), pre.grad.clone(), h0.grad.clone()))
        pre.grad, h0.grad = None, None
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_auto_backend_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("numba", torch.device("cuda"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("triton", torch.device("cpu"))
    # Without numba installed, CPU falls back to the loop, and asking for numba says how to get it.
    monkeypatch.setattr(backends_module, "numba_available", lambda: False)
    assert resolve_backend("auto", torch.device("cpu")) == "loop"
    with pytest.raises(ValueError, match="pip install numba"):
        resolve_backend("numba", torch.device("cpu"))
