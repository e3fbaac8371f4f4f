"""The Wilson(-clover) Dirac operator for any gauge group of :mod:`hmc.groups` in two or four
dimensions, with even-odd preconditioning and the free propagator in momentum space.

Conventions.

- Links ``U`` ``(d, *shape, N, N)`` as in :mod:`physics_models.yang_mills`; fermion fields
  ``psi`` complex ``(*shape, S, N)`` (spin ``S = 2`` in 2D, ``4`` in 4D, then colour).
- Euclidean Hermitian gamma matrices, ``{gamma_mu, gamma_nu} = 2 delta_mu_nu``; lattice axis
  ``mu`` carries ``gamma_mu``; the last axis is time. 2D: ``gamma_0 = sigma_x``,
  ``gamma_1 = sigma_y``, ``gamma_5 = sigma_z = -i gamma_0 gamma_1`` (the Schwinger model's
  basis). 4D, the chiral (Weyl) basis: ``gamma_k = [[0, -i sigma_k], [i sigma_k, 0]]``
  (``k = 1, 2, 3`` on axes 0, 1, 2), ``gamma_t = [[0, 1], [1, 0]]`` (axis 3),
  ``gamma_5 = gamma_1 gamma_2 gamma_3 gamma_t = diag(1, 1, -1, -1)``.
- Wilson's operator (``r = 1``), bare mass ``m``, hopping parameter ``kappa = 1 / (2 (m + d))``::

      (D psi)(x) = (m + d) psi(x) + C(x) psi(x)
                   - 1/2 sum_mu [(1 - gamma_mu) U_mu(x) psi(x + mu) + (1 + gamma_mu) U_mu(x - mu)^dag psi(x - mu)]

  periodic in space and antiperiodic in time (the last axis) for the fermions. Multiplying
  by ``2 kappa`` gives the hopping form ``1 - kappa H + 2 kappa C``. The clover term
  (Sheikholeslami-Wohlert) is ``C = c_sw (i/4) sum_{mu,nu} sigma_mu_nu F_mu_nu``,
  ``sigma_mu_nu = (i/2)[gamma_mu, gamma_nu]``, with ``F`` the clover field strength of
  :func:`physics_models.yang_mills.clover_field_strengths` (anti-Hermitian, traceless for SU(N)).
  ``D`` is gamma_5-Hermitian, ``D^dag = gamma_5 D gamma_5``.
- Even-odd preconditioning (all extents even): with ``A`` the site-local part ``m + d + C`` and
  ``H`` the hopping term, ``D = [[A_ee, H_eo], [H_oe, A_oo]]`` and
  ``det D = det A_ee det D_hat``, ``D_hat = A_oo - H_oe A_ee^{-1} H_eo`` on the odd sites (the
  Schur complement). ``D_hat`` is gamma_5-Hermitian too. Packed fields of one parity have
  shape ``(L0/2, L1, ..., S, N)``: the site ``(x0, rest)`` of parity ``p`` is
  ``[(x0 - s) / 2, rest]`` with ``s = (p + x1 + ... ) mod 2``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hmc.lattice import shift

_SIGMA = (np.array([[0, 1], [1, 0]], complex), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]], complex))


def gammas(d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(gamma, gamma_5)``: ``gamma`` ``(d, S, S)``, lattice axis ``mu`` carrying ``gamma[mu]``."""
    if d == 2:
        return np.stack(_SIGMA[:2]), _SIGMA[2].copy()
    if d == 4:
        zero, one = np.zeros((2, 2)), np.eye(2)
        spatial = [np.block([[zero, -1j * s], [1j * s, zero]]) for s in _SIGMA]
        time = np.block([[zero, one], [one, zero]]).astype(complex)
        gamma = np.stack(spatial + [time])
        return gamma, gamma[0] @ gamma[1] @ gamma[2] @ gamma[3]
    raise ValueError(f"Wilson fermions are defined here in d = 2 or 4, got d = {d}")


