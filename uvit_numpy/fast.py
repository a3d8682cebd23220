"""The one place where the NumPy reference trades plainness for speed: the exact (erf) GELU and
its derivative in float32.

`functional.gelu` and `functional.gelu_backward` are the plain formulas (with scipy's erf, exact to
double precision) and the oracles these are tested against (tests/test_uvit2d_model.py,
tests/test_backward.py). scipy's erf in float32 costs about as much as all the other non-GEMM work
of a forward pass, so float32 models use these instead: the Abramowitz & Stegun 7.1.26 erf
(|error| <= 1.5e-7, about float32's resolution near 1), evaluated in cache-sized blocks with
in-place ufuncs. Float64 always takes the plain path.
"""

import math

import numpy as np

from .checks import check_floating

# Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) exp(-z^2), t = 1/(1 + p z), z >= 0
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_AS_HALF_A = tuple(0.5 * a for a in _AS_A)  # erfc(z)/2 in one polynomial
_CHUNK = 65536  # elements per in-place block: big enough to amortise the ufunc calls, small
                # enough that the four block-sized arrays stay in cache


def erf_float32(x):
    """erf(x) by Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7 (about one float32 ulp at 1).

    x: any shape. Returns the same shape and dtype. Meant for float32; float64 callers should use
    `scipy.special.erf`, which is exact to double precision.
    """
    check_floating("erf_float32: x", x)
    z = np.abs(x)
    t = 1.0 / (1.0 + _AS_P * z)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    y = 1.0 - poly * np.exp(-z * z)
    return np.copysign(y, x)


def _half_erfc_float32_into(x, q, a, t, e):
    """The A&S 7.1.26 core shared by the GELU and its derivative, for a float32 block x:
    a = |x|, e = exp(-x^2 / 2) and q = erfc(|x| / sqrt 2) / 2 = poly(t) exp(-x^2 / 2) / 2 with
    t = 1 / (1 + p |x| / sqrt 2), every step written into the preallocated arrays (`out=`)."""
    np.abs(x, out=a)                                      # |x|
    np.multiply(a, _AS_P / math.sqrt(2.0), out=t)
    t += 1.0
    np.reciprocal(t, out=t)                               # t = 1 / (1 + p |x| / sqrt 2)
    np.multiply(a, a, out=e)
    e *= -0.5
    np.exp(e, out=e)                                      # exp(-x^2 / 2) = exp(-z^2)
    np.multiply(t, _AS_HALF_A[4], out=q)                  # Horner: poly(t) / 2 built in `q`
    for coef in (_AS_HALF_A[3], _AS_HALF_A[2], _AS_HALF_A[1], _AS_HALF_A[0]):
        q += coef
        q *= t
    q *= e                                                # q = erfc(|x| / sqrt 2) / 2


def _gelu_float32_into(x, out, a, t, e):
    """out = gelu(x) for a float32 block, using scratch arrays a, t, e of the same shape.

    With z = |x|/sqrt(2) and q = erfc(z)/2 = poly(t) exp(-z^2)/2 (A&S 7.1.26), the normal CDF is
    1 - q for x >= 0 and q for x < 0, so gelu(x) = x Phi(x) = max(x, 0) - |x| q, with no branch.
    Every step writes into a preallocated array (`out=`): 19 passes over a chunk kept in cache.
    """
    _half_erfc_float32_into(x, out, a, t, e)              # out = q, a = |x|
    out *= a                                              # |x| q
    np.maximum(x, 0.0, out=a)
    np.subtract(a, out, out=out)                          # max(x, 0) - |x| q


def gelu_float32(x, value=None):
    """gelu(x), times `value` if given, for float32 x (..., F): row blocks of about _CHUNK values.

    Multiplying by `value` inside the loop (GEGLU) saves a pass over memory. Returns a new
    C-contiguous array shaped like x.
    """
    F_ = x.shape[-1] if x.ndim else 1
    x2 = x.reshape(-1, F_)                                # (..., F) -> (rows, F), a view if it can
    v2 = None if value is None else value.reshape(-1, F_)  # (..., F) -> (rows, F)
    rows = x2.shape[0]
    out = np.empty((rows, F_), np.float32)
    step = max(1, _CHUNK // max(F_, 1))                  # rows per block
    a, t, e = (np.empty((min(step, rows), F_), np.float32) for _ in range(3))
    for r in range(0, rows, step):
        m = min(step, rows - r)
        block = out[r:r + m]
        _gelu_float32_into(x2[r:r + m], block, a[:m], t[:m], e[:m])
        if v2 is not None:
            block *= v2[r:r + m]
    return out.reshape(x.shape)                          # (rows, F) -> x.shape




def _cdf_pdf_float32_into(x, cdf, pdf, a, t):
    """Phi(x) into `cdf` and x phi(x) into `pdf` for a float32 block (scratch a, t): the pieces
    of the GELU derivative Phi(x) + x phi(x), with the same A&S erf as the forward."""
    _half_erfc_float32_into(x, cdf, a, t, pdf)            # cdf = q, pdf = exp(-x^2 / 2)
    np.subtract(0.5, cdf, out=a)
    np.copysign(a, x, out=a)
    np.add(a, 0.5, out=cdf)                 # Phi(x) = 0.5 + sign(x) (0.5 - q): 1 - q or q, no branch
    pdf *= x
    pdf *= 1.0 / math.sqrt(2.0 * math.pi)                 # x phi(x)


def gelu_grad_float32(x, dy):
    """dy * (Phi(x) + x phi(x)), the derivative of the exact GELU, for float32 x and dy of the
    same shape (..., F), in row blocks of about _CHUNK values. Returns a new array."""
    F_ = x.shape[-1] if x.ndim else 1
    x2 = x.reshape(-1, F_)                                # (..., F) -> (rows, F)
    d2 = dy.reshape(-1, F_)
    rows = x2.shape[0]
    out = np.empty((rows, F_), np.float32)
    step = max(1, _CHUNK // max(F_, 1))
    a, t, pdf = (np.empty((min(step, rows), F_), np.float32) for _ in range(3))
    for r in range(0, rows, step):
        m = min(step, rows - r)
        block = out[r:r + m]
        _cdf_pdf_float32_into(x2[r:r + m], block, pdf[:m], a[:m], t[:m])
        block += pdf[:m]
        block *= d2[r:r + m]
    return out.reshape(x.shape)
