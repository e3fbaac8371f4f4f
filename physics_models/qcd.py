"""Lattice QCD: the Yang-Mills gauge action of any group of :mod:`hmc.groups` in two or four
dimensions with ``n_f`` degenerate flavours of Wilson(-clover) fermions.

The Dirac operator, its conventions (gamma basis, boundary conditions, ``kappa``) and the
even-odd identity are in :mod:`physics_models.wilson`. Two flavours weigh a configuration by
``det(D^dag D) = |det D|^2``: by pseudofermions, ``int dphi exp(-phi^dag (M^dag M)^{-1} phi)``
with ``M = D`` or, with even-odd preconditioning, ``M = D_hat`` the Schur complement on the odd
sites (then ``det(D^dag D) = |det A_ee|^2 det(D_hat^dag D_hat)``, and the clover term's
``-2 log|det A_ee|`` is part of the fermion term); or by the dense determinant,
``-n_f log|det D|`` (tiny lattices). The machinery is the Schwinger model's
(:mod:`physics_models.fermions`): an exact heat bath ``phi = M^dag eta`` redrawn at every
trajectory start, one conjugate-gradient solve per force value and gradient (a custom VJP),
Hasenbusch's split, and the solve's health for the guard.

Auxiliary fields are stored as real arrays ``(2, *solve shape)`` (real and imaginary parts),
the solve shape being ``(*shape, S, N)`` or, with even-odd, the packed odd sites
``(L0/2, L1, ..., S, N)``. A gauge transformation ``g(x)`` acts on them as colour vectors,
``phi(x) -> g(x) phi(x)``: the symmetry preflight hands the transform the state with its
auxiliary fields, and the fermion action is invariant only when both move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hmc import groups as _groups
from hmc.guard.attribution import unhealthy_is_nan
from hmc.lattice import constrain
from hmc.potential import Potential
from physics_models import wilson as _w
from physics_models.fermions import check_fermion_settings, conjugate_gradient, inner, to_complex, to_real
from physics_models.yang_mills import _check_parameters, exact_values, gauge_action, plaquettes, rectangle_coefficient

FERMIONS = ("pseudofermion", "exact", "none")


# -- the solve and its force -------------------------------------------------------------------
def _real_operator(op: _w.Wilson, prep: dict, dtype) -> Callable[[jax.Array], jax.Array]:
    """``v -> M^dag M v`` on real-stored fields ``(2, *solve shape)``."""

    def apply(v: jax.Array) -> jax.Array:
        psi = to_complex(v)
        return to_real(_w.matvec_dagger(op, prep, _w.matvec(op, prep, psi))).astype(dtype)

    return apply


def normal_solve(op: _w.Wilson, u: jax.Array, b: jax.Array, tol: float, maxiter: int) -> tuple:
    """``(x, (iterations, residual))`` with ``M^dag M x = b`` (real-stored ``b``)."""
    return conjugate_gradient(_real_operator(op, _w.prepare(op, u), b.dtype), b, tol, maxiter)


def _inverse_form(op, u, chi, tol, maxiter):
    """``(chi . (M^dag M)^{-1} chi, iterations)`` at links ``u``: one CG solve gives the value
    and, with ``x`` its solution, the force ``dS = 2 x . dchi - x . d(M^dag M) x``."""
    return _inverse_form_forward(op, u, chi, tol, maxiter)[0]


def _inverse_form_forward(op, u, chi, tol, maxiter):
    x, (iterations, _) = normal_solve(op, u, chi, tol, maxiter)
    return (jnp.sum(chi * x), iterations), (u, x)


def _inverse_form_backward(op, tol, maxiter, residuals, cotangents):
    del tol, maxiter
    u, x = residuals
    _, pullback = jax.vjp(lambda links: _real_operator(op, _w.prepare(op, links), x.dtype)(x), u)
    (d_u,) = pullback(x)
    return -cotangents[0] * d_u, 2.0 * cotangents[0] * x


_inverse_form = jax.custom_vjp(_inverse_form, nondiff_argnums=(0, 3, 4))
_inverse_form.defvjp(_inverse_form_forward, _inverse_form_backward)


def pseudofermion_action(op: _w.Wilson, u: jax.Array, chi: jax.Array, tol: float, maxiter: int) -> jax.Array:
    """``chi^dag (M^dag M)^{-1} chi - 2 log|det A_ee|`` (the last part only with even-odd and a
    clover term); NaN with a NaN force when the solve stops at its cap."""
    value, iterations = _inverse_form(op, u, chi, tol, maxiter)
    value = unhealthy_is_nan(value, iterations < maxiter)
    if op.even_odd and op.csw != 0.0:
        value = value - 2.0 * _w.log_det_local(op, _w.prepare(op, u)).astype(value.dtype)
    return value


def solver_health(op: _w.Wilson, u: jax.Array, chi: jax.Array, tol: float, maxiter: int) -> dict:
    _, (iterations, residual) = normal_solve(op, u, chi, tol, maxiter)
    return {"ok": iterations < maxiter, "residual": residual, "iterations": iterations,
            "tolerance": jnp.asarray(tol), "max_iterations": jnp.asarray(maxiter)}


def _log_abs_det(op, u):
    """``log|det D|`` of the dense operator, with the force ``Re tr(D^{-1} dD)``."""
    return _log_abs_det_forward(op, u)[0]


def _log_abs_det_forward(op, u):
    inverse, value = _w.invert(_w.dense(op, u))
    return value, (u, inverse)


def _log_abs_det_backward(op, residuals, cotangent):
    u, inverse = residuals
    trace = lambda links: jnp.real(jnp.sum(inverse.T * _w.dense(op, links)))  # noqa: E731
    _, pullback = jax.vjp(trace, u)
    return (cotangent * pullback(jnp.ones((), inverse.real.dtype))[0],)


_log_abs_det = jax.custom_vjp(_log_abs_det, nondiff_argnums=(0,))
_log_abs_det.defvjp(_log_abs_det_forward, _log_abs_det_backward)


def log_abs_det(op: _w.Wilson, u: jax.Array) -> jax.Array:
    """``log|det D|`` by Gauss-Jordan elimination of the dense ``D`` (no LAPACK call), with its
    force by the inverse: ``d log|det D| = Re tr(D^{-1} dD)``."""
    return _log_abs_det(op, u)


# -- heat baths and terms ---------------------------------------------------------------------------
def gaussian_field(key: jax.Array, op: _w.Wilson, u: jax.Array) -> jax.Array:
    """``eta``: complex Gaussian, ``<|eta_i|^2> = 1``, in the solve's space."""
    shape = _w.solve_shape(op, u.shape[-1])
    real = jnp.result_type(u.real.dtype)
    return to_complex(jax.random.normal(key, (2, *shape), real) * np.sqrt(0.5).astype(real))


