"""Matrix Lie groups for lattice gauge fields: U(1) and SU(N).

A group is a small frozen record (:class:`Group`) that knows its algebra, its exact
exponential, its projection back onto the group, its defect and its Haar measure, as
in GPT (``lib/gpt/core/group``) and the TP/TU blocks of openQCD
(``modules/update/README.mdint``). Everything is pure ``jnp``, batched over leading
axes, and safe under ``jit``, ``vmap`` and ``grad``; a group is hashable, so it can be
a static argument.

Conventions
-----------
- A group element is a complex matrix of shape ``(..., N, N)`` (complex64 or
  complex128, following the input). U(1) is ``(..., 1, 1)`` with ``|U| = 1``.
- The Lie algebra is the traceless anti-Hermitian matrices (U(1): imaginary 1x1, no
  trace condition). Generators ``T_a``, ``a = 1..dim``, are normalised to
  ``tr(T_a T_b) = -1/2 delta_ab``: ``T_a = i lambda_a / 2`` with the generalised
  Gell-Mann matrices (Pauli for SU(2), Gell-Mann's order for SU(3)); U(1):
  ``T = i / sqrt(2)``. ``dim = N^2 - 1`` for SU(N), 1 for U(1).
- Momentum ``P = sum_a p_a T_a`` with ``p_a ~ N(0, 1)``; kinetic energy
  ``K = (1/2) sum_a p_a^2 = -tr P^2 = sum_ij |P_ij|^2`` (openQCD's convention), so
  ``<K> = dim / 2`` per link. Grid and CPS use ``K = -tr P^2 / 2`` with
  ``p_a ~ N(0, 2)``: a Grid trajectory of length ``tau`` equals one of ours of length
  ``sqrt(2) tau``.
- The drift is ``U <- exp(eps P) U``; :meth:`Group.exp` never projects, the caller
  projects at its own cadence with :meth:`Group.project`.

Exponentials (``jax.scipy.linalg.expm`` is avoided: jax #13985 returns NaN beyond its
squaring cap, jax #25987 wrong values in float32):

- U(1): ``exp(i phi)`` of the imaginary entry.
- SU(2): ``exp X = cos(theta) 1 + sin(theta)/theta X`` with
  ``theta^2 = -tr(X^2)/2``; a Taylor branch near ``theta = 0``.
- SU(3): Cayley-Hamilton, Morningstar & Peardon, PRD 69 (2004) 054501,
  hep-lat/0311018, with ``c0 < 0`` mapped to ``|c0|`` by
  ``f_j(-c0) = (-1)^j conj(f_j(c0))`` (QUDA PR #1297), a series branch for small
  ``c1`` and a Taylor ``sin(w)/w`` near ``w = 0``. Accurate for any norm.
- SU(N), N >= 4 (and :class:`SUN` for any N): scaling and squaring of a Taylor series
  (order 9 in float32, 15 in float64) with a per-matrix number of squarings chosen from
  the Frobenius norm so the scaled norm is <= 1/2, capped at
  :data:`MAX_SQUARINGS`: accurate for ``||X||_F <= 0.5 * 2**MAX_SQUARINGS = 128``.

Every singular point (``theta = 0``, ``c1 = 0``, ``w = 0``, degenerate eigenvalues)
is guarded by a double ``where`` so that neither values nor gradients are NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from hmc import rng as _rng

__all__ = ["Group", "U1", "SU2", "SU3", "SUN", "SU", "get", "gauge_transform", "dagger",
           "MAX_SQUARINGS"]

#: static number of squarings of the generic SU(N) exponential (its accurate range is
#: ``||X||_F <= 0.5 * 2**MAX_SQUARINGS``)
MAX_SQUARINGS = 8
_SCALED_NORM = 0.5
# below: exp(iQ) by its Cayley-Hamilton reduced Taylor series (the closed form is accurate
# down to c1 ~ 1e-8 in float64; the series only spares it c1 -> 0)
_SU3_SERIES_C1 = 1e-4
_SU3_SERIES_ORDER = 6  # |eigenvalue| <= 0.0116 there: 0.0116**7 / 7! ~ 5e-18
_SINC_TAYLOR = 1e-2  # w^2 below: Taylor cos(w), sin(w)/w to w^8 (error ~ w^10 / 10!)
_POLAR_STEPS = 6


def dagger(u: ArrayLike) -> Array:
    """Conjugate transpose of the last two axes, ``(..., N, N) -> (..., N, N)``."""
    return jnp.conj(jnp.swapaxes(jnp.asarray(u), -1, -2))


#: matrices up to this size are multiplied written out (see :func:`matmul`)
WRITTEN_OUT_MAX = 4


def matmul(a: ArrayLike, b: ArrayLike) -> Array:
    """``a @ b`` over the last two axes, batched. Small matrices (``N <= 4``) are multiplied
    written out, ``sum_k a_ik b_kj`` as one fused elementwise loop, as lattice codes unroll
    their SU(3) products: XLA's batched ``dot_general`` of 3x3 matrices is about ten times
    slower on CPU (BENCHMARKS.md, "Gauge fields"). Larger ones use ``jnp.matmul`` at full
    float32 precision (accelerators that default to TF32 products)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape[-1] <= WRITTEN_OUT_MAX and b.shape[-1] <= WRITTEN_OUT_MAX:
        return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


