"""The Schwinger model: 2D U(1) lattice gauge theory with two degenerate flavours of
Wilson fermions, by pseudofermions or by the exact determinant.

Conventions. Link angles ``theta_mu(x)``, ``(2, L, L)``, ``U_mu(x) = exp(i theta_mu(x))``;
two-component spinors with ``gamma_0 = sigma_x``, ``gamma_1 = sigma_y``,
``gamma_5 = sigma_z``; the Wilson-Dirac operator (``r = 1``)

    (D psi)(x) = (m + 2) psi(x) - 1/2 sum_mu [(1 - gamma_mu) U_mu(x) psi(x + mu)
                                             + (1 + gamma_mu) U_mu(x - mu)^* psi(x - mu)],

periodic in space (axis 1) and antiperiodic in time (axis 0) for the fermions. ``D`` is
gamma_5-hermitian, ``D^dagger = gamma_5 D gamma_5``, so ``det D`` is real and two
degenerate flavours weigh a configuration by ``det(D^dagger D) = |det D|^2``.

Pseudofermions: ``|det D|^2 = int dphi exp(-phi^dagger (D^dagger D)^{-1} phi)``; the
field ``phi = D^dagger eta`` with ``eta`` complex Gaussian (``<|eta_i|^2> = 1``) is an
exact heat-bath draw at fixed links, redrawn at every trajectory start (an auxiliary
field of the :class:`hmc.Potential`). The action needs ``x = (D^dagger D)^{-1} phi``: one
conjugate-gradient solve, whose solution also gives the force (``dS = -x . d(D^dagger D) x``,
a custom VJP: no pass back through the iterations and no second solve).

Complex fields are stored as real arrays ``(2, L, L, 2)`` (real and imaginary parts):
``D^dagger D`` is then a real symmetric positive-definite operator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hmc.guard.attribution import unhealthy_is_nan
from hmc.lattice import constrain, shift
from hmc.potential import Potential
from physics_models import exact as _exact
from physics_models.gauge import plaquette_angles, wrap

FERMIONS = ("pseudofermion", "exact", "none")


def _gamma(mu: int, psi: jax.Array) -> jax.Array:
    """``gamma_mu psi`` on the last (spinor) axis: ``sigma_x`` for 0, ``sigma_y`` for 1."""
    a, b = psi[..., 0], psi[..., 1]
    if mu == 0:
        return jnp.stack([b, a], axis=-1)
    return jnp.stack([-1j * b, 1j * a], axis=-1)


def _gamma5(psi: jax.Array) -> jax.Array:
    return psi * jnp.array([1.0, -1.0], psi.real.dtype)


def dirac(theta: jax.Array, psi: jax.Array, mass: float) -> jax.Array:
    """``D psi`` for links ``theta`` ``(2, L, L)`` and a complex spinor field ``psi`` ``(L, L, 2)``."""
    L = theta.shape[1]
    u = jnp.exp(1j * theta.astype(jnp.result_type(theta.dtype, jnp.float32)))
    forward_sign = jnp.asarray(np.where(np.arange(L) == L - 1, -1.0, 1.0))[:, None, None]
    backward_sign = jnp.asarray(np.where(np.arange(L) == 0, -1.0, 1.0))[:, None, None]
    out = (mass + 2.0) * psi
    for mu in (0, 1):
        forward = shift(psi, mu, 1)
        backward = shift(psi, mu, -1)
        if mu == 0:  # antiperiodic in time
            forward, backward = forward * forward_sign, backward * backward_sign
        hop_forward = u[mu][..., None] * forward
        hop_backward = jnp.conj(shift(u[mu], mu, -1))[..., None] * backward
        out = out - 0.5 * ((hop_forward - _gamma(mu, hop_forward)) + (hop_backward + _gamma(mu, hop_backward)))
    return out


def dirac_dagger(theta: jax.Array, psi: jax.Array, mass: float) -> jax.Array:
    """``D^dagger psi = gamma_5 D gamma_5 psi``."""
    return _gamma5(dirac(theta, _gamma5(psi), mass))


def to_complex(x: jax.Array) -> jax.Array:
    return jax.lax.complex(x[0], x[1])


def to_real(z: jax.Array) -> jax.Array:
    return jnp.stack([jnp.real(z), jnp.imag(z)])


def normal_operator(theta: jax.Array, mass: float):
    """``v -> D^dagger D v`` on real-stored fields ``(2, L, L, 2)``."""

    def matvec(v: jax.Array) -> jax.Array:
        return to_real(dirac_dagger(theta, dirac(theta, to_complex(v), mass), mass)).astype(v.dtype)

    return matvec


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sum conj(a) b`` over every axis: ``jnp.vdot``'s value (bit for bit on one device), as one
    contraction of all axes instead of vdot's flattening reshape, which a lattice mesh would
    compile to a gather of the whole field."""
    return jnp.tensordot(jnp.conj(a) if jnp.iscomplexobj(a) else a, b, axes=a.ndim)


