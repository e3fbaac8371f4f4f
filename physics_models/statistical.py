"""Statistical targets with exact moments: sampler stress tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hmc.potential import Potential
from physics_models import exact as _exact


def gaussian_covariance(dim: int, condition_number: float = 1.0, correlation: float = 0.0) -> np.ndarray:
    """Covariance of :func:`gaussian`: ``S C S`` with log-spaced marginal variances.

    The marginal variances run log-uniformly from 1 down to ``1 / condition_number``;
    ``C`` has unit diagonal and every off-diagonal entry equal to ``correlation``.
    """
    exponents = np.linspace(0.0, 1.0, dim) if dim > 1 else np.zeros(1)
    variances = float(condition_number) ** (-exponents)
    corr = np.full((dim, dim), float(correlation))
    np.fill_diagonal(corr, 1.0)
    scale = np.sqrt(variances)
    return corr * scale[:, None] * scale[None, :]


def gaussian(dim: int = 10, condition_number: float = 1.0, correlation: float = 0.0) -> Potential:
    """Zero-mean multivariate normal, ``U(x) = x^T Sigma^{-1} x / 2``.

    Parameters
    ----------
    dim
        Dimension ``d`` of the state ``{"x": array of shape (d,)}``.
    condition_number
        Ratio of the largest to the smallest marginal variance (variances are
        log-spaced from 1 to ``1 / condition_number``).
    correlation
        Equal correlation ``rho`` between every pair of coordinates; needs
        ``-1/(d-1) < rho < 1`` for a positive-definite covariance.

    Observables: ``x`` (exact mean 0) and ``x2 = x**2`` (exact mean ``diag Sigma``);
    ``E[U] = Var[U] = d/2``.
    """
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"gaussian: dim must be >= 1, got {dim}")
    if not condition_number >= 1.0:
        raise ValueError(f"gaussian: condition_number must be >= 1, got {condition_number}")
    lower = -1.0 / (dim - 1) if dim > 1 else -1.0
    if not lower < correlation < 1.0:
        raise ValueError(f"gaussian: correlation must be in ({lower:.4g}, 1) for dim={dim}, got {correlation}")
    cov = gaussian_covariance(dim, condition_number, correlation)
    precision = np.linalg.inv(cov)
    chol = np.linalg.cholesky(cov)

    def quadratic(q):
        x = q["x"]
        return 0.5 * x @ (jnp.asarray(precision, x.dtype) @ x)

    def init(key):
        return {"x": jnp.asarray(chol) @ jax.random.normal(key, (dim,))}

    return Potential(
        terms={"quadratic": quadratic},
        init=init,
        observables={"x": lambda q: q["x"], "x2": lambda q: q["x"] ** 2},
        exact={"x": np.zeros(dim), "x2": np.diag(cov).copy()},
        name="gaussian",
    )


def funnel(dim: int = 10, noncentered: bool = False) -> Potential:
    """Neal's funnel (Ann. Statist. 31 (2003) 705): ``v ~ N(0, 9)``, ``x_i | v ~ N(0, e^v)``.

    ``U = v^2 / 18 + sum_i [ x_i^2 e^{-v} / 2 + v / 2 ]`` over ``dim - 1`` coordinates
    ``x`` (``dim`` in all). The neck (``v << 0``) needs step sizes that the
    mouth does not: fixed-metric HMC does not reach it and underestimates
    ``E[v^2]`` and ``E[x^2]`` (with divergences as the symptom) — the point of
    this stress test. ``noncentered=True`` samples ``z = x e^{-v/2}`` instead
    (state ``{"v", "z"}``, ``U = v^2/18 + |z|^2/2``), the standard cure; the
    observables are still those of ``x``.

    Terms ``scale`` (the ``v`` prior) and ``conditional``; observables ``v``,
    ``v2``, ``x2`` and ``abs_x`` with exact means 0, 9, ``e^{9/2} = 90.017`` and
    ``sqrt(2/pi) e^{9/8} = 2.4577``. ``x2`` is so heavy-tailed (``E[x^4] = 3 e^{18}``)
    that its sample mean converges slowly and its MCSE is underestimated even
    for independent draws: judge the sampler by ``v``, ``v2`` and ``abs_x``.
    """
    dim = int(dim)
    if dim < 2:
        raise ValueError(f"funnel: dim must be >= 2, got {dim}")
    ref = _exact.funnel_moments(dim)

    def scale(q):
        return q["v"] ** 2 / 18.0

    if noncentered:

        def conditional(q):
            return 0.5 * jnp.sum(q["z"] ** 2)

        def x_of(q):
            return q["z"] * jnp.exp(0.5 * q["v"])

        def init(key):
            k1, k2 = jax.random.split(key)
            return {"v": jax.random.normal(k1, ()), "z": jax.random.normal(k2, (dim - 1,))}

    else:

        def conditional(q):
            v, x = q["v"], q["x"]
            return jnp.sum(0.5 * x**2 * jnp.exp(-v)) + 0.5 * (dim - 1) * v

        def x_of(q):
            return q["x"]

        def init(key):
            k1, k2 = jax.random.split(key)
            return {"v": jax.random.normal(k1, ()), "x": jax.random.normal(k2, (dim - 1,))}

    return Potential(
        terms={"scale": scale, "conditional": conditional},
        init=init,
        observables={
            "v": lambda q: q["v"],
            "v2": lambda q: q["v"] ** 2,
            "x2": lambda q: x_of(q) ** 2,
            "abs_x": lambda q: jnp.abs(x_of(q)),
        },
        exact={"v": ref["v"], "v2": ref["v2"], "x2": np.full(dim - 1, ref["x2"]),
               "abs_x": np.full(dim - 1, ref["abs_x"])},
        name="funnel",
    )


def rosenbrock(a: float = 1.0, b: float = 100.0, mu: float = 1.0) -> Potential:
    """Rosenbrock's banana: ``pi(x, y) ~ exp{-[a (x - mu)^2 + b (y - x^2)^2]}``.

    ``x ~ N(mu, 1/2a)`` and ``y | x ~ N(x^2, 1/2b)``, so ``E[y] = mu^2 + 1/2a`` and
    ``Var y = 4 mu^2 s^2 + 2 s^4 + 1/2b`` with ``s^2 = 1/2a`` ((a, b) = (1, 100):
    ``E[y] = 1.5``, ``Var y = 2.505``). Terms ``marginal`` and ``conditional``;
    observables ``x``, ``y`` and ``y2``.
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"rosenbrock: a and b must be > 0, got a={a!r}, b={b!r}")
    ref = _exact.rosenbrock_moments(a, b, mu)

    def marginal(q):
        return a * (q["x"] - mu) ** 2

    def conditional(q):
        return b * (q["y"] - q["x"] ** 2) ** 2

    def init(key):
        k1, k2 = jax.random.split(key)
        x = mu + jax.random.normal(k1, ()) / np.sqrt(2 * a)
        return {"x": x, "y": x**2 + jax.random.normal(k2, ()) / np.sqrt(2 * b)}

    return Potential(
        terms={"marginal": marginal, "conditional": conditional},
        init=init,
        observables={"x": lambda q: q["x"], "y": lambda q: q["y"], "y2": lambda q: q["y"] ** 2},
        exact={"x": ref["x"], "y": ref["y"], "y2": ref["y_var"] + ref["y"] ** 2},
        name="rosenbrock",
    )
