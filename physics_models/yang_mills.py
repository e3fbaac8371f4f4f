"""Pure lattice gauge theory (Yang-Mills) for U(1) and SU(N) on a periodic hypercubic lattice.

Links ``U[mu][x]`` (the parallel transporter from ``x`` to ``x + mu``) are one complex array
of shape ``(d, *shape, N, N)``; lattice axis ``mu`` is array axis ``mu`` of ``U[mu]``. Every
function here is a pure, dtype-generic function of that array (complex64 or complex128).
Closed loops are built with ``jnp.roll`` and batched matrix products over all directions or
planes at once (one product per loop segment, not one per plane: few, large operations for
the accelerator and for the compiler), and ``Re tr(A B^dag)`` is the elementwise sum
``sum_ij Re(A_ij conj(B_ij))``, so that no loop's last product is formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from hmc import lattice as _lattice
from hmc.groups import matmul as mm
from hmc.potential import Potential
from physics_models import exact_gauge as _exact_gauge

if TYPE_CHECKING:
    from hmc.groups import Group

# c1 of the rectangle term, S = beta sum [c0 (plaquettes) + c1 (1x2 rectangles)], c0 = 1 - 8 c1
IMPROVEMENT = {
    "wilson": 0.0,
    "symanzik": -1.0 / 12.0,  # tree-level Symanzik (Lüscher & Weisz, Commun. Math. Phys. 97 (1985) 59)
    "iwasaki": -0.331,        # Iwasaki, UTHEP-118 (1983)
    "dbw2": -1.4069,          # Takaishi, PRD 54 (1996) 1050; de Forcrand et al. (RBC's value; Grid -1.4067)
}


# -- loops ----------------------------------------------------------------------------------
def dagger(u: jax.Array) -> jax.Array:
    """Conjugate transpose of the trailing ``(N, N)`` matrices."""
    return jnp.conj(jnp.swapaxes(u, -1, -2))


def shift(field: jax.Array, axis: int, steps: int = 1) -> jax.Array:
    """The field at ``x + steps * axis`` (periodic), for a field of shape ``(*shape, ...)``:
    :func:`hmc.lattice.shift`, a halo exchange where a lattice mesh splits ``axis``."""
    return _lattice.shift(field, axis, steps)


def shift_each(stack: jax.Array, steps: int = 1) -> jax.Array:
    """``[mu] -> stack[mu](x + steps * mu)``: each entry of a ``(d, *shape, ...)`` stack moved along
    its own axis."""
    return jnp.stack([shift(stack[mu], mu, steps) for mu in range(stack.shape[0])])


def shift_all(stack: jax.Array, steps: int = 1) -> jax.Array:
    """``[mu, nu] -> stack[nu](x + steps * mu)``, shape ``(d, d, *shape, ...)``, from a
    ``(d, *shape, ...)`` stack: every entry moved along every axis."""
    return jnp.stack([shift(stack, mu + 1, steps) for mu in range(stack.shape[0])])


def re_trace_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Re tr(a b^dag)`` over the trailing matrix axes, without forming ``a b^dag``."""
    return jnp.sum(a.real * b.real + a.imag * b.imag, axis=(-2, -1))


def planes(d: int) -> list[tuple[int, int]]:
    """The ``d (d - 1) / 2`` planes ``(mu, nu)``, ``mu < nu``, in lexicographic order."""
    return [(mu, nu) for mu in range(d) for nu in range(mu + 1, d)]