def conjugate_gradient(matvec, b: jax.Array, tol: float, maxiter: int) -> tuple[jax.Array, tuple]:
    """Solve ``A x = b`` (``A`` symmetric positive definite) from ``x = 0`` until
    ``|r| <= tol |b|`` or ``maxiter`` iterations. Returns ``(x, (iterations, |r| / |b|))``
    with the recursively updated residual."""
    bb = inner(b, b).real
    tol2 = jnp.asarray(tol, bb.dtype) ** 2 * bb

    def cond(c):
        _, _, _, rr, k = c
        return (rr > tol2) & (k < maxiter)

    def body(c):
        x, r, p, rr, k = c
        ap = matvec(p)
        alpha = rr / inner(p, ap).real
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = inner(r, r).real
        p = r + (rr_new / rr) * p
        return x, r, p, rr_new, k + 1

    x, _, _, rr, k = jax.lax.while_loop(cond, body, (jnp.zeros_like(b), b, b, bb, jnp.asarray(0, jnp.int32)))
    # a non-finite right-hand side stops the loop at once (NaN > NaN is false): return NaN,
    # not the zero start, so that a NaN reaching the solve is not silently swallowed
    x = jnp.where(jnp.isfinite(bb), x, jnp.nan)
    return x, (k, jnp.sqrt(rr / jnp.maximum(bb, jnp.finfo(bb.dtype).tiny)))


def point_propagator(theta: jax.Array, mass: float, tol: float, maxiter: int) -> jax.Array:
    """The quark propagator from a point source at the origin, ``S(x) = D^{-1}(x, 0)``:
    ``(L, L, 2, 2)`` complex (sink spinor, source spinor), one CG solve of ``D^dagger D``
    per source spinor component (``D^{-1} b = (D^dagger D)^{-1} D^dagger b``)."""
    L = theta.shape[1]
    ctype = jnp.result_type(theta.dtype, jnp.complex64)

    def column(a):
        source = jnp.zeros((L, L, 2), ctype).at[0, 0, a].set(1.0)
        rhs = to_real(dirac_dagger(theta, source, mass)).astype(theta.dtype)
        x, _ = conjugate_gradient(normal_operator(theta, mass), rhs, tol, maxiter)
        return to_complex(x)

    return jnp.stack([column(0), column(1)], axis=-1)


def pion_correlator(propagator: jax.Array) -> jax.Array:
    """The isovector pseudoscalar (pion) correlator at zero momentum from a point-source
    propagator: ``C(t) = sum_x tr[S(t, x) S(t, x)^dagger]`` (``gamma_5``-hermiticity turns
    ``tr[gamma_5 S gamma_5 S(0 <- x)]`` into the sum of squared moduli; two degenerate
    flavours have no disconnected part). ``t`` runs along axis 0, the antiperiodic time."""
    return jnp.sum(jnp.abs(propagator) ** 2, axis=(1, 2, 3))