def heat_bath(op: _w.Wilson) -> Callable[[jax.Array, dict], jax.Array]:
    """``refresh(key, q)``: ``phi = M^dag eta`` (real-stored), an exact draw from
    ``exp(-phi^dag (M^dag M)^{-1} phi)``."""

    def refresh(key: jax.Array, q: dict) -> jax.Array:
        u = q["U"]
        eta = gaussian_field(key, op, u)
        return to_real(_w.matvec_dagger(op, _w.prepare(op, u), eta)).astype(u.real.dtype)

    return refresh


def pseudofermion_terms(light: _w.Wilson, heavy: _w.Wilson | None, tol: float, maxiter: int) -> tuple:
    """``(terms, auxiliary, health, operators)`` of two flavours, optionally Hasenbusch-split
    (as :func:`physics_models.fermions.pseudofermion_terms`): ``fermion``, or
    ``fermion_heavy`` (``phi_h^dag (M_h^dag M_h)^{-1} phi_h``, with the clover's local
    determinant at the light mass) and ``fermion_ratio`` (``chi^dag (M^dag M)^{-1} chi``,
    ``chi = M_h^dag phi_r``). ``operators``: term -> the operators it inverts."""
    if heavy is None:
        terms = {"fermion": lambda q: pseudofermion_action(light, q["U"], q["phi"], tol, maxiter)}
        health = {"fermion": lambda q: solver_health(light, q["U"], q["phi"], tol, maxiter)}
        return terms, {"phi": heat_bath(light)}, health, {"fermion": (light,)}
    local = light.even_odd and light.csw != 0.0

    def ratio_source(q):
        prep = _w.prepare(heavy, q["U"])
        return to_real(_w.matvec_dagger(heavy, prep, to_complex(q["phi_ratio"]))).astype(q["U"].real.dtype)

    def heavy_term(q):
        value, iterations = _inverse_form(heavy, q["U"], q["phi_heavy"], tol, maxiter)
        value = unhealthy_is_nan(value, iterations < maxiter)
        if local:
            value = value - 2.0 * _w.log_det_local(light, _w.prepare(light, q["U"])).astype(value.dtype)
        return value

    def ratio_term(q):
        value, iterations = _inverse_form(light, q["U"], ratio_source(q), tol, maxiter)
        return unhealthy_is_nan(value, iterations < maxiter)

    def ratio_heat_bath(key, q):  # phi_r = M_h (M_h^dag M_h)^{-1} M^dag eta'
        u = q["U"]
        y, (iterations, _) = normal_solve(heavy, u, heat_bath(light)(key, q), tol, maxiter)
        phi = to_real(_w.matvec(heavy, _w.prepare(heavy, u), to_complex(y))).astype(u.real.dtype)
        return unhealthy_is_nan(phi, iterations < maxiter)

    def ratio_health(q):
        report = solver_health(light, q["U"], ratio_source(q), tol, maxiter)
        _, (bath_iterations, _) = normal_solve(heavy, q["U"], heat_bath(light)(jax.random.key(0), q), tol, maxiter)
        ok = report["ok"] & jnp.all(jnp.isfinite(q["phi_ratio"])) & (bath_iterations < maxiter)
        return {**report, "ok": ok, "heat_bath_iterations": bath_iterations}

    terms = {"fermion_heavy": heavy_term, "fermion_ratio": ratio_term}
    health = {"fermion_heavy": lambda q: solver_health(heavy, q["U"], q["phi_heavy"], tol, maxiter),
              "fermion_ratio": ratio_health}
    auxiliary = {"phi_heavy": heat_bath(heavy), "phi_ratio": ratio_heat_bath}
    return terms, auxiliary, health, {"fermion_heavy": (heavy,), "fermion_ratio": (light, heavy)}


