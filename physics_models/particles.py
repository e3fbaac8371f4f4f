"""Lennard-Jones clusters in a confining sphere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hmc.potential import Potential


def _pair_matrix(r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Squared distances ``r_ij^2`` with the diagonal replaced by 1 (safe), and the off-diagonal mask."""
    n = r.shape[0]
    d = r[:, None, :] - r[None, :, :]
    r2 = jnp.sum(d * d, axis=-1)
    mask = ~jnp.eye(n, dtype=bool)
    # double where (jax-md's safe_mask): the diagonal never reaches the singular power
    return jnp.where(mask, r2, 1.0), mask


def lj_energy(r: jax.Array) -> jax.Array:
    """``E = 4 sum_{i<j} (r_ij^-12 - r_ij^-6)`` for positions ``(n, 3)`` (epsilon = sigma = 1)."""
    r2, mask = _pair_matrix(r)
    inv6 = r2**-3
    return 0.5 * jnp.sum(jnp.where(mask, 4.0 * (inv6 * inv6 - inv6), 0.0))


def _lattice_start(n_atoms: int, spacing: float = 1.12) -> np.ndarray:
    """The ``n_atoms`` points of a simple cubic lattice closest to the origin, centred."""
    k = int(np.ceil(n_atoms ** (1 / 3))) + 2
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    order = np.argsort(np.sum(grid**2, axis=1), kind="stable")
    pts = grid[order[:n_atoms]]
    return pts - pts.mean(axis=0)


def lennard_jones(
    n_atoms: int = 13,
    temperature: float = 0.2,
    wall_radius: float = 2.5,
    wall_strength: float = 100.0,
    com_strength: float = 10.0,
) -> Potential:
    """A cluster of ``n_atoms`` Lennard-Jones atoms at ``temperature`` (reduced units).

    The sampled density is ``exp(-E_total / T)`` with
    ``E_total = E_LJ + E_wall + E_com``:

    - ``pair``: ``E_LJ = 4 sum_{i<j} (r_ij^-12 - r_ij^-6)``;
    - ``wall``: ``k_w sum_i (|r_i|^2 - R^2)^2`` for atoms beyond the wall radius
      ``R`` (zero inside; smooth at the wall, no square root);
    - ``com``: ``k_c n |r_com|^2 / 2``, a restraint on the centre of mass.

    The state is ``{"r": array of shape (n_atoms, 3)}``. Observables ``energy``
    (``E_LJ``) and ``radius_of_gyration``. Global minima (Wales & Doye, JPCA 101
    (1997) 5111): LJ13 -44.326801, LJ38 -173.928427, LJ55 -279.248470;
    :func:`quench` minimises sampled states to compare.
    """
    n = int(n_atoms)
    if n < 2:
        raise ValueError(f"lennard_jones: n_atoms must be >= 2, got {n_atoms!r}")
    for key, value in (("temperature", temperature), ("wall_radius", wall_radius)):
        if not value > 0:
            raise ValueError(f"lennard_jones: {key} must be > 0, got {value!r}")
    beta = 1.0 / temperature
    start = _lattice_start(n)
    if np.max(np.linalg.norm(start, axis=1)) >= wall_radius:
        raise ValueError(f"lennard_jones: wall_radius={wall_radius} is too small for {n} atoms")

    def pair(q):
        return beta * lj_energy(q["r"])

    def wall(q):
        r2 = jnp.sum(q["r"] ** 2, axis=-1)
        over = jnp.maximum(r2 - wall_radius**2, 0.0)
        return beta * wall_strength * jnp.sum(over**2)

    def com(q):
        c = jnp.mean(q["r"], axis=0)
        return beta * 0.5 * com_strength * n * jnp.sum(c * c)

    def init(key):
        return {"r": jnp.asarray(start) + 0.02 * jax.random.normal(key, (n, 3))}

    def radius_of_gyration(q):
        r = q["r"] - jnp.mean(q["r"], axis=0)
        return jnp.sqrt(jnp.mean(jnp.sum(r * r, axis=-1)))

    return Potential(
        terms={"pair": pair, "wall": wall, "com": com},
        init=init,
        observables={"energy": lambda q: lj_energy(q["r"]), "radius_of_gyration": radius_of_gyration},
        name="lennard_jones",
    )


def quench(positions: np.ndarray, tol: float = 1e-10) -> tuple[float, np.ndarray]:
    """Minimise ``E_LJ`` from ``positions`` ``(n, 3)`` with L-BFGS (float64); ``(E_min, r_min)``."""
    from scipy.optimize import minimize

    with jax.enable_x64(True):
        f = jax.jit(jax.value_and_grad(lambda x: lj_energy(x.reshape(-1, 3))))

        def fun(x):
            v, g = f(jnp.asarray(x))
            return float(v), np.asarray(g, np.float64)

        res = minimize(fun, np.asarray(positions, np.float64).ravel(), jac=True, method="L-BFGS-B",
                       options={"gtol": tol, "ftol": 1e-15, "maxiter": 10000})
    return float(res.fun), res.x.reshape(-1, 3)