def _spin(matrix: np.ndarray, psi: jax.Array) -> jax.Array:
    """``matrix psi`` on the spin axis (-2), written out over the matrix's non-zero entries."""
    rows = []
    for s in range(matrix.shape[0]):
        row = None
        for t in np.flatnonzero(np.abs(matrix[s]) > 1e-14):
            c = matrix[s, t]
            term = psi[..., t, :] if c == 1 else (-psi[..., t, :] if c == -1 else c * psi[..., t, :])
            row = term if row is None else row + term
        rows.append(jnp.zeros_like(psi[..., 0, :]) if row is None else row)
    return jnp.stack(rows, axis=-2)


def colour(u: jax.Array, psi: jax.Array) -> jax.Array:
    """``U psi`` on the colour axis (-1) for every spin: ``u`` ``(..., N, N)``, ``psi`` ``(..., S, N)``."""
    return jnp.sum(u[..., None, :, :] * psi[..., :, None, :], axis=-1)


def colour_dagger(u: jax.Array, psi: jax.Array) -> jax.Array:
    """``U^dag psi`` on the colour axis, without forming ``U^dag``."""
    return jnp.sum(jnp.conj(u)[..., None, :, :] * psi[..., :, :, None], axis=-2)


def time_signs(shape: tuple[int, ...], dtype) -> tuple[jax.Array, jax.Array]:
    """The antiperiodic signs of the forward and backward hop along time (the last axis),
    shaped to multiply a field ``(*shape, S, N)`` (or a packed one)."""
    T, d = shape[-1], len(shape)
    index = (1,) * (d - 1) + (T, 1, 1)
    forward = np.where(np.arange(T) == T - 1, -1.0, 1.0).reshape(index)
    backward = np.where(np.arange(T) == 0, -1.0, 1.0).reshape(index)
    return jnp.asarray(forward, dtype), jnp.asarray(backward, dtype)