def log_abs_det(m: jax.Array) -> jax.Array:
    """``log|det m|`` of a square (complex) matrix by LU with partial pivoting written in
    JAX (no LAPACK call), differentiable by reverse mode through the elimination.

    jaxlib 0.10's LAPACK kernels split a batch (a vmap over chains) across XLA's CPU
    thread pool and block on it; several such calls at once have deadlocked the pool
    (every thread waiting) in a 6x6 run of this model. This elimination is ordinary XLA
    code. Row swaps change only the sign of the determinant."""
    n = m.shape[0]
    rows = jnp.arange(n)

    def eliminate(k, carry):
        a, total = carry
        size = jnp.where(rows >= k, jnp.abs(a[:, k]), -1.0)
        p = jnp.argmax(size)
        swapped = a.at[k].set(a[p]).at[p].set(a[k])
        pivot = swapped[k, k]
        factors = jnp.where(rows > k, swapped[:, k] / pivot, 0.0)
        return swapped - factors[:, None] * swapped[k][None, :], total + jnp.log(jnp.abs(pivot))

    _, total = jax.lax.fori_loop(0, n, eliminate, (m, jnp.zeros((), jnp.abs(m).dtype)))
    return total


def dense_dirac(theta: jax.Array, mass: float) -> jax.Array:
    """``D`` as a dense ``(2V, 2V)`` complex matrix (small lattices)."""
    L = theta.shape[1]
    n = 2 * L * L
    dtype = jnp.result_type(theta.dtype, jnp.float32)
    basis = jnp.eye(n, dtype=dtype).reshape(n, L, L, 2).astype(jnp.result_type(dtype, jnp.complex64))
    columns = jax.vmap(lambda e: dirac(theta, e, mass).reshape(n))(basis)
    return columns.T


def _inverse_form(theta: jax.Array, chi: jax.Array, mass: float, tol: float, maxiter: int) -> tuple:
    """``(chi . A^{-1} chi, iterations)`` with ``A = D^dagger D`` at ``theta``: one CG solve for
    the value and the force together. With ``x = A^{-1} chi``, ``dS = 2 x . dchi - x . dA x``:
    the force needs ``x`` and one pass back through the operator, not a second solve (an
    implicit derivative of the solve, ``jax.lax.custom_linear_solve``, solves ``A y = chi``
    again)."""
    return _inverse_form_forward(theta, chi, mass, tol, maxiter)[0]


def _inverse_form_forward(theta, chi, mass, tol, maxiter):
    x, (iterations, _) = conjugate_gradient(normal_operator(theta, mass), chi, tol, maxiter)
    return (jnp.sum(chi * x), iterations), (theta, x)


def _inverse_form_backward(mass, tol, maxiter, residuals, cotangents):
    del tol, maxiter
    theta, x = residuals
    ct = cotangents[0]
    _, pullback = jax.vjp(lambda th: normal_operator(th, mass)(x), theta)
    (d_theta,) = pullback(x)
    return -ct * d_theta, 2.0 * ct * x


_inverse_form = jax.custom_vjp(_inverse_form, nondiff_argnums=(2, 3, 4))
_inverse_form.defvjp(_inverse_form_forward, _inverse_form_backward)


def pseudofermion_action(theta: jax.Array, chi: jax.Array, mass: float, tol: float, maxiter: int) -> jax.Array:
    """``chi^dagger (D^dagger D)^{-1} chi`` (real-stored ``chi``), NaN with a NaN force when the
    solve stops at its cap (the guard then rejects the trajectory)."""
    value, iterations = _inverse_form(theta, chi, mass, tol, maxiter)
    return unhealthy_is_nan(value, iterations < maxiter)


