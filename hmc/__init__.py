"""guarded-hmc: Hamiltonian Monte Carlo in JAX with a gradient guard."""

from hmc import adaptation, diagnostics, groups, guard, integrators, kernel
from hmc.kernel import HMCInfo, HMCState, build_kernel
from hmc.potential import Potential
from hmc.reversibility import check_reversibility
from hmc.sampler import GuardRefused, SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "GuardRefused",
    "HMCInfo",
    "HMCState",
    "Potential",
    "SampleResult",
    "__version__",
    "adaptation",
    "build_kernel",
    "check_reversibility",
    "diagnostics",
    "groups",
    "guard",
    "integrators",
    "kernel",
    "sample",
]