# -- observables -------------------------------------------------------------------------------------
def solve(op: _w.Wilson, u: jax.Array, b: jax.Array, tol: float, maxiter: int) -> tuple[jax.Array, jax.Array]:
    """``(D^{-1} b, iterations)`` for a full-lattice complex ``b`` ``(*shape, S, N)``; with
    even-odd, ``x_o = D_hat^{-1} (b_o - H_oe A_ee^{-1} b_e)``, ``x_e = A_ee^{-1} (b_e - H_eo x_o)``."""
    prep = _w.prepare(op, u)
    real = u.real.dtype

    def inverse(y):  # M^{-1} y = (M^dag M)^{-1} M^dag y
        rhs = to_real(_w.matvec_dagger(op, prep, y)).astype(real)
        x, (iterations, _) = conjugate_gradient(_real_operator(op, prep, real), rhs, tol, maxiter)
        return to_complex(x), iterations

    if not op.even_odd:
        return inverse(b)
    shape = op.shape
    b_even, b_odd = _w.pack(b, shape, 0), _w.pack(b, shape, 1)
    to_odd = _w.hop_packed(op, prep["u_odd"], prep["u_even"], _w._a_even_inverse(op, prep, b_even), 1)
    x_odd, iterations = inverse(b_odd - to_odd)
    x_even = _w._a_even_inverse(op, prep, b_even - _w.hop_packed(op, prep["u_even"], prep["u_odd"], x_odd, 0))
    return _w.unpack(x_even, x_odd, shape), iterations