_mm = matmul


def _trace(a: Array) -> Array:
    return jnp.trace(a, axis1=-2, axis2=-1)


def _norm2(a: Array) -> Array:
    """``sum_ij |a_ij|^2`` over the last two axes (a real polynomial: smooth at 0)."""
    return jnp.sum(a.real**2 + a.imag**2, axis=(-2, -1))


def _real_dtype(dtype: Any) -> Any:
    return jnp.finfo(jax.dtypes.canonicalize_dtype(dtype)).dtype


def _complex_normal(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """Standard complex normal draws (``E|z|^2 = 1``) from the momentum stream of :mod:`hmc.rng`."""
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    xy = _rng.normal(key, (*tuple(shape), 2), _real_dtype(dtype)) * math.sqrt(0.5)
    return lax.complex(xy[..., 0], xy[..., 1]).astype(dtype)


def _unit_phase(angle: Array) -> Array:
    return lax.complex(jnp.cos(angle), jnp.sin(angle))


def _scalar(f: Array) -> Array:
    return f[..., None, None]


def _cos_sinc(w2: Array) -> tuple[Array, Array]:
    """``(cos w, sin(w)/w)`` as functions of ``w^2``, finite with finite gradients at 0.

    Double ``where``: the closed form sees a safe ``w^2 = 1`` and the polynomial sees
    0 wherever the other branch is taken, so neither leaks a NaN into the gradient.
    """
    small = w2 < _SINC_TAYLOR
    w = jnp.sqrt(jnp.where(small, 1.0, w2))
    z = jnp.where(small, w2, 0.0)
    cos_series = 1 - z / 2 * (1 - z / 12 * (1 - z / 30 * (1 - z / 56 * (1 - z / 90))))
    sinc_series = 1 - z / 6 * (1 - z / 20 * (1 - z / 42 * (1 - z / 72 * (1 - z / 110))))
    return jnp.where(small, cos_series, jnp.cos(w)), jnp.where(small, sinc_series, jnp.sin(w) / w)


@functools.lru_cache(maxsize=None)
def _gell_mann(n: int) -> np.ndarray:
    """Generalised Gell-Mann matrices ``lambda_a`` (Hermitian, ``tr = 2 delta``), ``(n^2-1, n, n)``.

    Order: for ``k = 1..n-1``, the pairs ``(j, k)``, ``j < k`` (symmetric, then
    antisymmetric), then the diagonal matrix with ``k`` leading ones: Pauli for
    ``n = 2`` and Gell-Mann's ``lambda_1..lambda_8`` for ``n = 3``.
    """
    mats = []
    for k in range(1, n):
        for j in range(k):
            sym = np.zeros((n, n), complex)
            sym[j, k] = sym[k, j] = 1
            anti = np.zeros((n, n), complex)
            anti[j, k], anti[k, j] = -1j, 1j
            mats += [sym, anti]
        diag = np.zeros(n)
        diag[:k], diag[k] = 1.0, -k
        mats.append(np.diag(diag * math.sqrt(2.0 / (k * (k + 1)))).astype(complex))
    return np.stack(mats)


def _det(u: Array) -> Array:
    """Determinant of ``(..., N, N)``: closed forms for N <= 3."""
    n = u.shape[-1]
    if n == 1:
        return u[..., 0, 0]
    if n == 2:
        return u[..., 0, 0] * u[..., 1, 1] - u[..., 0, 1] * u[..., 1, 0]
    if n == 3:
        minor = lambda i, j: u[..., 1, i] * u[..., 2, j] - u[..., 1, j] * u[..., 2, i]  # noqa: E731
        return u[..., 0, 0] * minor(1, 2) - u[..., 0, 1] * minor(0, 2) + u[..., 0, 2] * minor(0, 1)
    return jnp.linalg.det(u)


def _inverse_dagger(u: Array) -> Array:
    """``(u^-1)^dag``; for 3x3 the conjugate cofactor rows (cross products) over ``det*``."""
    if u.shape[-1] != 3:
        return dagger(jnp.linalg.inv(u))
    r0, r1, r2 = u[..., 0, :], u[..., 1, :], u[..., 2, :]
    cof = jnp.stack([jnp.cross(r1, r2), jnp.cross(r2, r0), jnp.cross(r0, r1)], axis=-2)
    det = jnp.sum(r0 * cof[..., 0, :], axis=-1)
    return jnp.conj(cof / _scalar(det))


def _polar(u: Array) -> Array:
    """Unitary factor of the polar decomposition ``u = W H`` (the nearest unitary).

    Newton's iteration ``X <- (g X + X^{-dag} / g) / 2`` with Higham's Frobenius
    scaling ``g = (||X^-1||_F / ||X||_F)^{1/2}`` (Higham, SIAM J. Sci. Stat. Comput. 7
    (1986) 1160): quadratic convergence; :data:`_POLAR_STEPS` = 6 steps reach the
    conditioning limit (``kappa eps``) for any nonsingular input of condition number
    ``kappa <= 1e6`` and any overall scale, and a unitary input is a fixed point.
    """
    def step(_, x):
        inv_dag = _inverse_dagger(x)
        g = (_norm2(inv_dag) / _norm2(x)) ** 0.25
        return 0.5 * (_scalar(g) * x + inv_dag / _scalar(g))

    return lax.fori_loop(0, _POLAR_STEPS, step, u)


def _fix_det(u: Array) -> Array:
    """Divide a unitary matrix by the principal ``N``-th root of its determinant's phase."""
    angle = jnp.angle(_det(u))
    return u * _scalar(_unit_phase(-angle / u.shape[-1]))


def _taylor_exp(x: Array) -> Array:
    """``exp(X)`` for any square ``X`` by scaling and squaring of a Taylor series.

    ``s = ceil(log2(||X||_F / 0.5))`` squarings per matrix (clipped to
    ``[0, MAX_SQUARINGS]``; the count carries no gradient), a Horner-evaluated Taylor
    polynomial of order 9 (float32) or 15 (float64) of ``X / 2^s``, then ``s``
    squarings, masked per matrix inside a static loop so that reverse mode works.
    """
    order = 9 if jnp.finfo(x.dtype).bits <= 32 else 15
    norm = jnp.sqrt(_norm2(lax.stop_gradient(x)))
    s = jnp.clip(jnp.ceil(jnp.log2(norm / _SCALED_NORM)), 0, MAX_SQUARINGS)
    xs = x * _scalar(2.0 ** -s).astype(x.dtype)
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    # Horner, 1 + X/1 (1 + X/2 (1 + ... (1 + X/order))), as loops: a small program to compile
    horner = lambda i, e: eye + _mm(xs, e) / (order - i).astype(x.real.dtype)  # noqa: E731
    e = lax.fori_loop(1, order, horner, eye + xs / order)
    square = lambda i, m: jnp.where(_scalar(i < s), _mm(m, m), m)  # noqa: E731
    return lax.fori_loop(0, MAX_SQUARINGS, square, e)


def _su3_series(c0: Array, c1: Array) -> tuple[Array, Array, Array]:
    """``f_j`` of ``exp(iQ) = f0 + f1 Q + f2 Q^2`` from the Taylor series of ``exp(iQ)``.

    ``Q^n = a_n + b_n Q + c_n Q^2`` with ``Q^3 = c1 Q + c0`` (Cayley-Hamilton):
    ``(a, b, c)_{n+1} = (c_n c0, a_n + c_n c1, b_n)``. Polynomial in ``c0``, ``c1``:
    exact and smooth at ``Q = 0``.
    """
    a, b, c = jnp.ones_like(c1), jnp.zeros_like(c1), jnp.zeros_like(c1)
    f0 = f1 = f2 = 0.0
    coef = 1.0 + 0.0j
    for n in range(_SU3_SERIES_ORDER + 1):
        f0, f1, f2 = f0 + coef * a, f1 + coef * b, f2 + coef * c
        a, b, c = c * c0, a + c * c1, b
        coef = coef * 1j / (n + 1)
    return f0, f1, f2


def _su3_closed(c0: Array, c1: Array) -> tuple[Array, Array, Array]:
    """Morningstar-Peardon ``f_j(c0, c1)`` for ``c1 > 0`` (hep-lat/0311018, section III).

    Computed at ``|c0|`` and mapped back by ``f_j(-c0) = (-1)^j conj(f_j(c0))``, so the
    denominator ``9u^2 - w^2 >= 2 c1`` never vanishes. ``u`` (half the largest
    eigenvalue of ``Q``) takes its value from ``arccos`` and its derivative from one
    Newton step on ``lambda^3 - c1 lambda - |c0| = 0`` (``d/dx arccos`` is infinite at
    degenerate eigenvalues, the implicit derivative is not). ``w^2 = c1 - 3u^2``.
    """
    negative = c0 < 0
    a = jnp.where(negative, -c0, c0)
    a_, c1_ = lax.stop_gradient(a), lax.stop_gradient(c1)
    ratio = jnp.minimum(a_ / (2.0 * (c1_ / 3.0) ** 1.5), 1.0)
    lam0 = 2.0 * jnp.sqrt(c1_ / 3.0) * jnp.cos(jnp.arccos(ratio) / 3.0)
    lam = lam0 - (lam0**3 - c1 * lam0 - a) / (3.0 * lam0**2 - c1)
    u = lam / 2.0
    u2 = u * u
    w2 = c1 - 3.0 * u2
    cos_w, xi0 = _cos_sinc(w2)
    e2, em = _unit_phase(2.0 * u), _unit_phase(-u)
    h0 = (u2 - w2) * e2 + em * lax.complex(8.0 * u2 * cos_w, 2.0 * u * (3.0 * u2 + w2) * xi0)
    h1 = 2.0 * u * e2 - em * lax.complex(2.0 * u * cos_w, -(3.0 * u2 - w2) * xi0)
    h2 = e2 - em * lax.complex(cos_w, 3.0 * u * xi0)
    den = 9.0 * u2 - w2
    f0, f1, f2 = h0 / den, h1 / den, h2 / den
    f0 = jnp.where(negative, jnp.conj(f0), f0)
    f1 = jnp.where(negative, -jnp.conj(f1), f1)
    f2 = jnp.where(negative, jnp.conj(f2), f2)
    return f0, f1, f2


def _su3_exp(x: Array) -> Array:
    """``exp(X) = exp(iQ) = f0 + f1 Q + f2 Q^2`` with ``Q = -iX`` Hermitian traceless.

    ``c0 = tr Q^3 / 3 = det Q``, ``c1 = tr Q^2 / 2``; the series branch for
    ``c1 < 1e-4`` (including ``Q = 0``), the closed form elsewhere; each branch sees safe
    inputs where it is not taken (double ``where``). In float32 the error grows like
    ``eps ||X||^2`` (the terms ``f1 Q`` and ``f2 Q^2`` cancel): ~1e-6 at ``||X||_F = 3``.
    """
    q = -1j * x
    q2 = _mm(q, q)
    c1 = 0.5 * jnp.real(_trace(q2))
    c0 = jnp.real(jnp.einsum("...ij,...ji->...", q2, q)) / 3.0
    small = c1 < _SU3_SERIES_C1
    series = _su3_series(jnp.where(small, c0, 0.0), jnp.where(small, c1, 0.0))
    closed = _su3_closed(jnp.where(small, 0.0, c0), jnp.where(small, 1.0, c1))
    f0, f1, f2 = (jnp.where(small, s, c).astype(x.dtype) for s, c in zip(series, closed))
    eye = jnp.eye(3, dtype=x.dtype)
    return _scalar(f0) * eye + _scalar(f1) * q + _scalar(f2) * q2


@dataclasses.dataclass(frozen=True)
class Group:
    """SU(N) in the fundamental representation, with generic algorithms.

    ``n`` is the matrix size. Subclasses replace the exponential and projection by
    closed forms (:class:`SU2`, :class:`SU3`) or the whole algebra (:class:`U1`).
    Construct through :func:`SU` or :func:`get`.
    """

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"SU(N) needs an integer N >= 2, got {self.n!r}")

    @property
    def name(self) -> str:
        return f"SU({self.n})"

    @property
    def dim(self) -> int:
        """Algebra dimension: ``N^2 - 1``."""
        return self.n * self.n - 1

    def generators(self, dtype: Any = jnp.complex128) -> Array:
        """``T_a = i lambda_a / 2``, shape ``(dim, N, N)``, ``tr(T_a T_b) = -1/2 delta_ab``."""
        return jnp.asarray(0.5j * _gell_mann(self.n), jax.dtypes.canonicalize_dtype(dtype))

    def algebra(self, m: ArrayLike) -> Array:
        """Projection of ``(..., N, N)`` onto the algebra: ``(M - M^dag)/2 - tr(.)/N``."""
        m = jnp.asarray(m)
        anti = 0.5 * (m - dagger(m))
        return anti - _scalar(_trace(anti) / self.n) * jnp.eye(self.n, dtype=anti.dtype)

    def coordinates(self, x: ArrayLike) -> Array:
        """Real ``p_a = -2 Re tr(T_a X)``, shape ``(..., dim)``, so ``X = sum_a p_a T_a``."""
        x = jnp.asarray(x)
        t = self.generators(x.dtype)
        return -2.0 * jnp.real(jnp.einsum("aij,...ji->...a", t, x, precision=lax.Precision.HIGHEST))

    def from_coordinates(self, p: ArrayLike, dtype: Any = None) -> Array:
        """``X = sum_a p_a T_a`` from ``p`` of shape ``(..., dim)``: ``(..., N, N)``.

        ``dtype`` defaults to the complex type of ``p``'s precision.
        """
        p = jnp.asarray(p)
        dtype = jnp.result_type(p.dtype, jnp.complex64) if dtype is None else dtype
        t = self.generators(dtype)
        return jnp.einsum("...a,aij->...ij", p.astype(dtype), t, precision=lax.Precision.HIGHEST)

    def random_algebra(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.complex64) -> Array:
        """Momentum ``P = sum_a p_a T_a``, ``p_a ~ N(0, 1)`` iid, shape ``(*shape, N, N)``.

        Projects a standard complex Gaussian matrix ``Z`` (``E|Z_ij|^2 = 1``): then
        ``p_a = -2 Re tr(T_a Z)`` has variance ``4 * (1/2) * sum_ij |T_a,ij|^2 = 1``
        and the ``p_a`` are uncorrelated because ``tr(T_a^dag T_b) = delta_ab / 2``.
        """
        return self.algebra(_complex_normal(key, (*tuple(shape), self.n, self.n), dtype))

    def kinetic(self, p: ArrayLike) -> Array:
        """``K = -sum tr P^2 = sum |P_ij|^2`` over all batch elements (real scalar)."""
        p = jnp.asarray(p)
        return jnp.sum(p.real**2 + p.imag**2)

    def exp(self, x: ArrayLike) -> Array:
        """``exp(X)`` of algebra elements ``(..., N, N)`` by scaling and squaring.

        Accurate for ``||X||_F <= 128`` (see :func:`_taylor_exp`); not projected.
        """
        return _taylor_exp(jnp.asarray(x))

    def project(self, u: ArrayLike) -> Array:
        """Nearest unitary (polar decomposition, see :func:`_polar`), then ``det = 1``
        by the principal ``N``-th root of its phase. Any nonsingular input; a group
        element is a fixed point (to rounding).
        """
        return _fix_det(_polar(jnp.asarray(u)))

    def reunitarize(self, u: ArrayLike) -> Array:
        """Back on the group from rounding distance, cheaply: what the drift applies after
        every ``exp(eps P) U``. :meth:`project` here; SU(3) and SU(2) have cheaper exact
        forms. Not the nearest element far from the group (use :meth:`project` there)."""
        return self.project(u)

    def defect(self, u: ArrayLike) -> tuple[Array, Array]:
        """``(max |(U^dag U - 1)_ij|, max |det U - 1|)`` over the batch (real scalars)."""
        u = jnp.asarray(u)
        unitarity = _mm(dagger(u), u) - jnp.eye(self.n, dtype=u.dtype)
        return jnp.max(jnp.abs(unitarity)), jnp.max(jnp.abs(_det(u) - 1))

    def random(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.complex64) -> Array:
        """Haar-random elements ``(*shape, N, N)``.

        QR of a complex Gaussian matrix with ``Q`` multiplied by the phases of ``R``'s
        diagonal (Mezzadri, Notices AMS 54 (2007) 592): Haar on U(N). Dividing by the
        principal root of ``det`` commutes with left multiplication by SU(N), so the
        result is Haar on SU(N).
        """
        q, r = jnp.linalg.qr(_complex_normal(key, (*tuple(shape), self.n, self.n), dtype))
        d = jnp.diagonal(r, axis1=-2, axis2=-1)
        return _fix_det(q * (d / jnp.abs(d))[..., None, :])

    def identity(self, shape: tuple[int, ...], dtype: Any = jnp.complex64) -> Array:
        """Unit matrices ``(*shape, N, N)`` (a cold start)."""
        eye = np.eye(self.n, dtype=jax.dtypes.canonicalize_dtype(dtype))  # a constant, no program
        return jnp.broadcast_to(eye, (*tuple(shape), self.n, self.n))

    def near_identity(self, key: Array, shape: tuple[int, ...], scale: float,
                      dtype: Any = jnp.complex64) -> Array:
        """``exp(scale * P)`` with ``P`` from :meth:`random_algebra`: a "hot-ish" start."""
        return self.exp(scale * self.random_algebra(key, shape, dtype))