@dataclasses.dataclass(frozen=True)
class Wilson:
    """The Wilson-clover operator of one lattice, mass and ``c_sw`` (see the module docstring).

    ``even_odd``: the CG solves the Schur complement on odd sites (needs every extent even).
    """

    shape: tuple[int, ...]
    mass: float
    csw: float = 0.0
    even_odd: bool = False

    def __post_init__(self) -> None:
        gamma, g5 = gammas(len(self.shape))
        object.__setattr__(self, "_gamma", gamma)
        object.__setattr__(self, "_gamma5", g5)
        if self.even_odd and any(n % 2 for n in self.shape):
            raise ValueError(f"even-odd preconditioning needs every extent even, got shape {self.shape}")

    @property
    def d(self) -> int:
        return len(self.shape)

    @property
    def spins(self) -> int:
        return self._gamma.shape[1]

    @property
    def diagonal(self) -> float:
        """``m + d``, the site-local part without the clover term."""
        return self.mass + self.d

    def gamma5(self, psi: jax.Array) -> jax.Array:
        return _spin(self._gamma5, psi)

    # -- the full operator -----------------------------------------------------------------
    def hop(self, u: jax.Array, psi: jax.Array) -> jax.Array:
        """The hopping term ``-1/2 sum_mu [...]`` on the full lattice."""
        forward_sign, backward_sign = time_signs(self.shape, psi.real.dtype)
        identity = np.eye(self.spins)
        out = jnp.zeros_like(psi)
        for mu in range(self.d):
            forward = colour(u[mu], shift(psi, mu, 1))
            backward = shift(colour_dagger(u[mu], psi), mu, -1)
            if mu == self.d - 1:
                forward, backward = forward * forward_sign, backward * backward_sign
            out = out + _spin(identity - self._gamma[mu], forward) + _spin(identity + self._gamma[mu], backward)
        return -0.5 * out

    def apply(self, u: jax.Array, psi: jax.Array) -> jax.Array:
        """``D psi`` on the full lattice."""
        return self.local(u, psi) + self.hop(u, psi)

    def apply_dagger(self, u: jax.Array, psi: jax.Array) -> jax.Array:
        """``D^dag psi = gamma_5 D gamma_5 psi``."""
        return self.gamma5(self.apply(u, self.gamma5(psi)))

    # -- the clover term -------------------------------------------------------------------
    def _sigma_planes(self) -> list[np.ndarray]:
        """``(i/2) sigma_mu_nu`` per plane ``mu < nu`` (the clover term is ``c_sw`` times the
        sum of these with ``F_mu_nu``: both orders of the plane give a factor 2)."""
        g = self._gamma
        return [0.5j * (0.5j * (g[mu] @ g[nu] - g[nu] @ g[mu])) * 1.0
                for mu in range(self.d) for nu in range(mu + 1, self.d)]

    def field_strengths(self, u: jax.Array) -> jax.Array | None:
        if self.csw == 0.0:
            return None
        from physics_models.yang_mills import clover_field_strengths

        return clover_field_strengths(u)

    def local(self, u: jax.Array, psi: jax.Array, f: jax.Array | None = None) -> jax.Array:
        """``(m + d + C) psi``; ``f``: the field strengths (of the same sites as ``psi``)."""
        out = self.diagonal * psi
        if self.csw == 0.0:
            return out
        f = self.field_strengths(u) if f is None else f
        for p, sigma in enumerate(self._sigma_planes()):
            out = out + self.csw * _spin(sigma, colour(f[p], psi))
        return out

    def site_matrices(self, f: jax.Array) -> jax.Array:
        """``m + d + C(x)`` as dense ``(S N, S N)`` matrices (spin-major) at the sites of ``f``."""
        n = f.shape[-1]
        eye = jnp.eye(self.spins * n, dtype=f.dtype)
        out = self.diagonal * eye
        for p, sigma in enumerate(self._sigma_planes()):
            block = jnp.asarray(sigma, f.dtype)[:, None, :, None] * f[p][..., None, :, None, :]
            out = out + self.csw * block.reshape(*f.shape[1:-2], self.spins * n, self.spins * n)
        return out


def dense(op: Wilson, u: jax.Array) -> jax.Array:
    """``D`` as a dense ``(S N V, S N V)`` matrix (tiny lattices)."""
    n = u.shape[-1]
    size = int(np.prod(op.shape)) * op.spins * n
    ctype = jnp.result_type(u.dtype, jnp.complex64)
    basis = jnp.eye(size, dtype=ctype).reshape(size, *op.shape, op.spins, n)
    return jax.vmap(lambda e: op.apply(u, e).reshape(size))(basis).T


# -- even-odd layout -------------------------------------------------------------------------
def rest_parity(shape: tuple[int, ...], extra: int = 2) -> np.ndarray:
    """``(x1 + ... + x_{d-1}) mod 2``, shaped ``(1, L1, ..., L_{d-1}, 1 * extra)`` to broadcast
    against a packed field with ``extra`` trailing axes."""
    grids = np.meshgrid(*[np.arange(n) for n in shape[1:]], indexing="ij")
    parity = sum(grids, np.zeros(shape[1:], int)) % 2
    return parity.reshape((1, *shape[1:]) + (1,) * extra)