def point_propagator(op: _w.Wilson, u: jax.Array, tol: float, maxiter: int) -> jax.Array:
    """``S(x) = D^{-1}(x, 0)`` from a point source at the origin: ``(S, N, *shape, S, N)``
    complex, source spin and colour first, one solve per source component."""
    spins, n = op.spins, u.shape[-1]
    ctype = jnp.result_type(u.dtype, jnp.complex64)

    def column(index):
        source = jnp.zeros((spins * n,), ctype).at[index].set(1.0).reshape(spins, n)
        b = constrain(jnp.zeros((*op.shape, spins, n), ctype).at[(0,) * op.d].set(source), op.d - 1)
        return solve(op, u, b, tol, maxiter)[0]

    return jax.vmap(column)(jnp.arange(spins * n)).reshape(spins, n, *op.shape, spins, n)


def correlators(op: _w.Wilson, propagator: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(C_PP(t), C_AP(t))`` at zero momentum, ``t`` along the last (time) axis:
    ``C_PP = sum_x tr[S S^dag]`` (the pion) and ``C_AP = sum_x Re tr[gamma_t S S^dag]``.
    By gamma_5-Hermiticity, ``S(0, x) = gamma_5 S(x, 0)^dag gamma_5``, the Wick contractions
    of ``<P(x) P^dag(0)>`` and ``<A_t(x) P^dag(0)>`` are ``-C_PP`` and ``+C_AP``."""
    axes = tuple(a for a in range(propagator.ndim) if a != 1 + op.d)
    pp = jnp.sum(jnp.abs(propagator) ** 2, axis=axes)
    rotated = _w._spin(op._gamma[op.d - 1], propagator)
    ap = jnp.sum(jnp.real(jnp.conj(propagator) * rotated), axis=axes)
    return pp, ap


def pcac_mass(pp: np.ndarray, ap: np.ndarray) -> np.ndarray:
    """``m(t) = d_t f_A(t) / (2 f_P(t))`` with ``f_A = C_AP``, ``f_P = -C_PP`` and the
    symmetric difference, for ``t = 1 .. T - 2``."""
    pp, ap = np.asarray(pp, np.float64), np.asarray(ap, np.float64)
    return -(ap[2:] - ap[:-2]) / (4.0 * pp[1:-1])


def condensate_estimate(op: _w.Wilson, u: jax.Array, noise: np.ndarray, tol: float, maxiter: int) -> tuple:
    """``((1/V) Re tr D^{-1}, mean CG iterations)`` by ``eta^dag D^{-1} eta`` over fixed Z2 noise
    vectors ``(n_noise, *shape, S, N)``: unbiased over configurations (per flavour)."""
    ctype = jnp.result_type(u.dtype, jnp.complex64)

    def one(eta):
        eta = constrain(jnp.asarray(eta).astype(ctype), op.d - 1)  # a constant: split it as the links (time)
        x, iterations = solve(op, u, eta, tol, maxiter)
        return jnp.real(inner(eta, x)), iterations

    values, iterations = jax.vmap(one)(jnp.asarray(noise))
    return jnp.mean(values) / np.prod(op.shape), jnp.mean(iterations.astype(u.real.dtype))


def condensate_noise(shape: tuple[int, ...], spins: int, n: int, n_noise: int) -> np.ndarray:
    """The fixed Z2 noise vectors of the ``condensate`` observable, ``(n_noise, *shape, S, N)``."""
    return np.random.default_rng(20261206).choice([-1.0, 1.0], size=(n_noise, *shape, spins, n))


MEASURE = ("condensate", "pion")


def _observables(op: _w.Wilson | None, n_noise: int, tol: float, maxiter: int, measure: Sequence[str]) -> dict:
    observables = {"plaquette": lambda q: jnp.mean(plaquettes(q["U"]))}
    if op is None:
        return observables

    def condensate(q):
        noise = condensate_noise(op.shape, op.spins, q["U"].shape[-1], n_noise)
        return condensate_estimate(op, q["U"], noise, tol, maxiter)

    if "condensate" in measure:
        observables["condensate"] = lambda q: condensate(q)[0]
        observables["cg_iterations"] = lambda q: condensate(q)[1]
    if "pion" in measure:
        observables["pion"] = lambda q: correlators(op, point_propagator(op, q["U"], tol, maxiter))[0]
        observables["pion_axial"] = lambda q: correlators(op, point_propagator(op, q["U"], tol, maxiter))[1]
    return observables


def _pcac_derived(T: int) -> Callable[[dict], float]:
    window = range(max(1, T // 4), max(2, T // 2))  # t in [T/4, T/2): away from the source and the middle

    def derived(draws: dict) -> float:
        pp = np.mean(np.asarray(draws["pion"], np.float64), axis=0)
        ap = np.mean(np.asarray(draws["pion_axial"], np.float64), axis=0)
        return float(np.mean(pcac_mass(pp, ap)[[t - 1 for t in window]]))

    return derived


# -- the guard: gauge symmetry with auxiliary fields, gamma_5-Hermiticity -------------------------
def gauge_symmetry(group: _groups.Group, op: _w.Wilson | None, fields: Sequence[str]) -> Callable:
    """``transform(key, q)``: a Haar-random ``g(x)`` on the links,
    ``U_mu(x) -> g(x) U_mu(x) g(x + mu)^dag``, and on each auxiliary field present in ``q``
    (the preflight passes them), ``phi(x) -> g(x) phi(x)`` (on the odd sites with even-odd)."""

    def transform(key: jax.Array, q: dict) -> dict:
        links = q["U"]
        g = group.random(key, links.shape[1:-2], links.dtype)
        out = {**q, "U": _groups.gauge_transform(links, g)}
        if op is not None and op.even_odd:
            g = _w.pack(g, op.shape, 1)
        for name in fields:
            if name in q:
                psi = to_complex(q[name])
                out[name] = to_real(_w.colour(g, psi)).astype(q[name].dtype)
        return out

    return transform


def adjoint_violation(apply: Callable, adjoint: Callable, key: jax.Array, shape: tuple, dtype) -> jax.Array:
    """``|<chi, A psi> - <A^dag chi, psi>| / (|chi| |A psi| + |A^dag chi| |psi|)`` on random
    complex ``psi``, ``chi``: rounding when ``adjoint`` is the adjoint of ``apply``."""
    k1, k2 = jax.random.split(key)
    real = jnp.result_type(dtype, jnp.float32)
    psi = to_complex(jax.random.normal(k1, (2, *shape), real))
    chi = to_complex(jax.random.normal(k2, (2, *shape), real))
    a_psi, a_chi = apply(psi), adjoint(chi)
    scale = jnp.linalg.norm(chi) * jnp.linalg.norm(a_psi) + jnp.linalg.norm(a_chi) * jnp.linalg.norm(psi)
    return jnp.abs(jnp.vdot(chi, a_psi) - jnp.vdot(a_chi, psi)) / scale


def gamma5_hermiticity(operators: dict) -> Callable:
    """``check(key, q) -> {term: violation}``: for every operator a term inverts,
    ``M^dag = gamma_5 M gamma_5`` tested as the adjoint of ``M`` on random fields."""

    def check(key: jax.Array, q: dict) -> dict:
        u = q["U"]
        out = {}
        for i, (term, ops) in enumerate(operators.items()):
            worst = jnp.zeros((), u.real.dtype)
            for j, op in enumerate(ops):
                prep = _w.prepare(op, u)
                shape = _w.solve_shape(op, u.shape[-1])
                violation = adjoint_violation(lambda v: _w.matvec(op, prep, v),  # noqa: B023
                                              lambda v: _w.matvec_dagger(op, prep, v),  # noqa: B023
                                              jax.random.fold_in(key, 16 * i + j), shape, u.real.dtype)
                worst = jnp.maximum(worst, violation)
            out[term] = worst
        return out

    return check


# -- the model -----------------------------------------------------------------------------------------
def bare_mass(mass: float | None, kappa: float | None, d: int) -> float:
    """The bare mass from ``mass`` or ``kappa = 1 / (2 (m + d))`` (one of them; 0.1 if neither)."""
    if mass is not None and kappa is not None:
        raise ValueError(f"qcd: pass mass or kappa, not both (mass={mass!r}, kappa={kappa!r})")
    if kappa is not None:
        if not (np.isfinite(kappa) and kappa > 0):
            raise ValueError(f"qcd: kappa must be finite and > 0, got {kappa!r}")
        return 1.0 / (2.0 * float(kappa)) - d
    mass = 0.1 if mass is None else float(mass)
    if not np.isfinite(mass):
        raise ValueError(f"qcd: mass must be finite, got {mass!r}")
    return mass


def _check(shape, fermions, n_flavors, cg_tol, cg_maxiter, hasenbusch_mass, mass, even_odd) -> None:
    if len(shape) not in (2, 4):
        raise ValueError(f"qcd: shape must have 2 or 4 axes (Wilson fermions in d = 2 or 4), got {shape}")
    check_fermion_settings("qcd", fermions, n_flavors, cg_tol, cg_maxiter, hasenbusch_mass, mass)
    if even_odd and any(n % 2 for n in shape):
        raise ValueError(f"qcd: even_odd=True needs every extent even, got shape {shape}")


def qcd(group: str = "SU(3)", shape: Sequence[int] = (4, 4, 4, 4), beta: float = 5.6, mass: float | None = None,
        kappa: float | None = None, n_flavors: int = 2, fermions: str = "pseudofermion", csw: float = 0.0,
        cg_tol: float = 1e-8, cg_maxiter: int = 1000, hasenbusch_mass: float | None = None,
        even_odd: bool | None = None, n_noise: int = 4, measure: Sequence[str] = MEASURE, action: str = "wilson",
        c1: float | None = None, start: str = "hot") -> Potential:
    """QCD with ``n_flavors`` degenerate Wilson(-clover) quarks (see the module docstring and
    :mod:`physics_models.wilson` for the conventions).

    State ``{"U": (d, *shape, N, N)}`` on ``group`` as in :func:`physics_models.yang_mills`
    (``beta``, ``action``, ``c1``, ``start`` as there), ``d = 2`` or ``4``, time the last axis
    (antiperiodic for the quarks). ``mass``, the bare mass ``m``, or ``kappa`` (``m = 1/(2 kappa) - d``;
    ``mass = 0.1`` if neither is given); ``csw``, the clover coefficient (0: plain Wilson).

    Terms: ``gauge`` and, by ``fermions``, ``fermion`` (``"pseudofermion"``, auxiliary field
    ``phi``; one CG solve of ``M^dag M`` to relative residual ``cg_tol`` in at most
    ``cg_maxiter`` iterations per value and force; a solve stopped at the cap makes the term
    NaN and the guard reports ``solver_not_converged``), ``fermion_exact`` (``"exact"``:
    ``-n_flavors log|det D|``, dense, tiny lattices only) or none (``"none"``, quenched).
    ``hasenbusch_mass`` splits ``fermion`` into ``fermion_heavy`` and ``fermion_ratio``
    (fields ``phi_heavy``, ``phi_ratio``), as in :func:`physics_models.schwinger`.
    ``even_odd`` (default: on when every extent is even) solves the Schur complement on the odd
    sites; the theory is the same (the determinant identity is exact).

    Observables: ``plaquette``; with fermions ``condensate`` (``(1/V) Re tr D^{-1}`` per flavour,
    ``n_noise`` fixed Z2 noise vectors), ``cg_iterations`` (mean iterations of those solves),
    ``pion`` ``C_PP(t)`` and ``pion_axial`` ``C_AP(t)`` (:func:`correlators`; a point source at
    the origin, ``S N`` solves per draw), and the derived ``pcac_mass`` (:func:`pcac_mass` of the
    mean correlators, averaged over ``t`` in ``[T/4, T/2)``, when ``T >= 8``). ``measure``
    picks the fermion observables: ``"condensate"`` (with ``cg_iterations``) and ``"pion"``
    (with ``pion_axial``), both by default; the pion's ``S N`` solves per draw cost more than
    a trajectory of a small lattice. Run fermions in float64.
    """
    shape = tuple(int(n) for n in shape)
    beta = float(beta)
    _check_parameters(shape, beta, start)
    c1 = rectangle_coefficient(action, c1)
    mass = bare_mass(mass, kappa, len(shape))
    _check(shape, fermions, n_flavors, cg_tol, cg_maxiter, hasenbusch_mass, mass, even_odd)
    measure = (measure,) if isinstance(measure, str) else tuple(measure)
    if set(measure) - set(MEASURE):
        raise ValueError(f"qcd: measure must list some of {list(MEASURE)}, got {list(measure)}")
    grp = _groups.get(group)
    if even_odd is None:
        even_odd = all(n % 2 == 0 for n in shape)
    op = None if fermions == "none" else _w.Wilson(shape, mass, float(csw), bool(even_odd))
    return qcd_potential(grp, shape, beta, c1, start, op, fermions, n_flavors, float(cg_tol), int(cg_maxiter),
                         hasenbusch_mass, int(n_noise), measure)


def qcd_potential(grp: _groups.Group, shape: tuple[int, ...], beta: float, c1: float, start: str,
                  op: _w.Wilson | None, fermions: str, n_flavors: int, cg_tol: float, cg_maxiter: int,
                  hasenbusch_mass: float | None, n_noise: int, measure: Sequence[str] = MEASURE) -> Potential:
    """The :func:`qcd` potential for a given operator ``op`` (a :class:`physics_models.wilson.Wilson`
    or a subclass; ``None`` for the quenched theory)."""
    lattice = (len(shape), *shape)
    if start == "cold":
        init = lambda key: {"U": grp.identity(lattice, jnp.complex64)}  # noqa: E731
    else:
        init = lambda key: {"U": grp.random(key, lattice, jnp.complex64)}  # noqa: E731
    terms = {"gauge": lambda q: gauge_action(q["U"], beta, c1)}
    auxiliary, health, operators = {}, {}, {}
    if fermions == "pseudofermion":
        heavy = None
        if hasenbusch_mass is not None:
            heavy = type(op)(op.shape, float(hasenbusch_mass), op.csw, op.even_odd)
        fermion_terms, auxiliary, health, operators = pseudofermion_terms(op, heavy, cg_tol, cg_maxiter)
        terms.update(fermion_terms)
    elif fermions == "exact":
        full = type(op)(op.shape, op.mass, op.csw, False)
        terms["fermion_exact"] = lambda q: -n_flavors * log_abs_det(full, q["U"])
        operators = {"fermion_exact": (full,)}
    derived, exact = {}, {}
    if op is not None and shape[-1] >= 8 and "pion" in measure:
        derived["pcac_mass"] = _pcac_derived(shape[-1])
    elif op is None:
        exact = {k: v for k, v in exact_values(grp.name, shape, beta, c1, (1, 1)).items() if k == "plaquette"}
    properties = {"gamma5_hermiticity": gamma5_hermiticity(operators)} if operators else {}
    d = len(shape)
    axes = (d, *range(1, d))  # time first: a lattice mesh splits time (the even-odd packing halves axis 0)
    return Potential(terms=terms, init=init, observables=_observables(op, n_noise, cg_tol, cg_maxiter, measure),
                     derived=derived, exact=exact, name="qcd", auxiliary=auxiliary, health=health,
                     groups={"U": grp}, symmetries={"gauge": gauge_symmetry(grp, op, list(auxiliary))},
                     properties=properties, lattice_axes={name: axes for name in ("U", *auxiliary)})
