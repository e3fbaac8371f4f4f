"""Transition kernels behind one interface (see :mod:`hmc.kernels.base`).

``kernel="hmc"`` (fixed length, :class:`HMC`), ``kernel="ghmc"`` (partial
momentum refreshment, :class:`GHMC`), ``kernel="nuts"`` (the No-U-Turn sampler,
:class:`NUTS`), or any kernel specification object with
``build(potential_fn, guard) -> Kernel``.
"""

from __future__ import annotations

from typing import Any

from hmc.kernels.base import GUARD_MODES, Info, Kernel, Params, Trajectory
from hmc.kernels.ghmc import GHMC, GHMCState
from hmc.kernels.hmc import HMC, HMCInfo, HMCState
from hmc.kernels.nuts import NUTS, NUTSInfo, NUTSState

KERNELS = {"hmc": HMC, "ghmc": GHMC, "nuts": NUTS}


def resolve(kernel: Any, **settings: Any) -> Any:
    """The kernel specification for ``kernel``: a name in :data:`KERNELS`, built with the
    ``settings`` it takes (``None`` values left at the kernel's defaults), or an object
    with a ``build`` method, returned as it is."""
    if hasattr(kernel, "build"):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)} or an object with a build() method, got {kernel!r}")
    given = {k: v for k, v in settings.items() if v is not None}
    if given.get("trajectory_length") is not None:
        given["num_steps"] = None
    return KERNELS[kernel](**given)


__all__ = ["GHMC", "GHMCState", "GUARD_MODES", "HMC", "HMCInfo", "HMCState", "Info", "KERNELS", "Kernel", "NUTS",
           "NUTSInfo", "NUTSState", "Params",
           "Trajectory", "resolve"]
