"""Exact reference values as code (formulas in the model docstrings).

Every function returns float64 numpy values; the sampler's summary compares
estimates against them with a z-score of the Monte Carlo standard error.
"""

from __future__ import annotations

import functools

import numpy as np


def lattice_oscillator_correlator(n_sites: int, a: float, mass: float = 1.0, omega: float = 1.0) -> np.ndarray:
    """``<x_0 x_t>`` for ``t = 0 .. n_sites-1`` of the periodic lattice harmonic oscillator.

    Creutz & Freedman, Ann. Phys. 132 (1981) 427: with ``s = sqrt(1 + a^2 w^2 / 4)``
    and ``R = 1 + a^2 w^2 / 2 - a w s``,
    ``<x_0 x_t> = (R^t + R^(N-t)) / ((1 - R^N) 2 m w s)``.
    """
    n = int(n_sites)
    s = np.sqrt(1.0 + (a * omega) ** 2 / 4.0)
    r = 1.0 + (a * omega) ** 2 / 2.0 - a * omega * s
    t = np.arange(n, dtype=np.float64)
    return (r**t + r ** (n - t)) / ((1.0 - r**n) * 2.0 * mass * omega * s)


def lattice_oscillator_x2(n_sites: int, a: float, mass: float = 1.0, omega: float = 1.0) -> float:
    """``<x^2> = (1 + R^N) / ((1 - R^N) 2 m w s)`` (see :func:`lattice_oscillator_correlator`)."""
    return float(lattice_oscillator_correlator(n_sites, a, mass, omega)[0])


def lattice_oscillator_gap(a: float, omega: float = 1.0) -> float:
    """Lattice energy gap ``Delta E`` from ``cosh(a Delta E) = 1 + a^2 w^2 / 2``."""
    return float(np.arccosh(1.0 + (a * omega) ** 2 / 2.0) / a)


def free_field_phi2(shape: tuple[int, ...], m2: float) -> float:
    """``<phi^2>`` of the free field ``S = sum_x [ (1/2) sum_mu (phi_{x+mu} - phi_x)^2 + (m^2/2) phi_x^2 ]``.

    Momentum sum on the periodic lattice: ``(1/V) sum_k 1 / (m^2 + sum_mu 4 sin^2(k_mu / 2))``.
    """
    grids = np.meshgrid(*[2.0 * np.pi * np.arange(n) / n for n in shape], indexing="ij")
    k2 = sum(4.0 * np.sin(k / 2.0) ** 2 for k in grids)
    return float(np.mean(1.0 / (m2 + k2)))


# -- quantum mechanics on a time lattice: transfer matrix --------------------------------
def transfer_matrix_moments(
    potential,
    n_sites: int,
    a: float,
    mass: float = 1.0,
    x_max: float = 6.0,
    points: int = 1201,
) -> dict[str, np.ndarray]:
    """Exact ``<x^2>``, ``<x^4>`` and ``<x_0 x_t>`` of ``S = sum_i [m (x_{i+1}-x_i)^2/(2a) + a V(x_i)]``.

    Kernel ``K(x, y) = h exp[-m (x-y)^2 / (2a) - a V(x)/2 - a V(y)/2]`` on a grid of
    ``points`` in ``[-x_max, x_max]`` (step ``h``), so that ``<O> = Tr(K^N O) / Tr(K^N)``
    on the periodic lattice; evaluated through the eigen-decomposition of the
    symmetric ``K``. Converged to ~1e-9 for the parameters of the shipped models
    (halving ``h`` changes the result below that).
    """
    x = np.linspace(-x_max, x_max, points)
    h = x[1] - x[0]
    v = potential(x)
    kernel = h * np.exp(-mass * (x[:, None] - x[None, :]) ** 2 / (2.0 * a) - a * (v[:, None] + v[None, :]) / 2.0)
    lam, vecs = np.linalg.eigh(kernel)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    keep = lam > lam[0] * 1e-30
    lam, vecs = lam[keep], vecs[:, keep]
    weights = (lam / lam[0]) ** n_sites
    z = weights.sum()
    x2 = float(np.sum(weights * np.einsum("ik,i->k", vecs**2, x**2)) / z)
    x4 = float(np.sum(weights * np.einsum("ik,i->k", vecs**2, x**4)) / z)
    xm = vecs.T @ (x[:, None] * vecs)  # <k|X|l>
    ratio = lam / lam[0]
    t = np.arange(n_sites)
    corr = np.array(
        [np.einsum("k,l,kl->", ratio ** (n_sites - s), ratio**s, xm**2) for s in t]
    ) / z
    gap = float(-np.log(lam[1] / lam[0]) / a) if len(lam) > 1 else float("nan")
    return {"x2": x2, "x4": x4, "correlator": corr, "gap": gap}


@functools.lru_cache(maxsize=32)
def anharmonic_moments(n_sites: int, a: float, g: float, mass: float = 1.0, omega: float = 1.0) -> dict:
    """:func:`transfer_matrix_moments` for ``V = m w^2 x^2 / 2 + g x^4``."""
    return transfer_matrix_moments(lambda x: 0.5 * mass * omega**2 * x**2 + g * x**4, n_sites, a, mass)