def ordered_pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, nu)`` index arrays of the ``d (d - 1)`` ordered pairs ``mu != nu`` (mu-major)."""
    mu, nu = np.nonzero(~np.eye(d, dtype=bool))
    return mu, nu


def _loop_traces(first: jax.Array, second: jax.Array, r: int, t: int) -> jax.Array:
    """``Re tr W`` of the ``r x t`` loops for every ordered pair, shape ``(d (d - 1), *shape)``.

    ``first[mu]``: the lines of ``r`` links along ``mu``; ``second[nu]``: of ``t`` links along ``nu``.
    ``W = first_mu(x) second_nu(x + r mu) [second_nu(x) first_mu(x + t nu)]^dag``.
    """
    mu, nu = ordered_pairs(first.shape[0])
    upper = mm(first[mu], shift_all(second, r)[mu, nu])
    lower = mm(second[nu], shift_all(first, t)[nu, mu])
    return re_trace_product(upper, lower)


def plaquettes(u: jax.Array) -> jax.Array:
    """``(1/N) Re tr U_p`` of every plaquette, shape ``(d (d - 1) / 2, *shape)`` (planes as :func:`planes`).

    ``U_p(x) = U_mu(x) U_nu(x + mu) U_mu(x + nu)^dag U_nu(x)^dag``: the path ``x -> x + mu -> x + mu + nu``
    against the path ``x -> x + nu -> x + mu + nu``.
    """
    d, n = u.shape[0], u.shape[-1]
    mu, nu = np.triu_indices(d, 1)
    corners = shift_all(u)
    upper = mm(u[mu], corners[mu, nu])
    lower = mm(u[nu], corners[nu, mu])
    return re_trace_product(upper, lower) / n


def rectangles(u: jax.Array) -> jax.Array:
    """``(1/N) Re tr`` of every 1x2 rectangle, shape ``(d (d - 1), *shape)``.

    One entry per ordered pair ``(mu, nu)``, ``mu != nu`` (:func:`ordered_pairs`): the rectangle
    two links long along ``mu`` and one along ``nu`` with corner ``x``; both orientations of
    every plane.
    """
    n = u.shape[-1]
    double = mm(u, shift_each(u))  # x -> x + 2 mu
    mu, nu = ordered_pairs(u.shape[0])
    upper = mm(double[mu], shift_all(u, 2)[mu, nu])
    lower = mm(u[nu], shift_all(double)[nu, mu])
    return re_trace_product(upper, lower) / n


def gauge_action(u: jax.Array, beta: float, c1: float = 0.0) -> jax.Array:
    """``S = beta [c0 sum_p (1 - (1/N) Re tr U_p) + c1 sum_rect (1 - (1/N) Re tr U_rect)]``, c0 = 1 - 8 c1.

    ``sum_rect`` runs over all 1x2 rectangles (:func:`rectangles`: ``d (d - 1) V`` of them).
    ``c1 = 0`` is Wilson's action; see ``IMPROVEMENT`` for the named improved actions.
    """
    action = (1.0 - 8.0 * c1) * jnp.sum(1.0 - plaquettes(u))
    if c1 != 0.0:
        action = action + c1 * jnp.sum(1.0 - rectangles(u))
    return beta * action


def polyakov_loops(u: jax.Array) -> jax.Array:
    """``(1/N) tr prod_t U_{d-1}(x, t)`` (complex) at every spatial site: shape ``shape[:-1]``.

    The ordered product of the links along the last axis, from ``t = 0`` to ``t = L - 1``.
    """
    d, n = u.shape[0], u.shape[-1]
    links = jnp.moveaxis(u[d - 1], d - 1, 0)
    line = links[0]
    for t in range(1, links.shape[0]):
        line = mm(line, links[t])
    return jnp.trace(line, axis1=-2, axis2=-1) / n


def wilson_loops(u: jax.Array, extent: tuple[int, int]) -> jax.Array:
    """``<(1/N) Re tr W(r, t)>``, shape ``extent = (R, T)``, for ``r = 1..R``, ``t = 1..T``.

    ``W(r, t)`` is the ``r x t`` rectangle with ``r`` links along ``mu`` and ``t`` along ``nu``;
    the mean runs over every site and every ordered pair ``mu != nu``. Each plane thus enters
    with both assignments (``r`` along either axis), so the estimate is exactly symmetric,
    ``W[r, t] = W[t, r]`` configuration by configuration; ``W[0, 0]`` is the plaquette and
    ``W[0, 1]`` the rectangle.
    """
    n = u.shape[-1]
    lines = [u]  # lines[k][mu](x): the k + 1 links from x along mu
    for k in range(1, max(extent)):
        lines.append(mm(lines[-1], shift_each(u, k)))
    rows = [[jnp.mean(_loop_traces(lines[r], lines[t], r + 1, t + 1)) / n for t in range(extent[1])]
            for r in range(extent[0])]
    return jnp.stack([jnp.stack(row) for row in rows])


def clover_field_strengths(u: jax.Array) -> jax.Array:
    """``F_mu_nu(x) = (1/8) [Q(x) - Q(x)^dag]`` for every plane (:func:`planes`), shape
    ``(d (d - 1) / 2, *shape, N, N)``, anti-Hermitian, made traceless for SU(N) (for U(1),
    ``N = 1``, it is kept whole, ``(i/4) sum_leaves sin(phase)``).

    ``Q`` is the clover: the four plaquettes of the ``mu``-``nu`` plane that touch ``x``, each a
    loop from ``x`` in the same orientation. With ``U_p(y) = a b c d`` (the four links of the
    plaquette at ``y``), the leaves at ``x`` are the cyclic products ``abcd`` at ``y = x``,
    ``bcda`` at ``x - mu``, ``cdab`` at ``x - mu - nu`` and ``dabc`` at ``x - nu``.
    """
    d, n = u.shape[0], u.shape[-1]
    mu, nu = np.triu_indices(d, 1)
    corners = shift_all(u)
    a, b = u[mu], corners[mu, nu]
    c, e = dagger(corners[nu, mu]), dagger(u[nu])
    ab, cd, bc, ea = mm(a, b), mm(c, e), mm(b, c), mm(e, a)
    back_mu = lambda f: jnp.stack([jnp.roll(f[p], 1, axis=m) for p, m in enumerate(mu)])  # noqa: E731
    back_nu = lambda f: jnp.stack([jnp.roll(f[p], 1, axis=m) for p, m in enumerate(nu)])  # noqa: E731
    clover = mm(ab, cd) + back_mu(mm(bc, ea)) + back_nu(back_mu(mm(cd, ab))) + back_nu(mm(ea, bc))
    f = (clover - dagger(clover)) / 8.0
    if n == 1:  # U(1): the field strength is the phase itself, not its traceless part
        return f
    trace = jnp.trace(f, axis1=-2, axis2=-1)[..., None, None]
    return f - trace * jnp.eye(n, dtype=f.dtype) / n


def _trace_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Re tr(a b)`` without forming ``a b`` (real for anti-Hermitian ``a``, ``b``)."""
    b_t = jnp.swapaxes(b, -1, -2)
    return jnp.sum(a.real * b_t.real - a.imag * b_t.imag, axis=(-2, -1))


