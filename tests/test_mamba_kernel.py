"""Mamba's compiled CPU kernels (selective scan, conv) against mambapy's path, and Mamba's bad input.

The reference is the pure-PyTorch path (`scan="mambapy"`): mambapy's `pscan` and the vectorized conv.
In float64 the kernels use libm's exp, so they must agree to rounding; in float32 they use a
polynomial exp (2 ulp), so they agree to fp32 tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recurrl.policies.backbones import make_backbone
from recurrl.policies.backbones.kernels.selective_scan import (
    conv_silu,
    conv_silu_torch,
    selective_scan,
    selective_scan_loop,
    selective_scan_mambapy,
)

pytest.importorskip("numba")

import numba  # noqa: E402

from recurrl.policies.backbones.kernels.numba_mamba import CHUNK  # noqa: E402
from recurrl.policies.backbones.kernels.numba_math import JIT, fast_exp, fast_exp2  # noqa: E402

NAMES = ("x", "delta", "A", "B", "C", "D", "h0", "z", "delta_bias")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add spin-wait overhead on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scan_inputs(batch: int, length: int, inner: int, n_state: int, dtype=torch.float64, seed: int = 0):
    """Random scan inputs (delta > 0, A < 0 as in Mamba) and resets at t=0, back to back, near the end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, inner, dtype=dtype, generator=g)
    delta = F.softplus(torch.randn(batch, length, inner, dtype=dtype, generator=g))
    a = -torch.exp(torch.randn(inner, n_state, dtype=dtype, generator=g))
    b = torch.randn(batch, length, n_state, dtype=dtype, generator=g)
    c = torch.randn(batch, length, n_state, dtype=dtype, generator=g)
    d = torch.randn(inner, dtype=dtype, generator=g)
    h0 = torch.randn(batch, inner, n_state, dtype=dtype, generator=g)
    z = torch.randn(batch, length, inner, dtype=dtype, generator=g) * 2
    delta_bias = torch.randn(inner, dtype=dtype, generator=g)
    starts = torch.rand(batch, length, generator=g) < 0.15
    starts[0] = False  # one row carries h0 through the whole sequence
    if batch > 1:
        starts[1, 0] = True
        starts[1, length // 2 : length // 2 + 2] = True
        starts[1, -1] = True
    return [x, delta, a, b, c, d, h0, z, delta_bias], starts


def _scan(inputs, starts, backend: str = "numba", fused: bool = True):
    """selective_scan on [x, delta, A, B, C, D, h0, z, delta_bias]; fused=False leaves z and delta_bias out."""
    z, delta_bias = inputs[7:] if fused else (None, None)
    return selective_scan(*inputs[:7], starts=starts, backend=backend, z=z, delta_bias=delta_bias)


def _run(backend: str, inputs, starts, seed: int = 1, fused: bool = True):
    """Forward, then backward of a random weighting of y and h_T -> [y, h_T, grads of NAMES]."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y, h_last = _scan(leaves, starts, backend, fused)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=g).to(y.dtype)  # the same in fp32 and fp64
    gh = torch.randn(h_last.shape, dtype=torch.float64, generator=g).to(y.dtype)
    ((y * gy).sum() + (h_last * gh).sum()).backward()
    return [y, h_last] + [leaf.grad for leaf in (leaves if fused else leaves[:7])]


@pytest.mark.parametrize("fused", [True, False], ids=["softplus-gate", "plain"])
@pytest.mark.parametrize(
    ("batch", "length", "inner", "n_state"),
    [(3, 37, 12, 5), (2, CHUNK, 8, 16), (2, 1, 4, 3), (4, 3 * CHUNK + 1, 16, 4)],
)
def test_scan_equals_mambapy_forward_and_gradients_fp64(batch, length, inner, n_state, fused):
    """With and without the fused delta bias + softplus and gate (z)."""
    inputs, starts = _scan_inputs(batch, length, inner, n_state)
    inputs[1] = inputs[1] * 30 - 5  # pre-softplus deltas on both sides of torch's threshold (20)
    kernel = _run("numba", inputs, starts, fused=fused)
    reference = _run("mambapy", inputs, starts, fused=fused)
    names = NAMES if fused else NAMES[:7]
    for name, got, want in zip(["y", "h_T", *[f"d{n}" for n in names]], kernel, reference, strict=True):
        assert got is not None, name
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("fused", [True, False], ids=["softplus-gate", "plain"])
@pytest.mark.parametrize("rank", [1, 3])
def test_scan_with_the_fused_delta_projection_equals_mambapy_fp64(rank, fused):
    """delta_weight (Mamba's dt_proj fused as in mamba_inner_fn): delta is the rank-R input, and the
    gradients of it and of the weight equal the reference's, which forms dt @ W^T itself."""
    inputs, starts = _scan_inputs(3, 2 * CHUNK + 5, 12, 5)
    g = torch.Generator().manual_seed(7)
    dt = torch.randn(3, 2 * CHUNK + 5, rank, dtype=torch.float64, generator=g) * 3
    weight = torch.randn(12, rank, dtype=torch.float64, generator=g)
    if not fused:  # no softplus: keep delta > 0, as Mamba's is (a negative one makes the state explode)
        dt, weight = dt.abs() / 3, weight.abs()
    results = []
    for backend in ("numba", "mambapy"):
        leaves = [t.detach().clone().requires_grad_() for t in [*inputs[:1], dt, *inputs[2:], weight]]
        z, bias = (leaves[7], leaves[8]) if fused else (None, None)
        y, h = selective_scan(*leaves[:7], starts, backend, z=z, delta_bias=bias, delta_weight=leaves[9])
        ((y * y.detach().sin()).sum() + (h * h.detach().cos()).sum()).backward()
        results.append([y, h] + [leaf.grad for leaf in leaves])
    names = ["y", "h_T", "dx", "d dt", "dA", "dB", "dC", "dD", "dh0", "dz", "d delta_bias", "d delta_weight"]
    for name, got, want in zip(names, *results, strict=True):
        if not fused and name in ("dz", "d delta_bias"):
            assert got is None and want is None
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_scan_without_h0_starts_from_zeros():
    """h0=None (the backbone's fresh sequences) gives what an explicit zero h0 gives, gradients too."""
    inputs, starts = _scan_inputs(2, CHUNK + 3, 8, 4)
    inputs[6] = torch.zeros_like(inputs[6])
    results = []
    for h0 in ("zeros", None):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        args = [*leaves[:6], leaves[6] if h0 == "zeros" else None]
        y, h = selective_scan(*args, starts, "numba", z=leaves[7], delta_bias=leaves[8])
        (y.square().sum() + h.sum()).backward()
        results.append([y, h] + [leaf.grad for i, leaf in enumerate(leaves) if i != 6])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_scan_leaves_its_inputs_untouched_even_an_h0_that_is_a_transposed_view():
    """The kernel keeps the state as [B, N, E]; an h0 that is a transposed view of a [B, N, E] tensor
    is already in that layout, and once had its storage reused as the output (overwritten with h_T)."""
    inputs, starts = _scan_inputs(2, 9, 8, 4)
    inputs[6] = inputs[6].transpose(1, 2).contiguous().transpose(1, 2)  # h0 [B, E, N], a view of [B, N, E]
    before = [t.clone() for t in inputs]
    y, h_last = _scan(inputs, starts)
    for name, got, want in zip(NAMES, inputs, before, strict=True):
        assert torch.equal(got, want), f"{name} was modified"
    want_y, want_h = _scan(before, starts, "mambapy")
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_last, want_h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use", ["y", "h_T"])
def test_scan_gradients_when_one_output_is_unused(use):
    """Training ignores h_T (and a state-only loss would ignore y): the unused output's gradient reaches
    the kernel as None, and the gradients still equal the reference's."""
    inputs, starts = _scan_inputs(2, 2 * CHUNK + 3, 8, 4)
    grads = {}
    for backend in ("numba", "mambapy"):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        y, h_last = _scan(leaves, starts, backend)
        (y if use == "y" else h_last).pow(2).sum().backward()
        grads[backend] = [leaf.grad for leaf in leaves]
    for name, got, want, leaf in zip(NAMES, grads["numba"], grads["mambapy"], inputs, strict=True):
        assert got is not None, name
        want = torch.zeros_like(leaf) if want is None else want  # C, D, z reach only y: no graph to h_T
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_scan_fp32_is_close_to_the_fp64_reference():
    inputs, starts = _scan_inputs(3, 50, 32, 16)
    kernel = _run("numba", [t.float() for t in inputs], starts)
    reference = _run("mambapy", inputs, starts)
    for got, want in zip(kernel, reference, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_scan_reset_forgets_everything_before():
    inputs, starts = _scan_inputs(1, 20, 6, 4)
    starts[:] = False
    starts[0, 12] = True
    changed = [t.clone() for t in inputs]
    changed[0][0, :12] += 1.0  # x before the reset
    changed[6] += 1.0  # and h0
    with torch.no_grad():
        y, h = _scan(inputs, starts)
        y2, h2 = _scan(changed, starts)
    assert (y[0, :12] - y2[0, :12]).abs().max() > 1e-3
    torch.testing.assert_close(y[0, 12:], y2[0, 12:], rtol=0, atol=0)
    torch.testing.assert_close(h, h2, rtol=0, atol=0)


def test_loop_reference_equals_mambapy():
    inputs, starts = _scan_inputs(3, 19, 6, 4)
    with torch.no_grad():
        for got, want in zip(
            selective_scan_loop(*inputs, starts), selective_scan_mambapy(*inputs, starts), strict=True
        ):  # both take [x, delta, A, B, C, D, h0, z, delta_bias], starts
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_double_backward_goes_through_the_loop_reference():
    """mambapy's pscan has no double backward; the kernel's backward hands a create_graph=True over to
    the loop, so second derivatives work and equal the loop's own."""
    inputs, starts = _scan_inputs(2, 9, 4, 3)
    results = []
    for scan in (lambda *t: _scan(list(t), starts), lambda *t: selective_scan_loop(*t, starts)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        y, h = scan(*leaves)
        grads = torch.autograd.grad(y.square().sum() + h.sum(), leaves, create_graph=True)
        results.append(torch.autograd.grad(sum(g.square().sum() for g in grads), leaves))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_forward_mode_ad_runs_the_loop_reference():
    import torch.autograd.forward_ad as fwAD

    inputs, starts = _scan_inputs(2, 7, 4, 3)
    tangent = torch.randn_like(inputs[0])
    with fwAD.dual_level():
        y, _ = _scan([fwAD.make_dual(inputs[0], tangent), *inputs[1:]], starts)
        jvp = fwAD.unpack_dual(y).tangent
    x = inputs[0].clone().requires_grad_()  # the same directional derivative, by reverse mode
    y_ref, _ = _scan([x, *inputs[1:]], starts, backend="mambapy")
    (jvp_ref,) = torch.autograd.grad(y_ref, x, torch.ones_like(y_ref), create_graph=False)
    torch.testing.assert_close((jvp * torch.ones_like(jvp)).sum(), (jvp_ref * tangent).sum())


def test_long_sequence_with_large_delta_stays_finite():
    """T=4096, delta up to ~1e3 (decay exp(delta A) underflows to 0): no NaN/Inf forward or backward."""
    inputs, starts = _scan_inputs(2, 4096, 8, 4, dtype=torch.float32, seed=3)
    inputs[1] = inputs[1] * torch.logspace(-3, 3, 4096).view(1, -1, 1)  # delta from 1e-3 to 1e3
    outputs = _run("numba", inputs, starts)
    assert all(torch.isfinite(t).all() for t in outputs)


def test_fast_exp2_accuracy_and_saturation():
    v = np.linspace(-126.0, 127.0, 200_001, dtype=np.float32)[::97]
    got = np.array([fast_exp2(np.float32(x)) for x in v], dtype=np.float64)
    assert np.max(np.abs(got / np.exp2(v.astype(np.float64)) - 1)) < 1.5e-7
    low, high, nan = (fast_exp2(np.float32(x)) for x in (-np.inf, np.inf, np.nan))
    assert 0 < low <= 2.0**-126 * 1.01 and high > 1e38 and np.isnan(nan)


def test_fast_exp2_in_a_vectorized_loop_keeps_nan_and_saturates():
    """The kernels call fast_exp2 in loops LLVM vectorizes, where min/max may become SIMD instructions with
    their own NaN rules: the specials must come out the same there as in a scalar call."""

    @numba.njit(**JIT)
    def exp2_all(v: np.ndarray, out: np.ndarray) -> None:
        for i in range(v.shape[0]):
            out[i] = fast_exp2(v[i])

    specials = [np.nan, -np.inf, -1000.0, -126.0, -0.5, 0.0, 0.5, 3.25, np.inf]
    v = np.array(specials * 8, dtype=np.float32)  # 72 values: whole vectors and a tail
    out = np.empty_like(v)
    exp2_all(v, out)
    got = out.reshape(8, -1)
    assert np.isnan(got[:, 0]).all() and not np.isnan(got[:, 1:]).any()
    assert (got[:, 1:3] > 0).all() and (got[:, 1:3] <= 2.0**-126 * 1.01).all()
    np.testing.assert_allclose(got[:, 3:8], np.exp2(np.float64(specials[3:8])) * np.ones((8, 1)), rtol=1.5e-7)
    assert (got[:, 8] > 1e38).all()


def test_fast_exp_accuracy_and_special_values():
    v = np.linspace(-87.0, 88.0, 200_001, dtype=np.float32)
    got = np.array([fast_exp(np.float32(x)) for x in v[::97]], dtype=np.float64)
    want = np.exp(v[::97].astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 3e-7
    specials = [fast_exp(np.float32(x)) for x in (-np.inf, -1000.0, np.inf, 1000.0, np.nan, 0.0)]
    assert specials[:4] == [0.0, 0.0, np.inf, np.inf] and np.isnan(specials[4]) and specials[5] == 1.0


# --------------------------------------------------------------------------- conv
@pytest.mark.parametrize(("length", "k"), [(23, 4), (2, 4), (11, 2)])
def test_conv_equals_the_vectorized_conv_fp64(length, k):
    """Output, gradients and (through the torch reference) second derivatives, with resets and a carried buffer."""
    g = torch.Generator().manual_seed(5)
    inputs = [
        torch.randn(3, length, 6, dtype=torch.float64, generator=g),
        torch.randn(3, k - 1, 6, dtype=torch.float64, generator=g),
        torch.randn(6, k, dtype=torch.float64, generator=g),
        torch.randn(6, dtype=torch.float64, generator=g),
    ]
    _, starts = _scan_inputs(3, length, 1, 1, seed=6)
    results = []
    for fn in (lambda *t: conv_silu(*t, backend="numba"), conv_silu_torch):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves, starts)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * weights).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum(gr.square().sum() for gr in grads), leaves)
        results.append([out, *grads, *second])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- the whole backbone
def _pair(**options):
    """(kernel, reference) Mamba backbones with the same weights, fp64."""
    torch.manual_seed(0)
    kernel = make_backbone("mamba", 5, 16, 2, scan="numba", **options).double()
    reference = copy.deepcopy(kernel)
    reference.scan = "mambapy"
    return kernel, reference


@pytest.mark.parametrize("options", [{}, {"d_state": 4, "d_conv": 3, "expand": 1}])
def test_backbone_forward_and_gradients_equal_mambapy_path(options):
    kernel, reference = _pair(**options)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 21, 5, dtype=torch.float64, generator=g)
    _, starts = _scan_inputs(3, 21, 1, 1, seed=4)
    state = tuple(torch.randn(s.shape, dtype=torch.float64, generator=g) for s in kernel.initial_state(3))
    results = []
    for model in (kernel, reference):
        state0 = tuple(s.clone().requires_grad_() for s in state)
        y, last = model(x, state0, starts)
        (y.sin().sum() + sum(s.square().sum() for s in last)).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((y, last, [s.grad for s in state0], grads))
    (y, last, state_grads, grads), (y_ref, last_ref, state_grads_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip([*last, *state_grads], [*last_ref, *state_grads_ref], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-9, atol=1e-10, msg=name)


def test_backbone_double_backward_runs_on_the_kernel_path():
    """A gradient penalty (create_graph=True) works, which mambapy's own pscan cannot do."""
    kernel, _ = _pair()
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(kernel(x)[0].square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in kernel.parameters())


def test_scan_auto_picks_the_kernel_on_cpu():
    from recurrl.policies.backbones.kernels.selective_scan import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    assert resolve_backend("auto", torch.device("cuda")) == "mambapy"
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("numba", torch.device("cuda"))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "options",
    [
        {"d_state": 0},
        {"d_state": -3},
        {"d_state": 2.5},
        {"d_state": True},
        {"d_conv": 1},
        {"d_conv": 0},
        {"expand": 0},
        {"expand": 1.5},
        {"scan": "fast"},
    ],
)
def test_options_out_of_range_are_a_clear_error(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name if name != "scan" else "backend"):
        make_backbone("mamba", 4, 8, 1, **options)


@pytest.mark.parametrize("scan", ["numba", "mambapy"])
def test_nan_input_gives_visible_nan_not_a_crash(scan):
    model = make_backbone("mamba", 4, 8, 1, scan=scan)
    x = torch.randn(2, 6, 4)
    x[0, 2, 1] = float("nan")
    y, state = model(x)
    assert torch.isnan(y[0, 2:]).any() and torch.isfinite(y[1]).all()  # row 1 is untouched
    y.sum().backward()  # the backward runs through the NaN without raising
    with torch.no_grad():
        y_step, state = model.step(x[:, 2], model.initial_state(2))
    assert torch.isnan(y_step[0]).all() and torch.isfinite(y_step[1]).all()


def test_mismatched_shapes_are_rejected_before_the_kernel():
    inputs, starts = _scan_inputs(2, 5, 4, 3)
    for i in range(len(NAMES)):
        bad = list(inputs)
        bad[i] = bad[i][..., :-1]
        with pytest.raises(ValueError):
            _scan(bad, starts)
    with pytest.raises(ValueError, match="episode_starts"):
        _scan(inputs, starts[:, :-1])
    rank_input = inputs[1][..., :3]  # [B, T, R]
    with pytest.raises(ValueError, match="delta_weight"):  # the weight's E does not match x's
        selective_scan(*inputs[:1], rank_input, *inputs[2:7], starts, delta_weight=torch.randn(3, 3).double())
    with pytest.raises(ValueError, match="delta must have shape"):  # a full delta with a weight
        selective_scan(*inputs[:7], starts, delta_weight=torch.randn(4, 3).double())
    with pytest.raises(ValueError, match="carried"):
        conv_silu(
            torch.randn(2, 5, 4), torch.randn(2, 2, 4), torch.randn(4, 4), torch.randn(4), starts, "numba"
        )


def test_foreign_or_wrong_batch_state_is_rejected():
    model = make_backbone("mamba", 4, 8, 2)
    other = make_backbone("mamba", 4, 8, 2, d_state=8).initial_state(3)
    for state in (other, make_backbone("lstm", 4, 8, 2).initial_state(3), model.initial_state(2)):
        with pytest.raises(ValueError, match="state"):
            model(torch.randn(3, 5, 4), state)
        with pytest.raises(ValueError, match="state"):
            model.step(torch.randn(3, 4), state)


def test_row_ranges_in_parallel_threads_give_the_serial_results(monkeypatch):
    """The kernels split the batch over torch's thread count; every split must give the same numbers."""
    import recurrl.policies.backbones.kernels.numba_rows as numba_rows

    inputs, starts = _scan_inputs(5, 13, 6, 4)
    conv_in = [torch.randn(5, 13, 6, dtype=torch.float64), torch.randn(5, 3, 6, dtype=torch.float64)]
    conv_in += [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(numba_rows, "MIN_PARALLEL_WORK", 0)
        torch.set_num_threads(threads)
        assert len(numba_rows.row_chunks(5, 1)) == threads
        outputs = _run("numba", inputs, starts)
        leaves = [t.clone().requires_grad_() for t in conv_in]
        out = conv_silu(*leaves, starts, "numba")
        out.sin().sum().backward()
        results.append([*outputs, out, *(leaf.grad for leaf in leaves)])
    torch.set_num_threads(1)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
