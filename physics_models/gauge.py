"""Compact U(1) lattice gauge theory in two dimensions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hmc.lattice import shift
from hmc.potential import Potential
from physics_models import exact as _exact


def plaquette_angles(theta: jax.Array) -> jax.Array:
    """``theta_p(x) = theta_0(x) + theta_1(x + 0) - theta_0(x + 1) - theta_1(x)`` for links ``(2, L, L)``."""
    t0, t1 = theta[0], theta[1]
    return t0 + shift(t1, 0) - shift(t0, 1) - t1


def wrap(angle: jax.Array) -> jax.Array:
    """Angle mapped into ``[-pi, pi]``."""
    return angle - 2.0 * jnp.pi * jnp.round(angle / (2.0 * jnp.pi))


def u1_gauge(L: int = 8, beta: float = 2.0) -> Potential:
    """2D compact U(1) gauge theory with the Wilson action on an ``L x L`` torus.

    ``S = beta sum_p (1 - cos theta_p)`` with link angles ``theta_mu(x)`` (the state
    ``{"theta": array of shape (2, L, L)}``, unbounded reals: the action is
    periodic) and plaquette angle ``theta_p = theta_0(x) + theta_1(x+0) -
    theta_0(x+1) - theta_1(x)``.

    Term ``wilson``. Observables ``plaquette`` (``<cos theta_p>``),
    ``topological_charge`` ``Q = (1/2pi) sum_p wrap(theta_p)`` (an integer on the
    torus) and ``topological_charge_sin`` ``(1/2pi) sum_p sin theta_p``; derived
    ``topological_susceptibility`` ``<Q^2>/V``. Exact finite-volume values from
    Bessel sums (Rusakov 1990; Bonati & Rossi, PRD 99 (2019) 054503): 8x8 at
    beta = 2: ``<cos> = 0.69777465801084``, ``chi_t = 0.019364045480``. HMC's
    topological autocorrelation grows roughly exponentially with beta; keep
    beta <= 4 at L <= 16 for well-sampled charge. Sample with a unit mass
    matrix (``mass_matrix="identity"``, the lattice convention): link angles
    drift freely along gauge orbits, so an adapted diagonal mass matrix learns
    that drift instead of the physical scales and shrinks the step size.
    """
    L = int(L)
    if L < 2:
        raise ValueError(f"u1_gauge: L must be >= 2, got {L}")
    if not beta > 0:
        raise ValueError(f"u1_gauge: beta must be > 0, got {beta!r}")
    volume = L * L

    def wilson(q):
        return beta * jnp.sum(1.0 - jnp.cos(plaquette_angles(q["theta"])))

    def init(key):
        return {"theta": jax.random.uniform(key, (2, L, L), minval=-np.pi, maxval=np.pi)}

    def charge(q):
        return jnp.sum(wrap(plaquette_angles(q["theta"]))) / (2.0 * np.pi)

    def charge_sin(q):
        return jnp.sum(jnp.sin(plaquette_angles(q["theta"]))) / (2.0 * np.pi)

    def susceptibility(draws):
        return float(np.mean(np.asarray(draws["topological_charge"], np.float64) ** 2) / volume)

    return Potential(
        terms={"wilson": wilson},
        init=init,
        observables={
            "plaquette": lambda q: jnp.mean(jnp.cos(plaquette_angles(q["theta"]))),
            "topological_charge": charge,
            "topological_charge_sin": charge_sin,
        },
        derived={"topological_susceptibility": susceptibility},
        exact={
            "plaquette": _exact.u1_plaquette(beta, volume),
            "topological_charge": 0.0,
            "topological_susceptibility": _exact.u1_topological_susceptibility(beta, volume),
        },
        name="u1_gauge",
        lattice_axes={"theta": (1, 2)},  # (direction, x, y): a lattice mesh splits x
        # link angles wrap: trajectory_length="auto" measures their moves on the circle
        embedding=lambda q: jnp.stack([jnp.cos(q["theta"]), jnp.sin(q["theta"])]),
    )