def topological_charge_density(u: jax.Array) -> jax.Array:
    """``q(x) = -(1/(32 pi^2)) eps_{mu nu rho sigma} tr(F_mu_nu F_rho_sigma)`` in d = 4, shape ``shape``.

    ``F`` is the anti-Hermitian clover field strength (:func:`clover_field_strengths`); the sign
    is Lüscher's (JHEP 1008 (2010) 071), so that ``q`` is real and the continuum limit is
    ``(g^2/(32 pi^2)) eps tr(G G)`` for the Hermitian field strength ``G = i F / g``. The 24
    terms of the epsilon sum reduce to ``8 [tr F01 F23 - tr F02 F13 + tr F03 F12]``. On a
    constant abelian flux ``theta_mu_nu = 2 pi m_mu_nu / (L_mu L_nu)`` carried by charges ``q_k``
    (``U = diag(exp(i q_k A))``) it is exactly
    ``(V/(4 pi^2)) sum_k [s_k01 s_k23 - s_k02 s_k13 + s_k03 s_k12]``, ``s_kmn = sin(q_k theta_mn)``,
    which tends to ``(sum_k q_k^2) m01 m23`` for large ``L`` (``m01 m23`` for U(1), ``2 m01 m23``
    for ``diag(e^{i theta}, e^{-i theta})`` in SU(2)).
    """
    if u.shape[0] != 4:
        raise ValueError(f"the topological charge needs d = 4, got links of shape {u.shape}")
    f = clover_field_strengths(u)  # planes 01, 02, 03, 12, 13, 23
    sign = jnp.asarray([1.0, -1.0, 1.0], f.real.dtype).reshape((3,) + (1,) * (f.ndim - 3))
    density = jnp.sum(sign * _trace_product(f[:3], f[::-1][:3]), axis=0)
    return -density / (4.0 * np.pi**2)


def topological_charge(u: jax.Array) -> jax.Array:
    """``Q = sum_x q(x)`` (:func:`topological_charge_density`); not an integer without smoothing."""
    return jnp.sum(topological_charge_density(u))


# -- the model ------------------------------------------------------------------------------
def rectangle_coefficient(action: str = "wilson", c1: float | None = None) -> float:
    """The rectangle coefficient ``c1`` of a named action, or the explicit ``c1``.

    An explicit ``c1`` wins; ``action`` must then be ``"wilson"`` (the default, read as "not
    named") or the named improved action whose ``c1`` it is (a different value is a ValueError).
    """
    if action not in IMPROVEMENT:
        raise ValueError(f"yang_mills: action must be one of {sorted(IMPROVEMENT)}, got {action!r}")
    if c1 is None:
        return IMPROVEMENT[action]
    c1 = float(c1)
    if not np.isfinite(c1):
        raise ValueError(f"yang_mills: c1 must be finite, got {c1!r}")
    if action != "wilson" and abs(c1 - IMPROVEMENT[action]) > 1e-12:
        raise ValueError(f"yang_mills: c1={c1} contradicts action={action!r} (c1={IMPROVEMENT[action]}); "
                         "pass one of them")
    return c1


