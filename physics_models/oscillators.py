"""Euclidean lattice path integrals of a quantum particle in one dimension."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hmc.potential import Potential
from physics_models import exact as _exact


def _check_lattice(name: str, n_sites: int, a: float, mass: float, omega: float) -> None:
    if int(n_sites) != n_sites or n_sites < 2:
        raise ValueError(f"{name}: n_sites must be an integer >= 2, got {n_sites!r}")
    for key, value in (("a", a), ("mass", mass), ("omega", omega)):
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value!r}")


def harmonic_oscillator(n_sites: int = 64, a: float = 0.5, mass: float = 1.0, omega: float = 1.0) -> Potential:
    """Harmonic oscillator on a periodic Euclidean time lattice (Creutz & Freedman 1981).

    ``S[x] = sum_i [ m (x_{i+1} - x_i)^2 / (2a) + a m w^2 x_i^2 / 2 ]``, ``x_N = x_0``,
    with ``hbar = 1`` and lattice spacing ``a`` (time extent ``N a`` = inverse temperature).

    Parameters
    ----------
    n_sites
        Number of time slices ``N``; the state is ``{"x": array of shape (N,)}``.
    a
        Lattice spacing.
    mass, omega
        Particle mass ``m`` and angular frequency ``w``.

    Terms: ``kinetic`` (the hopping part) and ``harmonic`` (the potential part).
    Observables: ``x2`` and ``x4`` (site averages of ``x^2`` and ``x^4``),
    ``correlator`` (``C(t) = (1/N) sum_i x_i x_{i+t}``, ``t = 0..N-1``) and
    ``action``. All four have exact values: ``<x^2>`` and ``C(t)`` in closed
    form, ``<x^4> = 3 <x^2>^2`` (Gaussian) and ``<S> = N/2`` (equipartition).
    """
    _check_lattice("harmonic_oscillator", n_sites, a, mass, omega)
    n = int(n_sites)

    def kinetic(q):
        x = q["x"]
        return mass / (2.0 * a) * jnp.sum((jnp.roll(x, -1) - x) ** 2)

    def harmonic(q):
        x = q["x"]
        return a * mass * omega**2 / 2.0 * jnp.sum(x**2)

    def init(key):
        return {"x": jax.random.normal(key, (n,))}

    def correlator(q):
        x = q["x"]
        # C(t) = (1/N) sum_i x_i x_{i+t}, every t at once through the FFT of the periodic lattice.
        xf = jnp.fft.rfft(x)
        return jnp.fft.irfft(xf * jnp.conj(xf), n=n) / n

    corr = _exact.lattice_oscillator_correlator(n, a, mass, omega)
    return Potential(
        terms={"kinetic": kinetic, "harmonic": harmonic},
        init=init,
        observables={
            "x2": lambda q: jnp.mean(q["x"] ** 2),
            "x4": lambda q: jnp.mean(q["x"] ** 4),
            "correlator": correlator,
            "action": lambda q: kinetic(q) + harmonic(q),
        },
        exact={"x2": corr[0], "x4": 3.0 * corr[0] ** 2, "correlator": corr, "action": n / 2.0},
        name="harmonic_oscillator",
    )

