"""Physical systems as :class:`hmc.Potential` factories, with a registry by name.

``physics_models.REGISTRY`` maps a model name to its factory; every factory
takes documented keyword parameters and returns a ``Potential`` of named terms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from hmc.potential import Potential
from physics_models import exact
from physics_models.gauge import u1_gauge
from physics_models.lattice import phi4
from physics_models.oscillators import anharmonic_oscillator, classical_double_well, double_well, harmonic_oscillator
from physics_models.particles import lennard_jones, quench
from physics_models.fermions import schwinger
from physics_models.qcd import qcd
from physics_models.statistical import funnel, gaussian, gaussian_covariance, rosenbrock
from physics_models.yang_mills import yang_mills

REGISTRY: dict[str, Callable[..., Potential]] = {
    "gaussian": gaussian,
    "funnel": funnel,
    "rosenbrock": rosenbrock,
    "harmonic_oscillator": harmonic_oscillator,
    "anharmonic_oscillator": anharmonic_oscillator,
    "double_well": double_well,
    "classical_double_well": classical_double_well,
    "phi4": phi4,
    "u1_gauge": u1_gauge,
    "lennard_jones": lennard_jones,
    "schwinger": schwinger,
    "yang_mills": yang_mills,
    "qcd": qcd,
}


def get(name: str) -> Callable[..., Potential]:
    """The factory registered as ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(REGISTRY)}") from None


def parameters(name: str) -> dict[str, object]:
    """``{parameter: default}`` of a registered model."""
    signature = inspect.signature(get(name))
    return {k: p.default for k, p in signature.parameters.items()}


__all__ = [
    "REGISTRY",
    "anharmonic_oscillator",
    "classical_double_well",
    "double_well",
    "exact",
    "funnel",
    "gaussian",
    "gaussian_covariance",
    "get",
    "harmonic_oscillator",
    "lennard_jones",
    "parameters",
    "schwinger",
    "phi4",
    "qcd",
    "quench",
    "rosenbrock",
    "u1_gauge",
    "yang_mills",
]