def _loop_extent(loops: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int]:
    """``loops = (R, T)`` clipped to ``min(shape) - 1`` (every loop fits in every plane without wrapping)."""
    if len(tuple(loops)) != 2 or any(int(v) != v or v < 1 for v in loops):
        raise ValueError(f"yang_mills: loops must be two integers >= 1 (R, T), got {loops!r}")
    largest = min(shape) - 1
    return min(int(loops[0]), largest), min(int(loops[1]), largest)


def _check_parameters(shape: tuple[int, ...], beta: float, start: str) -> None:
    if len(shape) < 2 or any(n < 2 for n in shape):
        raise ValueError(f"yang_mills: shape needs d >= 2 axes, every extent >= 2, got {shape}")
    if not np.isfinite(beta) or not beta > 0:
        raise ValueError(f"yang_mills: beta must be finite and > 0, got {beta!r}")
    if start not in ("hot", "cold"):
        raise ValueError(f"yang_mills: start must be 'hot' or 'cold', got {start!r}")


def _observables(shape: tuple[int, ...], extent: tuple[int, int]) -> dict[str, Callable[[dict], jax.Array]]:
    observables = {
        "plaquette": lambda q: jnp.mean(plaquettes(q["U"])),
        "rectangle": lambda q: jnp.mean(rectangles(q["U"])),
        "polyakov_loop": lambda q: jnp.mean(polyakov_loops(q["U"]).real),
        "polyakov_loop_abs": lambda q: jnp.abs(jnp.mean(polyakov_loops(q["U"]))),
        "wilson_loops": lambda q: wilson_loops(q["U"], extent),
    }
    if len(shape) == 4:
        observables["topological_charge"] = lambda q: topological_charge(q["U"])
    return observables


def creutz_ratio(loops: np.ndarray, r: int = 2, t: int = 2) -> float:
    """``chi(r, t) = -ln[W(r, t) W(r-1, t-1) / (W(r, t-1) W(r-1, t))]`` from an ``(R, T)``
    array of Wilson loops (``loops[r - 1, t - 1] = W(r, t)``; ``W(0, .) = 1``): perimeter
    and corner terms cancel, the string tension remains. In 2D infinite volume it is
    ``-ln u`` exactly (pure area law)."""
    w = lambda a, b: 1.0 if a == 0 or b == 0 else float(loops[a - 1, b - 1])  # noqa: E731
    return float(-np.log(w(r, t) * w(r - 1, t - 1) / (w(r, t - 1) * w(r - 1, t))))


def exact_values(group: str, shape: tuple[int, ...], beta: float, c1: float, extent: tuple[int, int]) -> dict:
    """The exactly known expectations of :func:`yang_mills` observables.

    Every group and dimension: ``polyakov_loop = 0`` (centre symmetry on a finite torus: the
    links of one time slice times a centre element leave every term invariant and rotate the
    loop); in d = 4 ``topological_charge = 0`` (parity). In d = 2 with the Wilson action
    (``c1 = 0``): ``plaquette`` and ``wilson_loops`` on the torus of ``V = L1 L2`` plaquettes
    (:mod:`physics_models.exact_gauge`; every loop is contractible since ``R, T < min(shape)``).
    """
    values = {"polyakov_loop": 0.0}
    if len(shape) == 4:
        values["topological_charge"] = 0.0
    if len(shape) == 2 and c1 == 0.0:
        volume = shape[0] * shape[1]
        values["plaquette"] = _exact_gauge.plaquette_2d(group, beta, volume)
        values["wilson_loops"] = np.array(
            [[_exact_gauge.wilson_loop_2d(group, beta, r * t, volume) for t in range(1, extent[1] + 1)]
             for r in range(1, extent[0] + 1)])
    return values


def gauge_symmetry(group: Group, shape: tuple[int, ...]) -> Callable[[jax.Array, dict], dict]:
    """``transform(key, q) -> q'``: a Haar-random gauge transformation ``g(x)`` at every site,
    ``U'_mu(x) = g(x) U_mu(x) g(x + mu)^dag`` (:func:`hmc.groups.gauge_transform`)."""
    from hmc import groups as _groups

    def transform(key: jax.Array, q: dict) -> dict:
        links = q["U"]
        g = group.random(key, shape, links.dtype)
        return {**q, "U": _groups.gauge_transform(links, g)}

    return transform