@dataclasses.dataclass(frozen=True)
class SUN(Group):
    """SU(N) for any ``N >= 2`` with the generic Taylor exponential and polar projection."""


@dataclasses.dataclass(frozen=True)
class SU2(Group):
    """SU(2): closed-form exponential and the quaternion projection."""

    n: int = 2

    def __post_init__(self) -> None:
        if self.n != 2:
            raise ValueError(f"SU2 has n = 2, got {self.n!r}")

    def exp(self, x: ArrayLike) -> Array:
        """``exp X = cos(theta) 1 + sin(theta)/theta X``, ``theta^2 = sum |X_ij|^2 / 2``.

        ``X^2 = -theta^2 1`` for traceless anti-Hermitian ``X``; exact for any norm.
        """
        x = jnp.asarray(x)
        cos_t, sinc_t = _cos_sinc(0.5 * _norm2(x))
        return _scalar(cos_t).astype(x.dtype) * jnp.eye(2, dtype=x.dtype) + _scalar(sinc_t) * x

    def project(self, u: ArrayLike) -> Array:
        """Nearest SU(2) element ``[[a, b], [-b*, a*]] / sqrt(|a|^2 + |b|^2)``.

        ``a = (u00 + u11*)/2``, ``b = (u01 - u10*)/2`` is the orthogonal projection onto
        the real span of SU(2) (the quaternions); normalising it gives the nearest point.
        """
        u = jnp.asarray(u)
        a = 0.5 * (u[..., 0, 0] + jnp.conj(u[..., 1, 1]))
        b = 0.5 * (u[..., 0, 1] - jnp.conj(u[..., 1, 0]))
        r = jnp.sqrt(a.real**2 + a.imag**2 + b.real**2 + b.imag**2)
        a, b = a / r, b / r
        rows = [jnp.stack([a, b], -1), jnp.stack([-jnp.conj(b), jnp.conj(a)], -1)]
        return jnp.stack(rows, -2)

    def random(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.complex64) -> Array:
        """Haar-random SU(2) ``(*shape, 2, 2)``: the projection of a complex Gaussian matrix.

        ``(a, b)`` are then four iid real normals, and their normalisation is uniform
        on the 3-sphere, which is Haar measure on SU(2).
        """
        return self.project(_complex_normal(key, (*tuple(shape), 2, 2), dtype))


