"""The elementwise math of Mamba's numba kernels: exp, 2^x, sigmoid, SiLU, softplus, in the kernels' dtype.

In fp32 they are branch-free polynomials that LLVM vectorizes (libm's exp and log1p are scalar calls,
6-20x slower in a kernel's inner loop). In fp64, what the exact tests compare against torch, they are
libm's, with torch's conventions (softplus is v itself above 20). Each is a Python stub with a numba
`overload` choosing the implementation by the argument's type; a Python float literal in fp32 math
would promote it to fp64, hence the fp32 constants.

fastmath without `nnan`/`ninf`: NaN and inf propagate as in torch, so a NaN input shows as a NaN output.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Reassociation lets LLVM vectorize the reductions; no nnan/ninf (see the docstring).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# error_model="numpy": a float division by zero gives inf/NaN as in torch, not a ZeroDivisionError
# (Python's model checks every division, which also stops LLVM vectorizing the loop).
# nogil: row ranges of a batch run in parallel Python threads (numba_rows.py).
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True}

_LOG2E = np.float32(1.4426950408889634)
_LN2 = math.log(2.0)  # fp64, for the fp64 kernels
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = HI + LO, HI exact
# exp(r) on [-ln(2)/2, ln(2)/2] (Cephes): 1 + r + r^2 (p0 r^5 + ... + p5)
_EXP_POLY = tuple(
    np.float32(c)
    for c in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
_LOWEST, _HIGHEST = np.float32(-87.0), np.float32(88.0)  # exp stays a normal fp32 number in between
# 2^f on [-1/2, 1/2]: a least-squares fit in relative error (max 1.04e-7 in fp32 Horner), constant first.
_EXP2_POLY = tuple(
    np.float32(c)
    for c in (
        1.0,
        0.6931471824645996,
        0.24022647738456726,
        0.055503424257040024,
        0.009618490934371948,
        0.0013394701527431607,
        0.00015332507609855384,
    )
)
_EXP2_LOWEST, _EXP2_HIGHEST = np.float32(-126.0), np.float32(127.0)  # the normal fp32 exponents
_HALF, _ONE, _TWO, _ZERO, _INF = (np.float32(v) for v in (0.5, 1.0, 2.0, 0.0, np.inf))
_EXP_BIAS, _MANTISSA_BITS = np.int32(127), np.int32(23)
_SOFTPLUS_THRESHOLD = np.float32(20.0)  # torch's: softplus(v) = v above it
_ATANH_SERIES = tuple(np.float32(1.0 / k) for k in (3, 5, 7, 9, 11, 13))


@intrinsic
def _float32_from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
    """Reinterpret the low 32 bits of an integer as an fp32 (builds 2^k from k)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(**JIT)
def fast_exp(v: np.float32) -> np.float32:
    """exp(v) for fp32, within 2.5e-7 relative; exactly 0 below -87 (and for -inf), inf above 88, NaN for NaN.

    exp(v) = 2^k exp(r), k = round(v / ln 2), |r| <= ln(2) / 2, exp(r) by a degree-7 polynomial.
    Branch free (selects), so a loop calling it vectorizes."""
    c = min(max(v, _LOWEST), _HIGHEST)
    k = np.floor(c * _LOG2E + _HALF)
    r = c - k * _LN2_HI - k * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_POLY
    p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    p = p * r * r + r + _ONE
    out = p * _float32_from_bits((np.int32(k) + _EXP_BIAS) << _MANTISSA_BITS)
    out = _ZERO if v < _LOWEST else out
    out = _INF if v > _HIGHEST else out
    return out if v == v else v


@njit(**JIT)
def fast_exp2(v: np.float32) -> np.float32:
    """2^v for fp32, within 1.1e-7 relative for v in [-126, 127]; saturates outside (2^-126 below, for -inf
    too, ~2^127 above), NaN for NaN. 2^v = 2^k 2^f, k = round(v), |f| <= 1/2, 2^f by a polynomial.
    Branch free, so a loop calling it vectorizes. The scan's decays are in (0, 1]: only the lower end matters.

    The scan's hot loop evaluates this for every state value, so each instruction counts: k = rint(c) is
    one rounding (floor(c + 1/2) is two), and a NaN needs no select of its own: Python's max/min (numba
    keeps their semantics) return a NaN first argument, so f and p are NaN and so is p * 2^k."""
    c = min(max(v, _EXP2_LOWEST), _EXP2_HIGHEST)
    k = np.rint(c)
    f = c - k
    p0, p1, p2, p3, p4, p5, p6 = _EXP2_POLY
    p = p0 + f * (p1 + f * (p2 + f * (p3 + f * (p4 + f * (p5 + f * p6)))))
    return p * _float32_from_bits((np.int32(k) + _EXP_BIAS) << _MANTISSA_BITS)