def solver_health(theta: jax.Array, chi: jax.Array, mass: float, tol: float, maxiter: int) -> dict:
    """What the guard reports about the solve of :func:`pseudofermion_action`."""
    _, (iterations, residual) = conjugate_gradient(normal_operator(theta, mass), chi, tol, maxiter)
    return {"ok": iterations < maxiter, "residual": residual, "iterations": iterations,
            "tolerance": jnp.asarray(tol), "max_iterations": jnp.asarray(maxiter)}


def gaussian_spinor(key: jax.Array, theta: jax.Array) -> jax.Array:
    """``eta``, complex Gaussian with ``<|eta_i|^2> = 1``, as a complex ``(L, L, 2)`` field."""
    L = theta.shape[1]
    return to_complex(jax.random.normal(key, (2, L, L, 2), theta.dtype) * np.sqrt(0.5).astype(theta.dtype))


def heat_bath_at(mass: float):
    """``refresh(key, q)``: the field ``D^dagger eta`` of the Wilson operator at ``mass``
    (real-stored), an exact draw from ``exp(-phi^dagger (D^dagger D)^{-1} phi)``."""

    def refresh(key, q):
        return to_real(dirac_dagger(q["theta"], gaussian_spinor(key, q["theta"]), mass)).astype(q["theta"].dtype)

    return refresh


def pseudofermion_terms(mass: float, hasenbusch_mass: float | None, tol: float, maxiter: int) -> tuple:
    """``(terms, auxiliary, health)`` of the two-flavour pseudofermion action.

    Without ``hasenbusch_mass``: one term ``fermion``, ``phi^dagger (D^dagger D)^{-1} phi``
    with ``phi = D^dagger eta``. With it (Hasenbusch, Phys. Lett. B519 (2001) 177): the
    determinant split as ``det(D_h^dagger D_h) * det(D^dagger D) / det(D_h^dagger D_h)``,
    ``D_h`` the Wilson operator at the heavier mass, into two terms that can sit on
    different levels of a nested integrator:

    - ``fermion_heavy``: ``phi_h^dagger (D_h^dagger D_h)^{-1} phi_h``, ``phi_h = D_h^dagger eta``;
      the stiff, cheap part (its solve converges fast);
    - ``fermion_ratio``: ``chi^dagger (D^dagger D)^{-1} chi`` with ``chi = D_h^dagger phi_r``,
      ``phi_r = D_h^{-dagger} D^dagger eta'`` (the heat bath of ``W = D D_h^{-1}``: the action
      of the fresh field is ``|eta'|^2``); the soft, expensive part.
    """
    def light(q):
        return pseudofermion_action(q["theta"], q["phi"], mass, tol, maxiter)

    if hasenbusch_mass is None:
        health = {"fermion": lambda q: solver_health(q["theta"], q["phi"], mass, tol, maxiter)}
        return {"fermion": light}, {"phi": heat_bath_at(mass)}, health
    heavy_mass = float(hasenbusch_mass)

    def ratio_source(q):  # chi = D_h^dagger phi_r
        return to_real(dirac_dagger(q["theta"], to_complex(q["phi_ratio"]), heavy_mass)).astype(q["theta"].dtype)

    def heavy(q):
        return pseudofermion_action(q["theta"], q["phi_heavy"], heavy_mass, tol, maxiter)

    def ratio(q):
        return pseudofermion_action(q["theta"], ratio_source(q), mass, tol, maxiter)

    def ratio_heat_bath(key, q):
        # phi_r = D_h^{-dagger} D^dagger eta' = D_h (D_h^dagger D_h)^{-1} D^dagger eta'
        theta = q["theta"]
        rhs = heat_bath_at(mass)(key, q)
        y, (iterations, _) = conjugate_gradient(normal_operator(theta, heavy_mass), rhs, tol, maxiter)
        phi = to_real(dirac(theta, to_complex(y), heavy_mass)).astype(theta.dtype)
        # a heat bath whose solve stopped at its cap is NaN: the trajectory is rejected, not biased
        return unhealthy_is_nan(phi, iterations < maxiter)

    def ratio_health(q):
        # the term fails with its own solve, or with its heat bath's (a NaN field): the latter
        # is shown by a heat-bath solve at this theta from a fixed noise source
        theta = q["theta"]
        report = solver_health(theta, ratio_source(q), mass, tol, maxiter)
        rhs = heat_bath_at(mass)(jax.random.key(0), q)
        _, (bath_iterations, bath_residual) = conjugate_gradient(normal_operator(theta, heavy_mass), rhs, tol, maxiter)
        field_ok = jnp.all(jnp.isfinite(q["phi_ratio"]))
        return {**report, "ok": report["ok"] & field_ok & (bath_iterations < maxiter),
                "heat_bath_iterations": bath_iterations, "heat_bath_residual": bath_residual}

    health = {"fermion_heavy": lambda q: solver_health(q["theta"], q["phi_heavy"], heavy_mass, tol, maxiter),
              "fermion_ratio": ratio_health}
    return ({"fermion_heavy": heavy, "fermion_ratio": ratio}, {"phi_heavy": heat_bath_at(heavy_mass), "phi_ratio": ratio_heat_bath},
            health)