@dataclasses.dataclass(frozen=True)
class SU3(Group):
    """SU(3): Morningstar-Peardon exponential; polar projection."""

    n: int = 3

    def __post_init__(self) -> None:
        if self.n != 3:
            raise ValueError(f"SU3 has n = 3, got {self.n!r}")

    def reunitarize(self, u: ArrayLike) -> Array:
        """Gram-Schmidt on the first two rows, the third their conjugate cross product (so
        ``det = 1`` exactly): a tenth of the polar projection's cost (BENCHMARKS.md, "Gauge
        fields"). On a matrix unitary to rounding it moves the matrix by rounding only."""
        u = jnp.asarray(u)

        def normalised(r: Array) -> Array:
            return r / jnp.sqrt(jnp.sum(r.real**2 + r.imag**2, axis=-1, keepdims=True))

        r0 = normalised(u[..., 0, :])
        r1 = u[..., 1, :]
        r1 = normalised(r1 - jnp.sum(jnp.conj(r0) * r1, axis=-1, keepdims=True) * r0)
        r2 = jnp.conj(jnp.stack([r0[..., 1] * r1[..., 2] - r0[..., 2] * r1[..., 1],
                                 r0[..., 2] * r1[..., 0] - r0[..., 0] * r1[..., 2],
                                 r0[..., 0] * r1[..., 1] - r0[..., 1] * r1[..., 0]], axis=-1))
        return jnp.stack([r0, r1, r2], axis=-2)

    def exp(self, x: ArrayLike) -> Array:
        """Cayley-Hamilton ``exp(X)`` (see :func:`_su3_exp`); exact for any norm."""
        return _su3_exp(jnp.asarray(x))