@njit(**JIT)
def _softplus32(v: np.float32) -> np.float32:
    """torch's softplus as max(v, 0) + log1p(exp(-|v|)), branch free; log1p(u) = 2 atanh(s), s = u / (2 + u)
    <= 1/3, by its series to s^13 (relative error < 2e-8)."""
    u = fast_exp(-abs(v))
    s = u / (_TWO + u)
    s2 = s * s
    c3, c5, c7, c9, c11, c13 = _ATANH_SERIES
    series = _ONE + s2 * (c3 + s2 * (c5 + s2 * (c7 + s2 * (c9 + s2 * (c11 + s2 * c13)))))
    out = max(v, _ZERO) + _TWO * s * series
    return v if v > _SOFTPLUS_THRESHOLD else out


def exp(v):  # type: ignore[no-untyped-def]
    """exp(v): `fast_exp` for fp32, libm for fp64."""
    return math.exp(v)


def exp2(v):  # type: ignore[no-untyped-def]
    """2^v: `fast_exp2` for fp32, libm for fp64."""
    return math.exp(v * _LN2)


def sigmoid(v):  # type: ignore[no-untyped-def]
    """1 / (1 + exp(-v))."""
    return 1.0 / (1.0 + math.exp(-v))


def silu(v):  # type: ignore[no-untyped-def]
    """v * sigmoid(v)."""
    return v / (1.0 + math.exp(-v))


def silu_grad(v):  # type: ignore[no-untyped-def]
    """d silu / dv = s (1 + v (1 - s)), s = sigmoid(v)."""
    s = 1.0 / (1.0 + math.exp(-v))
    return s + v * (s - s * s)


def softplus(v):  # type: ignore[no-untyped-def]
    """torch's softplus (beta 1, threshold 20): v above 20, else log(1 + exp(v))."""
    return v if v > 20.0 else math.log1p(math.exp(v))


def softplus_grad(v):  # type: ignore[no-untyped-def]
    """d softplus / dv as torch takes it: 1 above 20, else sigmoid(v)."""
    return 1.0 if v > 20.0 else 1.0 / (1.0 + math.exp(-v))


@overload(exp, jit_options=JIT)
def _exp_overload(v):  # type: ignore[no-untyped-def]
    return (lambda v: fast_exp(v)) if v == types.float32 else (lambda v: math.exp(v))


@overload(exp2, jit_options=JIT)
def _exp2_overload(v):  # type: ignore[no-untyped-def]
    return (lambda v: fast_exp2(v)) if v == types.float32 else (lambda v: math.exp(v * _LN2))


@overload(sigmoid, jit_options=JIT)
def _sigmoid_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        return lambda v: _ONE / (_ONE + fast_exp(-v))
    return lambda v: 1.0 / (1.0 + math.exp(-v))


@overload(silu, jit_options=JIT)
def _silu_overload(v):  # type: ignore[no-untyped-def]
    return lambda v: v * sigmoid(v)


@overload(silu_grad, jit_options=JIT)
def _silu_grad_overload(v):  # type: ignore[no-untyped-def]
    def impl(v):  # type: ignore[no-untyped-def]
        s = sigmoid(v)
        return s + v * (s - s * s)

    return impl


@overload(softplus, jit_options=JIT)
def _softplus_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        return lambda v: _softplus32(v)
    return lambda v: v if v > 20.0 else math.log1p(math.exp(v))


@overload(softplus_grad, jit_options=JIT)
def _softplus_grad_overload(v):  # type: ignore[no-untyped-def]
    if v == types.float32:
        # Both sides computed, so the choice is a select, not a branch (a branch stops LLVM vectorizing
        # the loop; sigmoid(v) is 1.0 in fp32 above the threshold anyway).
        def impl(v):  # type: ignore[no-untyped-def]
            s = sigmoid(v)
            return _ONE if v > _SOFTPLUS_THRESHOLD else s

        return impl
    return lambda v: 1.0 if v > 20.0 else 1.0 / (1.0 + math.exp(-v))
