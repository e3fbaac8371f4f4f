"""Euclidean lattice path integrals of a quantum particle in one dimension, and a
classical double well.

All path-integral models share one action on a periodic time lattice of ``N``
sites and spacing ``a`` (``hbar = 1``):

    S[x] = sum_i [ m (x_{i+1} - x_i)^2 / (2a) + a V(x_i) ],   x_N = x_0,

so the time extent ``N a`` is the inverse temperature. Each model is built by
one factory from its potential ``V``; the observables are the same for all.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from hmc.potential import Potential
from physics_models import exact as _exact


def _check_lattice(name: str, n_sites: int, a: float, mass: float, omega: float = 1.0) -> None:
    if int(n_sites) != n_sites or n_sites < 2:
        raise ValueError(f"{name}: n_sites must be an integer >= 2, got {n_sites!r}")
    for key, value in (("a", a), ("mass", mass), ("omega", omega)):
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value!r}")


def _path_integral(
    name: str,
    n_sites: int,
    a: float,
    mass: float,
    potential_terms: dict[str, Callable[[jax.Array], jax.Array]],
    exact: dict,
    init_scale: float = 1.0,
    extra_observables: dict | None = None,
) -> Potential:
    """The lattice action with ``V = sum(potential_terms)`` (each a function of the path)."""
    n = int(n_sites)

    def kinetic(q):
        x = q["x"]
        return mass / (2.0 * a) * jnp.sum((jnp.roll(x, -1) - x) ** 2)

    terms = {"kinetic": kinetic}
    for term, v in potential_terms.items():
        terms[term] = (lambda v: lambda q: a * jnp.sum(v(q["x"])))(v)

    def init(key):
        return {"x": init_scale * jax.random.normal(key, (n,))}

    def correlator(q):
        x = q["x"]
        # C(t) = (1/N) sum_i x_i x_{i+t} for every t at once, by FFT on the periodic lattice
        xf = jnp.fft.rfft(x)
        return jnp.fft.irfft(xf * jnp.conj(xf), n=n) / n

    def action(q):
        return sum(fn(q) for fn in terms.values())

    observables = {
        "x2": lambda q: jnp.mean(q["x"] ** 2),
        "x4": lambda q: jnp.mean(q["x"] ** 4),
        "correlator": correlator,
        "action": action,
        **(extra_observables or {}),
    }
    return Potential(terms=terms, init=init, observables=observables, exact=exact, name=name)


def harmonic_oscillator(n_sites: int = 64, a: float = 0.5, mass: float = 1.0, omega: float = 1.0) -> Potential:
    """Harmonic oscillator on a periodic Euclidean time lattice (Creutz & Freedman,
    Ann. Phys. 132 (1981) 427): ``V(x) = m w^2 x^2 / 2``.

    Parameters
    ----------
    n_sites
        Number of time slices ``N``; the state is ``{"x": array of shape (N,)}``.
    a
        Lattice spacing.
    mass, omega
        Particle mass ``m`` and angular frequency ``w``.

    Terms: ``kinetic`` (the hopping part) and ``harmonic``. Observables: ``x2``
    and ``x4`` (site averages of ``x^2`` and ``x^4``), ``correlator``
    (``C(t) = (1/N) sum_i x_i x_{i+t}``, ``t = 0..N-1``) and ``action``, all
    exact: ``<x^2>`` and ``C(t)`` in closed form, ``<x^4> = 3 <x^2>^2``
    (Gaussian) and ``<S> = N/2`` (equipartition).
    """
    _check_lattice("harmonic_oscillator", n_sites, a, mass, omega)
    corr = _exact.lattice_oscillator_correlator(int(n_sites), a, mass, omega)
    exact = {"x2": corr[0], "x4": 3.0 * corr[0] ** 2, "correlator": corr, "action": int(n_sites) / 2.0}
    return _path_integral(
        "harmonic_oscillator", n_sites, a, mass, {"harmonic": lambda x: 0.5 * mass * omega**2 * x**2}, exact
    )


def anharmonic_oscillator(
    n_sites: int = 64, a: float = 0.5, mass: float = 1.0, omega: float = 1.0, g: float = 1.0
) -> Potential:
    """Anharmonic oscillator on a periodic time lattice: ``V(x) = m w^2 x^2 / 2 + g x^4``.

    Parameters as :func:`harmonic_oscillator`, plus the quartic coupling ``g >= 0``.
    Terms ``kinetic``, ``harmonic``, ``quartic``; observables as the harmonic
    oscillator, with exact ``<x^2>``, ``<x^4>`` and ``C(t)`` from the transfer
    matrix of the same lattice action (:func:`physics_models.exact.anharmonic_moments`).
    Reference (m = w = 1, g = 1, N = 64, a = 0.5): ``<x^2> = 0.2419336950``.
    """
    _check_lattice("anharmonic_oscillator", n_sites, a, mass, omega)
    if g < 0:
        raise ValueError(f"anharmonic_oscillator: g must be >= 0, got {g!r}")
    ref = _exact.anharmonic_moments(int(n_sites), a, g, mass, omega)
    exact = {"x2": ref["x2"], "x4": ref["x4"], "correlator": ref["correlator"]}
    return _path_integral(
        "anharmonic_oscillator",
        n_sites,
        a,
        mass,
        {"harmonic": lambda x: 0.5 * mass * omega**2 * x**2, "quartic": lambda x: g * x**4},
        exact,
        init_scale=0.5,
    )


def double_well(n_sites: int = 200, a: float = 0.1, eta: float = 1.4) -> Potential:
    """Quantum double well in Schäfer's convention (hep-lat/0411010): ``H = p^2 + (x^2 - eta^2)^2``.

    Lattice action ``S = sum_i [ (x_i - x_{i-1})^2 / (4a) + a (x_i^2 - eta^2)^2 ]``
    (mass ``m = 1/2``). Paths tunnel between the wells at ``+-eta`` through
    instantons; ``sign_flips`` counts the sign changes along the path (twice
    the number of tunnelling events), so the traces show them directly.

    Terms ``kinetic``, ``potential``; observables ``x2``, ``x4``, ``correlator``,
    ``action``, ``sign_flips`` and ``mean_x`` (which should wander between
    ``+-eta`` as the chain tunnels). Exact ``<x^2>``, ``<x^4>``, ``C(t)`` by
    transfer matrix; reference (N = 200, a = 0.1, eta = 1.4): ``<x^2> = 1.3492451486``.
    """
    _check_lattice("double_well", n_sites, a, 0.5)
    ref = _exact.double_well_moments(int(n_sites), a, eta)
    exact = {"x2": ref["x2"], "x4": ref["x4"], "correlator": ref["correlator"]}

    def sign_flips(q):
        x = q["x"]
        return jnp.sum((x * jnp.roll(x, -1)) < 0).astype(x.dtype)

    def init(key):
        # start every path in one well: tunnelling is what the run has to show
        return {"x": eta + 0.3 * jax.random.normal(key, (int(n_sites),))}

    model = _path_integral(
        "double_well", n_sites, a, 0.5, {"potential": lambda x: (x**2 - eta**2) ** 2}, exact,
        extra_observables={"sign_flips": sign_flips, "mean_x": lambda q: jnp.mean(q["x"])},
    )
    return Potential(terms=model.terms, init=init, observables=model.observables, exact=model.exact,
                     name=model.name)


def classical_double_well(height: float = 1.0, dim: int = 1) -> Potential:
    """A classical particle in ``U(x) = h (x^2 - 1)^2`` (``dim`` independent copies).

    Observables ``x`` (to watch the hops between ``x = +-1``), ``x2`` and ``x4``,
    with exact values by quadrature (h = 1: ``<x^2> = 0.832745487128``); the
    identity ``<x U'(x)> = 1`` gives ``<x^4> - <x^2> = 1/(4h)``.
    """
    if not height > 0:
        raise ValueError(f"classical_double_well: height must be > 0, got {height!r}")
    if int(dim) != dim or dim < 1:
        raise ValueError(f"classical_double_well: dim must be an integer >= 1, got {dim!r}")
    ref = _exact.classical_double_well_moments(height)

    def potential(q):
        return height * jnp.sum((q["x"] ** 2 - 1.0) ** 2)

    return Potential(
        terms={"potential": potential},
        init=lambda key: {"x": jnp.sign(jax.random.normal(key, (int(dim),))) + 0.1 * jax.random.normal(
            jax.random.fold_in(key, 1), (int(dim),))},
        observables={"x": lambda q: q["x"], "x2": lambda q: q["x"] ** 2, "x4": lambda q: q["x"] ** 4},
        exact={"x": 0.0, "x2": ref["x2"], "x4": ref["x4"]},
        name="classical_double_well",
    )
