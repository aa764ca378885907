"""The fused Triton scan kernels, run on CPU by triton's interpreter (TRITON_INTERPRET=1), and on a
CUDA GPU compiled for real when there is one (scripts/gpu_check.sh runs that test on a GPU machine).

TRITON_INTERPRET is read when the kernels are decorated (at import), so the checks run in a child
process that sets it before importing anything; the setting never leaks into other test modules.
The same file is the child: `python tests/test_triton_scan.py <check> [device]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_child(check: str, env_extra: dict[str, str], device: str = "cpu") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    if device != "cpu":
        env.pop("TRITON_INTERPRET", None)  # compiled for the device, not interpreted
    return subprocess.run(
        [sys.executable, __file__, check, device], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_triton_kernels_match_loop_forward_and_backward() -> None:
    """Gated and generic kernels, with/without h0 and resets, and both backbones on scan='triton'."""
    pytest.importorskip("triton")
    result = run_child("triton", {"TRITON_INTERPRET": "1"})  # one child: importing torch + triton is slow
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("gated", "generic", "backbone"):
        assert f"ok {check}" in result.stdout


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs it on one)")
def test_triton_kernels_on_the_gpu_match_loop_forward_and_backward() -> None:
    """The same checks compiled for the real device (no interpreter): tensors on cuda."""
    pytest.importorskip("triton")
    result = run_child("triton", {}, device="cuda")
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("gated", "generic", "backbone"):
        assert f"ok {check}" in result.stdout


def test_importable_and_auto_without_triton() -> None:
    """With triton missing, the backbones import and run ('auto' -> loop); 'triton' is a clear error."""
    result = run_child("no_triton", {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok no_triton" in result.stdout


# --------------------------------------------------------------------------- the child process
DEVICE = sys.argv[2] if __name__ == "__main__" and len(sys.argv) > 2 else "cpu"


def _reference_grads(fn, inputs, grad_out):
    """Autograd of the loop backend: the reference for the kernel's custom backward."""
    import torch

    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


def _check_gated() -> None:
    import torch

    from recurrl.policies.backbones.kernels.scan import gated_scan

    gen = torch.Generator().manual_seed(0)
    batch, length, hidden = 3, 11, 40  # hidden > BLOCK so the channel mask is exercised
    k = torch.randn(batch, length, hidden, generator=gen) * 3
    p = torch.randn(batch, length, hidden, generator=gen) * 3
    h0 = torch.randn(batch, hidden, generator=gen)
    starts = torch.rand(batch, length, generator=gen) < 0.2
    starts[1, 0] = True
    grad_out = torch.randn(batch, length, hidden, generator=gen)
    k, p, h0, starts, grad_out = (x.to(DEVICE) for x in (k, p, h0, starts, grad_out))
    for h0_arg, starts_arg in ((None, None), (h0, None), (h0, starts), (None, starts)):
        inputs = [k, p] + ([h0_arg] if h0_arg is not None else [])

        def run(*xs, backend, starts=starts_arg):
            return gated_scan(xs[0], xs[1], xs[2] if len(xs) > 2 else None, starts, backend)

        out, grads = _reference_grads(lambda *xs: run(*xs, backend="triton"), inputs, grad_out)
        ref_out, ref_grads = _reference_grads(lambda *xs: run(*xs, backend="loop"), inputs, grad_out)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # bf16 inputs: fp32 accumulation inside, fp32 out
    out = gated_scan(k.bfloat16(), p.bfloat16(), h0, starts, "triton")
    ref = gated_scan(k.bfloat16().float(), p.bfloat16().float(), h0, starts, "loop")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    print("ok gated")


def _check_generic() -> None:
    import torch

    from recurrl.policies.backbones.kernels.scan import scan

    gen = torch.Generator().manual_seed(1)
    batch, length, hidden = 2, 9, 33
    a = torch.rand(batch, length, hidden, generator=gen)
    b = torch.randn(batch, length, hidden, generator=gen)  # any sign: the kernel is linear space
    h0 = torch.randn(batch, hidden, generator=gen)
    starts = torch.rand(batch, length, generator=gen) < 0.25
    grad_out = torch.randn(batch, length, hidden, generator=gen)
    a, b, h0, starts, grad_out = (x.to(DEVICE) for x in (a, b, h0, starts, grad_out))
    out, grads = _reference_grads(lambda a, b, h0: scan(a, b, h0, starts, "triton"), [a, b, h0], grad_out)
    ref_out, ref_grads = _reference_grads(
        lambda a, b, h0: scan(a, b, h0, starts, "loop"), [a, b, h0], grad_out
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    print("ok generic")


def _check_backbone() -> None:
    import torch

    from recurrl.policies.backbones import make_backbone

    torch.manual_seed(2)
    for name in ("mingru", "minlstm"):
        model = make_backbone(name, 3, 8, num_layers=2, scan="triton").eval().to(DEVICE)
        x = torch.randn(2, 7, 3, device=DEVICE)
        state = (torch.randn(2, 2, 8, device=DEVICE),)
        starts = torch.tensor([[False, False, True, False, False, False, False], [True] + [False] * 6], device=DEVICE)
        y, final = model(x, state, starts)
        ys, s = [], state
        for t in range(7):
            y_t, s = model.step(x[:, t], s, starts[:, t])
            ys.append(y_t)
        torch.testing.assert_close(y, torch.stack(ys, dim=1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final[0], s[0], rtol=1e-5, atol=1e-5)
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    print("ok backbone")


def _check_no_triton() -> None:
    sys.modules["triton"] = None  # makes `import triton` raise ImportError, as on a machine without it
    import importlib.util

    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *args: None if name == "triton" else real_find_spec(name, *args)

    import torch

    from recurrl.policies.backbones import make_backbone

    model = make_backbone("mingru", 3, 8)  # scan="auto"
    y, _ = model(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 8)
    try:
        make_backbone("minlstm", 3, 8, scan="triton")
    except ValueError as error:
        assert "triton" in str(error)
    else:
        raise AssertionError("scan='triton' without triton must raise ValueError")
    print("ok no_triton")


if __name__ == "__main__":
    if sys.argv[1] == "triton":
        _check_gated()
        _check_generic()
        _check_backbone()
    else:
        _check_no_triton()