@dataclasses.dataclass(frozen=True)
class U1(Group):
    """U(1) as ``(..., 1, 1)`` phases; the algebra is ``i R`` with ``T = i / sqrt(2)``.

    Its determinant defect is reported as 0: U(1) has no determinant constraint, and
    ``| |U|^2 - 1 |`` is the unitarity defect.
    """

    n: int = 1

    def __post_init__(self) -> None:
        if self.n != 1:
            raise ValueError(f"U1 has n = 1, got {self.n!r}")

    @property
    def name(self) -> str:
        return "U(1)"

    @property
    def dim(self) -> int:
        return 1

    def generators(self, dtype: Any = jnp.complex128) -> Array:
        """``T = i / sqrt(2)``, shape ``(1, 1, 1)``."""
        return jnp.full((1, 1, 1), 1j / math.sqrt(2.0), jax.dtypes.canonicalize_dtype(dtype))

    def algebra(self, m: ArrayLike) -> Array:
        """``(M - M^*)/2 = i Im M`` (no trace condition)."""
        m = jnp.asarray(m)
        return 0.5 * (m - jnp.conj(m))

    def exp(self, x: ArrayLike) -> Array:
        """``exp(i Im x)`` (any real part of ``x`` is ignored)."""
        x = jnp.asarray(x)
        return _unit_phase(x.imag).astype(x.dtype)

    def project(self, u: ArrayLike) -> Array:
        """``u / |u|``."""
        u = jnp.asarray(u)
        return u / jnp.abs(u)

    def defect(self, u: ArrayLike) -> tuple[Array, Array]:
        """``(max | |U|^2 - 1 |, 0)``."""
        u = jnp.asarray(u)
        unitarity = jnp.max(jnp.abs(u.real**2 + u.imag**2 - 1))
        return unitarity, jnp.zeros((), unitarity.dtype)

    def random(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.complex64) -> Array:
        """Uniform phases ``(*shape, 1, 1)`` (Haar on U(1)): ``z / |z|`` of complex normals."""
        return self.project(_complex_normal(key, (*tuple(shape), 1, 1), dtype))


