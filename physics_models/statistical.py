"""Statistical targets with exact moments: sampler stress tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hmc.potential import Potential


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