def check_fermion_settings(model: str, fermions: str, n_flavors: int, cg_tol: float, cg_maxiter: int,
                           hasenbusch_mass: float | None, mass: float) -> None:
    """The checks every pseudofermion model makes of its fermion keywords (``schwinger``, ``qcd``):
    a ValueError naming ``model`` and the keyword."""
    if fermions not in FERMIONS:
        raise ValueError(f"{model}: fermions must be one of {list(FERMIONS)}, got {fermions!r}")
    if fermions == "pseudofermion" and n_flavors != 2:
        raise ValueError(f"{model}: pseudofermions describe two degenerate flavours (|det D|^2); got "
                         f"n_flavors={n_flavors}; use fermions='exact' for another number")
    if not (cg_tol > 0 and int(cg_maxiter) >= 1):
        raise ValueError(f"{model}: cg_tol must be > 0 and cg_maxiter >= 1, got {cg_tol!r}, {cg_maxiter!r}")
    if hasenbusch_mass is not None and (fermions != "pseudofermion" or not float(hasenbusch_mass) > mass):
        raise ValueError(f"{model}: hasenbusch_mass needs fermions='pseudofermion' and a mass above mass={mass!r}, "
                         f"got hasenbusch_mass={hasenbusch_mass!r} with fermions={fermions!r}")