@functools.lru_cache(maxsize=32)
def double_well_moments(n_sites: int, a: float, eta: float) -> dict:
    """Schäfer's lattice double well ``S = sum[(x_i - x_{i-1})^2/(4a) + a (x_i^2 - eta^2)^2]``
    (``m = 1/2``), by transfer matrix."""
    return transfer_matrix_moments(lambda x: (x**2 - eta**2) ** 2, n_sites, a, mass=0.5, x_max=eta + 4.0, points=1601)


@functools.lru_cache(maxsize=32)
def classical_double_well_moments(height: float) -> dict[str, float]:
    """``<x^2>``, ``<x^4>`` for the density ``exp(-h (x^2 - 1)^2)`` by quadrature."""
    from scipy import integrate

    def moment(k: int) -> float:
        return integrate.quad(lambda x: x**k * np.exp(-height * (x * x - 1.0) ** 2), -np.inf, np.inf)[0]

    z = moment(0)
    return {"x2": moment(2) / z, "x4": moment(4) / z}


# -- 2D compact U(1) gauge theory -------------------------------------------------------
def _bessel_table(beta: float, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponentially scaled ``I_n(beta) e^{-beta}`` for ``n = -n_max .. n_max`` (and the n grid)."""
    from scipy.special import ive

    n = np.arange(-n_max, n_max + 1)
    return n, ive(np.abs(n), beta)


def u1_plaquette(beta: float, volume: int, n_max: int = 60) -> float:
    """``<cos theta_p>`` of the 2D U(1) Wilson action on a torus of ``volume`` plaquettes.

    ``sum_n I_n^{V-1} (I_{n-1} + I_{n+1}) / 2 / sum_n I_n^V`` (Rusakov 1990; Bonati &
    Rossi, PRD 99 (2019) 054503); ``I_1/I_0`` as ``V -> inf``.
    """
    n, i_n = _bessel_table(beta, n_max + 1)
    inner = slice(1, -1)
    i_c, i_m, i_p = i_n[inner], i_n[:-2], i_n[2:]
    # scale by the largest term to keep the powers finite
    scale = i_c.max()
    num = np.sum((i_c / scale) ** (volume - 1) * (i_m + i_p) / (2.0 * scale))
    den = np.sum((i_c / scale) ** volume)
    return float(num / den)


def u1_topological_susceptibility(beta: float, volume: int, n_max: int = 40, k_max: int = 400) -> float:
    """``chi_t = <Q^2> / V`` with ``Q = (1/2pi) sum_p wrap(theta_p)`` on a torus of ``volume`` plaquettes.

    ``chi_t = -(1/(4 pi^2 V)) sum_n [V(V-1) g^{V-2} g'^2 + V g^{V-1} g'']_{x=n} / sum_n I_n^V`` with
    ``g(x) = int dphi/2pi e^{beta cos phi} cos(x phi)``, ``g(n) = I_n``,
    ``g'(n) = sum_k (-1)^k (I_{k-n} - I_{k+n}) / k`` and
    ``g''(n) = -[pi^2 I_n / 3 + 2 sum_k (-1)^k (I_{k-n} + I_{k+n}) / k^2]``.
    """
    from scipy.special import ive

    k = np.arange(1, k_max + 1)
    sign = (-1.0) ** k
    ns = np.arange(-n_max, n_max + 1)
    g = ive(np.abs(ns), beta)
    g1 = np.array([np.sum(sign * (ive(np.abs(k - m), beta) - ive(np.abs(k + m), beta)) / k) for m in ns])
    g2 = -np.array(
        [np.pi**2 * ive(abs(m), beta) / 3.0 + 2.0 * np.sum(sign * (ive(np.abs(k - m), beta) + ive(np.abs(k + m), beta)) / k**2)
         for m in ns]
    )
    scale = g.max()
    g, g1, g2 = g / scale, g1 / scale, g2 / scale
    v = volume
    num = np.sum(v * (v - 1) * g ** (v - 2) * g1**2 + v * g ** (v - 1) * g2)
    den = np.sum(g**v)
    return float(-num / den / (4.0 * np.pi**2 * v))


# -- statistical targets -------------------------------------------------------------------
def funnel_moments(dim: int = 10) -> dict[str, float]:
    """Neal's funnel: ``v ~ N(0, 9)``, ``x_i | v ~ N(0, e^v)``: ``E[v] = 0``, ``E[v^2] = 9``,
    ``E[x_i^2] = e^{9/2}``, ``E|x_i| = sqrt(2/pi) e^{9/8}``."""
    return {"v": 0.0, "v2": 9.0, "x2": float(np.exp(4.5)), "abs_x": float(np.sqrt(2.0 / np.pi) * np.exp(9.0 / 8.0))}


def rosenbrock_moments(a: float = 1.0, b: float = 100.0, mu: float = 1.0) -> dict[str, float]:
    """``pi ~ exp{-[a (x-mu)^2 + b (y-x^2)^2]}``: ``x ~ N(mu, 1/2a)``, ``y | x ~ N(x^2, 1/2b)``."""
    s2 = 1.0 / (2.0 * a)
    return {"x": mu, "y": mu**2 + s2, "y_var": 4 * mu**2 * s2 + 2 * s2**2 + 1.0 / (2.0 * b)}
