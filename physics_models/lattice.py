"""Scalar field theory on a periodic hypercubic lattice."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hmc.lattice import shift
from hmc.potential import Potential
from physics_models import exact as _exact


def phi4(shape: Sequence[int] = (16, 16), m2: float = -4.0, lam: float = 8.0, start: str = "hot") -> Potential:
    """Real scalar phi^4 theory on a periodic lattice of any dimension.

    ``S[phi] = sum_x [ sum_mu (phi_{x+mu} - phi_x)^2 + m2 phi_x^2 + lam phi_x^4 ]``
    (the convention of Albergo, Kanwar, Shanahan, PRD 100 (2019) 034515 and of
    the tutorial arXiv:2101.08176, whose benchmark point is L=8, m2=-4, lam=8).
    With ``phi = sqrt(2 kappa) varphi`` this is the hopping form
    ``sum_x [ -2 kappa sum_mu varphi_x varphi_{x+mu} + varphi^2 + l (varphi^2 - 1)^2 ]``
    for ``m2 = (1 - 2 l) / kappa - 2 d`` and ``lam = l / (4 kappa^2)``.

    Parameters
    ----------
    shape
        Lattice extent per dimension; the state is ``{"phi": array of this shape}``.
    m2
        Bare mass term (negative values give the double-well regime).
    lam
        Quartic coupling, ``>= 0``; ``lam = 0`` needs ``m2 > 0`` (free field).
    start
        The initial field of a chain: ``"hot"`` (default), ``0.5 N(0, 1)`` at every site;
        ``"cold"``, the uniform classical vacuum ``s v`` with ``v^2 = -m2 / (2 lam)`` (0 for
        ``m2 >= 0``), a random sign ``s`` per chain, plus ``0.1 N(0, 1)``. In the broken phase
        on a large lattice a hot start orders into domains, and the walls between them
        outlive any run (phi4 64x64 at m2 = -1, lam = 0.5: 3 of 8 chains kept two-wall
        stripes; BENCHMARKS.md); a cold start begins in one vacuum, the lattice practice.

    Terms: ``kinetic`` (nearest-neighbour differences), ``mass``, ``quartic``.
    Observables (site averages): ``magnetization`` ``M/V``, ``abs_magnetization``
    ``|M|/V``, ``phi2`` and the ``action``; derived: ``susceptibility``
    ``chi_2 = <M^2>/V`` and ``binder_cumulant`` ``U_4 = 1 - <M^4>/(3 <M^2>^2)``.
    For ``lam = 0`` the exact ``<phi2>`` (half the free-field momentum sum),
    ``<M> = 0``, ``<S> = V/2`` and ``chi_2 = 1/(2 m2)`` are attached.
    Reference (Albergo et al. point L=8, m2=-4, lam=8): ``<|M|>/V = 0.0871(2)``,
    ``chi_2 = 0.746(3)`` (an HMC estimate, not exact).
    """
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 2 for n in shape):
        raise ValueError(f"phi4: shape needs every extent >= 2, got {shape}")
    if lam < 0:
        raise ValueError(f"phi4: lam must be >= 0, got {lam}")
    if lam == 0 and not m2 > 0:
        raise ValueError(f"phi4: lam = 0 needs m2 > 0 (otherwise the action is unbounded), got m2={m2}")
    if start not in ("hot", "cold"):
        raise ValueError(f"phi4: start must be 'hot' or 'cold', got {start!r}")
    vacuum = float(np.sqrt(-m2 / (2.0 * lam))) if m2 < 0 else 0.0
    axes = tuple(range(len(shape)))

    def kinetic(q):
        phi = q["phi"]
        return sum(jnp.sum((shift(phi, mu) - phi) ** 2) for mu in axes)

    def mass(q):
        return m2 * jnp.sum(q["phi"] ** 2)

    def quartic(q):
        return lam * jnp.sum(q["phi"] ** 4)

    def init(key):
        if start == "hot":
            return {"phi": 0.5 * jax.random.normal(key, shape)}
        sign_key, noise_key = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0)
        return {"phi": sign * vacuum + 0.1 * jax.random.normal(noise_key, shape)}

    def action(q):
        return kinetic(q) + mass(q) + quartic(q)

    volume = int(np.prod(shape))
    exact = {}
    if lam == 0:
        exact = {
            "phi2": 0.5 * _exact.free_field_phi2(shape, m2),
            "magnetization": 0.0,
            "action": volume / 2.0,
            "susceptibility": 1.0 / (2.0 * m2),
        }

    def susceptibility(draws):
        m = np.asarray(draws["magnetization"], np.float64)
        return float(volume * np.mean(m**2))

    def binder_cumulant(draws):
        m = np.asarray(draws["magnetization"], np.float64)
        return float(1.0 - np.mean(m**4) / (3.0 * np.mean(m**2) ** 2))
    return Potential(
        terms={"kinetic": kinetic, "mass": mass, "quartic": quartic},
        init=init,
        observables={
            "magnetization": lambda q: jnp.mean(q["phi"]),
            "abs_magnetization": lambda q: jnp.abs(jnp.mean(q["phi"])),
            "phi2": lambda q: jnp.mean(q["phi"] ** 2),
            "action": action,
        },
        derived={"susceptibility": susceptibility, "binder_cumulant": binder_cumulant},
        exact=exact,
        name="phi4",
        lattice_axes={"phi": axes},  # a lattice mesh splits the first
    )