def yang_mills(group: str | Group = "SU(3)", shape: Sequence[int] = (4, 4, 4, 4), beta: float = 6.0,
               action: str = "wilson", c1: float | None = None, loops: Sequence[int] = (3, 3),
               start: str = "hot") -> Potential:
    """Pure gauge theory of ``group`` (``"U(1)"``, ``"SU(2)"``, ``"SU(3)"``, ``"SU(N)"``), periodic lattice.

    State ``{"U": complex64 array of shape (d, *shape, N, N)}``, ``d = len(shape) >= 2``:
    ``U[mu][x]`` is the link from ``x`` to ``x + mu``. Action (term ``gauge``)
    ``S = beta sum_x [c0 sum_p (1 - (1/N) Re tr U_p) + c1 sum_rect (1 - (1/N) Re tr U_rect)]``,
    ``c0 = 1 - 8 c1``, the rectangles being all 1x2 loops of both orientations in every plane
    (:func:`gauge_action`). ``action``: ``"wilson"`` (``c1 = 0``), ``"symanzik"`` (tree level,
    ``-1/12``), ``"iwasaki"`` (``-0.331``) or ``"dbw2"`` (``-1.4069``); an explicit ``c1``
    overrides it (:func:`rectangle_coefficient`). ``yang_mills("U(1)", (L, L), beta)`` is the
    theory of :func:`physics_models.u1_gauge` (links ``exp(i theta)``).

    ``start``: ``"hot"`` (default), Haar-random links (``group.random``); ``"cold"``, unit links.

    Observables (real): ``plaquette`` ``<(1/N) Re tr U_p>`` over all sites and the
    ``d (d - 1)/2`` planes; ``rectangle``, the same over the ``d (d - 1)`` rectangle
    orientations; ``polyakov_loop``, ``Re (1/N) tr`` of the ordered product of the links along
    the last axis, averaged over the other axes, and ``polyakov_loop_abs``, the modulus of that
    (complex) spatial average; ``wilson_loops``, an ``(R, T)`` array of
    ``<(1/N) Re tr W(r, t)>`` (:func:`wilson_loops`; ``loops = (R, T)`` is clipped to
    ``min(shape) - 1`` so that no loop wraps the lattice); in d = 4 ``topological_charge``, the
    clover charge (:func:`topological_charge_density`, unsmoothed, so not an integer), with the
    derived ``topological_susceptibility`` ``<Q^2>/V``; with ``R, T >= 2`` the derived
    ``creutz_ratio`` ``chi(2, 2)`` of the mean Wilson loops (:func:`creutz_ratio`).

    Exact values (:func:`exact_values`): ``polyakov_loop = 0`` always (on a finite torus; in a
    deconfined phase a sampler rarely tunnels between centre sectors, so expect a large z there);
    ``topological_charge = 0`` in d = 4; in d = 2 with the Wilson action the torus
    ``plaquette`` and ``wilson_loops`` for every group (Migdal 1975; Rusakov 1990).

    ``groups={"U": group}`` tells the sampler to move the links on the group;
    ``symmetries={"gauge": ...}`` is a random gauge transformation (:func:`gauge_symmetry`).
    """
    from hmc import groups as _groups

    shape = tuple(int(n) for n in shape)
    beta = float(beta)
    _check_parameters(shape, beta, start)
    c1 = rectangle_coefficient(action, c1)
    extent = _loop_extent(loops, shape)
    grp = _groups.get(group)
    lattice = (len(shape), *shape)
    if start == "cold":
        init = lambda key: {"U": grp.identity(lattice, jnp.complex64)}  # noqa: E731
    else:
        init = lambda key: {"U": grp.random(key, lattice, jnp.complex64)}  # noqa: E731
    volume = int(np.prod(shape))
    derived = {}
    if len(shape) == 4:
        derived["topological_susceptibility"] = (
            lambda draws: float(np.mean(np.asarray(draws["topological_charge"], np.float64) ** 2) / volume))
    if extent[0] >= 2 and extent[1] >= 2:
        derived["creutz_ratio"] = lambda draws: creutz_ratio(np.mean(np.asarray(draws["wilson_loops"], np.float64),
                                                                     axis=0))
    exact = exact_values(grp.name, shape, beta, c1, extent)
    if "wilson_loops" in exact and "creutz_ratio" in derived:
        exact["creutz_ratio"] = creutz_ratio(exact["wilson_loops"])
    return Potential(
        terms={"gauge": lambda q: gauge_action(q["U"], beta, c1)},
        init=init,
        observables=_observables(shape, extent),
        derived=derived,
        exact=exact,
        name="yang_mills",
        groups={"U": grp},
        symmetries={"gauge": gauge_symmetry(grp, shape)},
        lattice_axes={"U": tuple(range(1, len(shape) + 1))},  # (mu, x, y, z, t, N, N): a lattice mesh splits x
    )
