"""Exact reference values as code (formulas in the model docstrings).

Every function returns float64 numpy values; the sampler's summary compares
estimates against them with a z-score of the Monte Carlo standard error.
"""

from __future__ import annotations

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