def pack(field: jax.Array, shape: tuple[int, ...], parity: int) -> jax.Array:
    """The sites of ``parity`` (0 even, 1 odd) of a field ``(*shape, a, b)``: ``(L0/2, L1, ..., a, b)``."""
    pairs = field.reshape(shape[0] // 2, 2, *field.shape[1:])
    first = (rest_parity(shape, field.ndim - len(shape)) == 0) == (parity == 0)
    return jnp.where(first, pairs[:, 0], pairs[:, 1])


def unpack(even: jax.Array, odd: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The full field from its even and odd packed parts (the inverse of :func:`pack`)."""
    zero = rest_parity(shape, even.ndim - len(shape)) == 0
    pairs = jnp.stack([jnp.where(zero, even, odd), jnp.where(zero, odd, even)], axis=1)
    return pairs.reshape(shape[0], *even.shape[1:])


def neighbour(source: jax.Array, shape: tuple[int, ...], target: int, mu: int, step: int) -> jax.Array:
    """At each site of parity ``target`` (packed), the packed ``source`` field (the other
    parity) at the site ``x + step * mu``, ``step = +-1`` (periodic)."""
    if mu != 0:
        return shift(source, mu, step)
    parity = rest_parity(shape, source.ndim - len(shape))
    offset = parity if target == 0 else 1 - parity  # x0 = 2 h + offset at the target
    if step == 1:
        return jnp.where(offset == 1, shift(source, 0, 1), source)
    return jnp.where(offset == 0, shift(source, 0, -1), source)


def hop_packed(op: Wilson, u_target: jax.Array, u_source: jax.Array, psi: jax.Array, target: int) -> jax.Array:
    """The hopping term from the packed field ``psi`` on the other parity to the sites of
    parity ``target`` (``H_oe`` for ``target = 1``, ``H_eo`` for ``0``); ``u_target``,
    ``u_source``: the links packed on the target and source sites."""
    forward_sign, backward_sign = time_signs(op.shape, psi.real.dtype)
    identity = np.eye(op.spins)
    out = jnp.zeros_like(psi)
    for mu in range(op.d):
        forward = colour(u_target[mu], neighbour(psi, op.shape, target, mu, 1))
        backward = neighbour(colour_dagger(u_source[mu], psi), op.shape, target, mu, -1)
        if mu == op.d - 1:
            forward, backward = forward * forward_sign, backward * backward_sign
        out = out + _spin(identity - op._gamma[mu], forward) + _spin(identity + op._gamma[mu], backward)
    return -0.5 * out


# -- small dense algebra, written out (no LAPACK call: see fermions.log_abs_det) --------------
def invert(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(a^{-1}, log|det a|)`` of a batch of square matrices ``(..., n, n)`` by Gauss-Jordan
    elimination with partial pivoting, differentiable by reverse mode."""
    n = a.shape[-1]
    rows = jnp.arange(n)
    augmented = jnp.concatenate([a, jnp.broadcast_to(jnp.eye(n, dtype=a.dtype), a.shape)], axis=-1)

    def eliminate(k, carry):
        m, total = carry
        size = jnp.where(rows >= k, jnp.abs(m[..., :, k]), -1.0)
        p = jnp.argmax(size, axis=-1)
        row_k = jnp.take_along_axis(m, p[..., None, None], axis=-2)[..., 0, :]
        row_p = m[..., k, :]
        m = jnp.where((rows == p[..., None])[..., None], row_p[..., None, :], m)
        pivot = row_k[..., k]
        row_k = row_k / pivot[..., None]
        m = m - m[..., :, k][..., :, None] * row_k[..., None, :]
        m = jnp.where((rows == k)[:, None], row_k[..., None, :], m)
        return m, total + jnp.log(jnp.abs(pivot))

    m, total = jax.lax.fori_loop(0, n, eliminate, (augmented, jnp.zeros(a.shape[:-2], jnp.abs(a).dtype)))
    return m[..., n:], total


def _site_apply(matrices: jax.Array, psi: jax.Array) -> jax.Array:
    """``M(x) psi(x)`` with ``M`` ``(..., S N, S N)`` spin-major and ``psi`` ``(..., S, N)``."""
    flat = psi.reshape(*psi.shape[:-2], -1)
    return jnp.sum(matrices * flat[..., None, :], axis=-1).reshape(psi.shape)


# -- the operator the solver sees ----------------------------------------------------------------
def prepare(op: Wilson, u: jax.Array) -> dict:
    """What every application of the solve's operator at links ``u`` reuses: the links (packed
    by parity with even-odd), the clover field strengths and, with both, ``A_ee^{-1}`` and
    ``log|det A_ee|``."""
    f = op.field_strengths(u)
    if not op.even_odd:
        return {"u": u, "f": f}
    parts = [jnp.stack([pack(u[mu], op.shape, p) for mu in range(op.d)]) for p in (0, 1)]
    prep = {"u_even": parts[0], "u_odd": parts[1]}
    if f is not None:
        f_even = jnp.stack([pack(x, op.shape, 0) for x in f])
        prep["f_odd"] = jnp.stack([pack(x, op.shape, 1) for x in f])
        prep["a_even_inverse"], prep["log_det_even"] = invert(op.site_matrices(f_even))
    return prep


def solve_shape(op: Wilson, n: int) -> tuple[int, ...]:
    """The shape of a field in the solve's space: full, or the odd sites with even-odd."""
    lattice = ((op.shape[0] // 2,) + op.shape[1:]) if op.even_odd else op.shape
    return (*lattice, op.spins, n)


def _a_even_inverse(op: Wilson, prep: dict, psi: jax.Array) -> jax.Array:
    if "a_even_inverse" in prep:
        return _site_apply(prep["a_even_inverse"], psi)
    return psi / op.diagonal


def matvec(op: Wilson, prep: dict, psi: jax.Array) -> jax.Array:
    """``D psi`` (full) or ``D_hat psi = A_oo psi - H_oe A_ee^{-1} H_eo psi`` (odd sites)."""
    if not op.even_odd:
        return op.local(prep["u"], psi, prep["f"]) + op.hop(prep["u"], psi)
    u_even, u_odd = prep["u_even"], prep["u_odd"]
    to_even = _a_even_inverse(op, prep, hop_packed(op, u_even, u_odd, psi, 0))
    return op.local(None, psi, prep.get("f_odd")) - hop_packed(op, u_odd, u_even, to_even, 1)


def matvec_dagger(op: Wilson, prep: dict, psi: jax.Array) -> jax.Array:
    return op.gamma5(matvec(op, prep, op.gamma5(psi)))


def log_det_local(op: Wilson, prep: dict) -> jax.Array:
    """``log|det A_ee|`` (the even-odd determinant identity's factor that depends on the links:
    zero without a clover term)."""
    if "log_det_even" in prep:
        return jnp.sum(prep["log_det_even"])
    return jnp.zeros((), jnp.float32)


# -- the free field ---------------------------------------------------------------------------------
def free_propagator(shape: tuple[int, ...], mass: float) -> np.ndarray:
    """The free Wilson propagator ``S(x) = D^{-1}(x, 0)`` (all links 1, one colour), in numpy
    from momentum space: ``S(x) = (1/V) sum_p e^{i p x} [m + sum_mu (1 - cos p_mu)
    + i sum_mu gamma_mu sin p_mu]^{-1}``, ``p_mu = 2 pi n / L_mu`` in space and
    ``2 pi (n + 1/2) / T`` in time (antiperiodic). Shape ``(*shape, S, S)``."""
    d = len(shape)
    gamma, _ = gammas(d)
    momenta = [2 * np.pi * (np.arange(n) + (0.5 if mu == d - 1 else 0.0)) / n for mu, n in enumerate(shape)]
    grids = np.meshgrid(*momenta, indexing="ij")
    spins = gamma.shape[1]
    matrix = (mass + sum(1 - np.cos(p) for p in grids))[..., None, None] * np.eye(spins)
    matrix = matrix + 1j * sum(np.sin(p)[..., None, None] * gamma[mu] for mu, p in enumerate(grids))
    inverse = np.linalg.inv(matrix)
    positions = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    phase = np.exp(1j * sum(np.multiply.outer(x, p) for x, p in zip(positions, grids)))  # (*x, *p)
    volume = int(np.prod(shape))
    flat = phase.reshape(volume, volume) @ inverse.reshape(volume, spins * spins)
    return (flat / volume).reshape(*shape, spins, spins)
