"""The fixed-length HMC kernel as a function (kept for existing imports); the kernels
live in :mod:`hmc.kernels`."""

from hmc.kernels.base import GUARD_MODES
from hmc.kernels.hmc import HMCInfo, HMCState, build_kernel, init

__all__ = ["GUARD_MODES", "HMCInfo", "HMCState", "build_kernel", "init"]
