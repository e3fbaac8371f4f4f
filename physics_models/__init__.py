"""Physical systems as :class:`hmc.Potential` factories, with a registry by name.

``physics_models.REGISTRY`` maps a model name to its factory; every factory
takes documented keyword parameters and returns a ``Potential`` of named terms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from hmc.potential import Potential
from physics_models import exact
from physics_models.lattice import phi4
from physics_models.oscillators import harmonic_oscillator
from physics_models.statistical import gaussian, gaussian_covariance

REGISTRY: dict[str, Callable[..., Potential]] = {
    "gaussian": gaussian,
    "harmonic_oscillator": harmonic_oscillator,
    "phi4": phi4,
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


__all__ = ["REGISTRY", "exact", "gaussian", "gaussian_covariance", "get", "harmonic_oscillator", "parameters", "phi4"]