def SU(n: int) -> Group:  # noqa: N802 (the group's name)
    """SU(n): :class:`SU2`, :class:`SU3` (closed forms) or :class:`SUN`; ``n >= 2``."""
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"SU(N) needs an integer N >= 2, got {n!r}")
    if n == 2:
        return SU2()
    if n == 3:
        return SU3()
    return SUN(int(n))


_SPEC = re.compile(r"^(U|SU)(?:\((\d+)\)|(\d+))$")
_ACCEPTED = "'U(1)' or 'SU(N)' with N >= 2 (also 'u1', 'su3', 'SU 3': case and spaces are ignored)"


def get(spec: str | Group) -> Group:
    """The group named by ``spec`` (a :class:`Group` is returned as is).

    Raises ``ValueError`` naming ``spec`` and the accepted forms.
    """
    if isinstance(spec, Group):
        return spec
    match = _SPEC.match(re.sub(r"\s+", "", spec).upper()) if isinstance(spec, str) else None
    if match is not None:
        kind, n = match.group(1), int(match.group(2) or match.group(3))
        if kind == "U" and n == 1:
            return U1()
        if kind == "SU" and n >= 2:
            return SU(n)
    raise ValueError(f"unknown group {spec!r}: accepted forms are {_ACCEPTED}")


def gauge_transform(u: ArrayLike, g: ArrayLike) -> Array:
    """``u'_mu(x) = g(x) u_mu(x) g(x + mu)^dag`` on a periodic lattice.

    ``u``: links ``(d, *shape, N, N)``, ``u[mu][x]`` from ``x`` to ``x + mu``; ``g``:
    ``(*shape, N, N)``. Returns links of ``u``'s shape.
    """
    u, g = jnp.asarray(u), jnp.asarray(g)
    if g.shape != u.shape[1:] or u.shape[0] > g.ndim - 2:
        raise ValueError(f"links {u.shape} and gauge transformation {g.shape} do not fit "
                         "(d, *shape, N, N) and (*shape, N, N)")
    return jnp.stack([_mm(_mm(g, u[mu]), dagger(jnp.roll(g, -1, axis=mu))) for mu in range(u.shape[0])])
