"""The settings of one :func:`hmc.sample` call: validated once, frozen, hashable.

:class:`Settings` replaces a block of checks at the top of the driver: every
argument is checked here with a message that names it, and what the compiled
chunk programs depend on is one hashable :class:`Program` (the key of their cache).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hmc import adaptation as _adaptation
from hmc import kernels as _kernels
from hmc.kernels import tempering as _tempering
from hmc.guard import POLICIES

PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}
MIN_WARMUP_AUTO_LENGTH = 100
FALLBACK_NUM_STEPS = 10  # kernel "hmc" without a length, where "auto" cannot adapt one

logger = logging.getLogger("hmc")


def _one_of(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything :func:`hmc.sample` was asked for, checked (see its docstring)."""

    kernel: Any
    seed: int = 0
    num_chains: int = 4
    num_warmup: int = 500
    num_samples: int = 1000
    thin: int = 1
    step_size: float | None = None
    mass_matrix: str = "diagonal"
    target_accept: float = 0.8
    adaptation: str = "pooled"
    guard: str = "reject"
    max_trip_fraction: float = 0.01
    allow: tuple[str, ...] = ()
    guard_check: str = "trajectory"
    probe_chains: int = 4
    chunk_size: int = 100
    precision: str | None = None
    devices: int | str | None = None

    def __post_init__(self) -> None:
        _one_of("guard", self.guard, POLICIES)
        _one_of("guard_check", self.guard_check, ["trajectory", "step"])
        _one_of("mass_matrix", self.mass_matrix, _adaptation.MASS_MATRIX_KINDS)
        _one_of("adaptation", self.adaptation, ["pooled", "per_chain"])
        if self.precision is not None:
            _one_of("precision", self.precision, list(PRECISIONS))
        for name, low in (("num_chains", 1), ("num_samples", 1), ("num_warmup", 0), ("thin", 1), ("chunk_size", 1)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.step_size is None and self.num_warmup == 0:
            raise ValueError("step_size=None needs num_warmup > 0 to adapt it; give a float step_size")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept!r}")
        if not 0.0 <= self.max_trip_fraction <= 1.0:
            raise ValueError(f"max_trip_fraction must be in [0, 1], got {self.max_trip_fraction!r}")
        if getattr(self.kernel, "adaptive_length", False):
            if not self.pooled:
                raise ValueError("trajectory_length='auto' adapts the length across chains: it needs "
                                 "adaptation='pooled'")
            if self.num_warmup < MIN_WARMUP_AUTO_LENGTH:
                raise ValueError(f"trajectory_length='auto' needs num_warmup >= {MIN_WARMUP_AUTO_LENGTH} to adapt the "
                                 f"length, got num_warmup={self.num_warmup}; give a float trajectory_length")

    @classmethod
    def from_arguments(cls, kernel: Any = "hmc", *, integrator: str | None, num_steps: int | None,
                       trajectory_length: float | None, jitter: float, divergence_threshold: float,
                       warmup_trajectory_length: float | None = None,
                       persistence: float | None = None, max_num_steps: int | None = None,
                       max_tree_depth: int | None = None,
                       timescales: Any = None, tempering: Any = None, **rest: Any) -> Settings:
        """The settings of ``hmc.sample(**arguments)``; the trajectory arguments go to a
        kernel named by a string (a kernel object carries its own)."""
        extra = {} if persistence is None else {"persistence": float(persistence)}
        if extra and kernel != "ghmc":
            raise ValueError(f"persistence applies to kernel='ghmc' only, not to kernel={kernel!r}")
        if max_tree_depth is not None:
            if kernel != "nuts":
                raise ValueError(f"max_tree_depth applies to kernel='nuts' only, not to kernel={kernel!r}")
            extra["max_tree_depth"] = max_tree_depth
        if warmup_trajectory_length is not None:
            if kernel not in ("hmc", "ghmc"):
                raise ValueError(f"warmup_trajectory_length applies to kernels 'hmc' and 'ghmc' with a float "
                                 f"trajectory_length, not to kernel={kernel!r}")
            extra["warmup_trajectory_length"] = warmup_trajectory_length
        if kernel == "hmc" and num_steps is None and trajectory_length is None:
            trajectory_length = default_length(jitter, tempering, rest)
        spec = _kernels.resolve(kernel, integrator=integrator, num_steps=num_steps,
                                trajectory_length=trajectory_length, jitter=float(jitter),
                                divergence_threshold=float(divergence_threshold), max_num_steps=max_num_steps,
                                timescales=timescales, **extra)
        if trajectory_length == "auto" and not getattr(spec, "adaptive_length", False):
            raise ValueError(f"trajectory_length='auto' needs a kernel with a trajectory (kernel='hmc'); "
                             f"{kernel!r} has none")
        spec = _tempering.Tempered.of(spec, tempering)
        rest["allow"] = tuple(rest.get("allow", ()))
        return cls(kernel=spec, **rest)

    @property
    def guard_on(self) -> bool:
        return self.guard != "off"

    @property
    def pooled(self) -> bool:
        return self.adaptation == "pooled"

    @property
    def in_loop_guard(self) -> str:
        """How the kernel notices a trip: ``"trajectory"``, ``"step"`` or ``"off"`` (a kernel
        that locates its own trips, as tempering does, always checks per step)."""
        if not self.guard_on:
            return "off"
        return "step" if getattr(self.kernel, "locates_trips", False) else self.guard_check

    @property
    def total(self) -> int:
        return self.num_warmup + self.num_samples

    def dtype(self, positions: Any) -> Any:
        return working_dtype(self.precision, positions)