def schwinger(L: int = 8, beta: float = 2.0, mass: float = 0.1, n_flavors: int = 2,
              fermions: str = "pseudofermion", cg_tol: float = 1e-8, cg_maxiter: int = 1000,
              n_noise: int = 4, hasenbusch_mass: float | None = None) -> Potential:
    """The two-flavour Schwinger model on an ``L x L`` torus (see the module docstring).

    Terms: ``gauge`` (Wilson plaquette action ``beta sum_p (1 - cos theta_p)``) and
    ``fermion`` (``fermions="pseudofermion"``: ``phi^dagger (D^dagger D)^{-1} phi`` with the
    auxiliary field ``phi``, a CG solve to relative residual ``cg_tol`` in at most
    ``cg_maxiter`` iterations; a solve that stops at the cap makes the term NaN, so the guard
    rejects the trajectory and reports ``solver_not_converged`` with the residual) or ``fermion_exact`` (``fermions="exact"``:
    ``-n_flavors log|det D|`` of the dense ``D`` by LU (:func:`log_abs_det`), for small lattices); ``fermions="none"``
    is the quenched theory (the plaquette then has its exact Bessel-sum value).

    ``hasenbusch_mass`` (pseudofermions only, above ``mass``) splits ``fermion`` into
    ``fermion_heavy`` and ``fermion_ratio`` (Hasenbusch mass preconditioning; see
    :func:`pseudofermion_terms`), with auxiliary fields ``phi_heavy`` and ``phi_ratio``: the
    same theory, with a soft expensive force for an outer level of ``timescales`` and a stiff
    cheap one for a level further in.

    Observables: ``plaquette`` ``<cos theta_p>``, ``topological_charge``, and
    ``condensate``, the chiral condensate per flavour ``(1/V) Re tr D^{-1}`` by a stochastic
    estimator with ``n_noise`` fixed Z2 noise vectors (``eta^dagger D^{-1} eta``, each a CG
    solve of ``D^dagger D``), unbiased over configurations, and ``pion``, the zero-momentum
    pion correlator ``C(t)``, ``t = 0 .. L-1``, from a point source at the origin (two
    solves; :func:`pion_correlator`). Run fermions in float64
    (``precision="float64"``): the solve's tolerance is below float32's resolution.
    Pseudofermions need two flavours (``n_flavors=2``).
    """
    L = int(L)
    if L < 2 or L % 2:
        raise ValueError(f"schwinger: L must be an even integer >= 2, got {L}")
    if not beta > 0:
        raise ValueError(f"schwinger: beta must be > 0, got {beta!r}")
    check_fermion_settings("schwinger", fermions, n_flavors, cg_tol, cg_maxiter, hasenbusch_mass, float(mass))
    mass, cg_maxiter, volume = float(mass), int(cg_maxiter), L * L

    def gauge(q):
        return beta * jnp.sum(1.0 - jnp.cos(plaquette_angles(q["theta"])))

    def fermion_exact(q):
        return -n_flavors * log_abs_det(dense_dirac(q["theta"], mass))

    noise = np.random.default_rng(20261130).choice([-1.0, 1.0], size=(n_noise, L, L, 2))

    def condensate(q):
        theta = q["theta"]

        def one(eta):
            eta_c = jnp.asarray(eta, jnp.result_type(theta.dtype, jnp.float32)).astype(
                jnp.result_type(theta.dtype, jnp.complex64))
            eta_c = constrain(eta_c, 0)  # a constant: split it as the links (time, axis 0)
            rhs = to_real(dirac_dagger(theta, eta_c, mass)).astype(theta.dtype)
            x, _ = conjugate_gradient(normal_operator(theta, mass), rhs, cg_tol, cg_maxiter)
            return jnp.real(inner(eta_c, to_complex(x)))  # eta^dagger D^{-1} eta

        return jnp.mean(jax.vmap(one)(jnp.asarray(noise))) / volume

    def pion(q):
        return pion_correlator(point_propagator(q["theta"], mass, cg_tol, cg_maxiter))

    def init(key):
        return {"theta": jax.random.uniform(key, (2, L, L), minval=-0.5, maxval=0.5)}

    terms = {"gauge": gauge}
    auxiliary, health = {}, {}
    if fermions == "pseudofermion":
        fermion_terms, auxiliary, health = pseudofermion_terms(mass, hasenbusch_mass, cg_tol, cg_maxiter)
        terms.update(fermion_terms)
    elif fermions == "exact":
        terms["fermion_exact"] = fermion_exact
    observables = {
        "plaquette": lambda q: jnp.mean(jnp.cos(plaquette_angles(q["theta"]))),
        "topological_charge": lambda q: jnp.sum(wrap(plaquette_angles(q["theta"]))) / (2.0 * np.pi),
    }
    if fermions != "none":
        observables["condensate"] = condensate
        observables["pion"] = pion
    exact = {"topological_charge": 0.0}
    if fermions == "none":
        exact["plaquette"] = _exact.u1_plaquette(beta, volume)
    return Potential(terms=terms, init=init, observables=observables, exact=exact, name="schwinger",
                     auxiliary=auxiliary, health=health,
                     lattice_axes={name: (1, 2) for name in ("theta", *auxiliary)},  # time (axis 0 of x) first
                     embedding=lambda q: jnp.stack([jnp.cos(q["theta"]), jnp.sin(q["theta"])]))