#: The arguments that describe a fixed-length trajectory: given any of them, a potential
#: without a named kernel runs ``kernel="hmc"`` whatever its kind.
TRAJECTORY_ARGUMENTS = ("num_steps", "trajectory_length", "jitter", "warmup_trajectory_length", "persistence",
                        "timescales", "tempering")


def default_kernel(potential: Any, kernel: Any, **trajectory: Any) -> Any:
    """The kernel ``hmc.sample(potential)`` runs when none is named (``kernel=None``):
    ``"nuts"`` for a Bayesian potential (``potential.kind == "bayesian"``: a numpyro model
    or a log density), ``"hmc"`` for a physics model, or whenever a trajectory setting
    (:data:`TRAJECTORY_ARGUMENTS`) is given. A named kernel is returned unchanged.

    Why: on a posterior the scales differ by orders of magnitude between directions and
    regions (a funnel's neck, a volatility's persistence), and a tree that stops at the
    U-turn finds each region's length; measured on inference-gym's stochastic-volatility
    target at the defaults, fixed-length HMC ends with R-hat 61 where NUTS gives 1.002
    (BENCHMARKS.md, "Default kernel"). On lattice fields the adapted fixed length wins
    per gradient (the efficiency table), so physics keeps ``"hmc"``."""
    if kernel is not None:
        return kernel
    given = [name for name in TRAJECTORY_ARGUMENTS if trajectory.get(name) not in (None, 0.0, 0)]
    if getattr(potential, "kind", "physics") == "bayesian" and not given:
        return "nuts"
    return "hmc"


def default_mass_matrix(potential: Any, mass_matrix: str | None) -> str:
    """``mass_matrix=None``: ``"identity"`` for a state with group leaves (their mass is a
    scalar), ``"diagonal"`` otherwise. An adapted mass matrix on a group leaf is refused."""
    groups = getattr(potential, "groups", None) or {}
    if mass_matrix is None:
        return "identity" if groups else "diagonal"
    if groups and mass_matrix != "identity":
        name, group = next(iter(groups.items()))
        raise ValueError(f"mass_matrix={mass_matrix!r}: the mass of group leaf {name!r} ({group.name}) is a scalar, "
                         "so an adapted diagonal or dense mass matrix does not apply; use mass_matrix='identity'")
    return mass_matrix


def default_length(jitter: float, tempering: Any, rest: dict[str, Any]) -> str | None:
    """Kernel ``"hmc"`` given neither ``num_steps`` nor ``trajectory_length``: ``"auto"``
    where it can be adapted (pooled adaptation, ``num_warmup >= 100``, no tempering, no
    ``jitter`` of a fixed length asked for); otherwise ``None``, the kernel's
    ``num_steps=10``. A fixed ten steps without jitter resonates on any target whose
    whitened modes share a frequency (R-hat 8.0 and 18 800 gradients per effective
    sample on a 100-d diagonal Gaussian, against 12.9 with ``auto``; BENCHMARKS.md)."""
    if jitter or tempering is not None or rest.get("adaptation", "pooled") != "pooled":
        return None
    if rest.get("num_warmup", 500) < MIN_WARMUP_AUTO_LENGTH:
        return None
    logger.info("trajectory_length: auto (kernel 'hmc' without num_steps or trajectory_length: the length is "
                "adapted in warmup; give either to fix it)")
    return "auto"


def working_dtype(precision: str | None, positions: Any) -> Any:
    """The working dtype: ``precision``, or that of the initial states."""
    if precision is None:
        leaves = jax.tree_util.tree_leaves(positions)
        # a complex leaf (group matrices) works in its real counterpart: complex64 -> float32
        return jnp.result_type(*[jnp.real(jnp.zeros((), jnp.asarray(x).dtype)).dtype for x in leaves])
    _one_of("precision", precision, list(PRECISIONS))
    if precision == "float64" and not jax.config.read("jax_enable_x64"):
        # A process-wide switch: every array created afterwards may be 64-bit.
        jax.config.update("jax_enable_x64", True)
    return PRECISIONS[precision]


@dataclasses.dataclass(frozen=True)
class Program:
    """What the compiled chunk programs depend on besides array shapes (their cache key)."""

    kernel: Any
    guard: str
    mass_matrix: str
    pooled: bool
    adapt_step_size: bool
    target_accept: float
    num_warmup: int
    thin: int
    names: tuple[str, ...]
    record: tuple[str, ...]
    chunk_size: int

    @classmethod
    def of(cls, settings: Settings, mass_matrix: str, names: Sequence[str], record: Sequence[str]) -> Program:
        return cls(kernel=settings.kernel, guard=settings.in_loop_guard, mass_matrix=mass_matrix,
                   pooled=settings.pooled, adapt_step_size=settings.step_size is None,
                   target_accept=float(settings.target_accept), num_warmup=int(settings.num_warmup),
                   thin=int(settings.thin), names=tuple(names), record=tuple(record),
                   chunk_size=int(settings.chunk_size))


__all__ = ["PRECISIONS", "Program", "Settings", "working_dtype"]
