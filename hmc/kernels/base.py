"""The kernel interface the driver runs: pure, per chain, told apart by nothing.

A kernel *specification* is a hashable object (a frozen dataclass) with
``build(potential_fn, guard) -> Kernel``. The built :class:`Kernel` holds three
pure functions of one chain:

``init(position) -> state``
    The chain state at ``position``. It has at least ``position``,
    ``potential_energy`` and ``potential_energy_grad``.
``step(key, state, params) -> (state, info)``
    One transition. ``params`` is :class:`Params` (the adapted step size and
    inverse mass matrix). ``info`` has at least the fields of :class:`Info`;
    ``guard_tripped`` is the trip flag.
``replay(key, state, params) -> info``
    Re-runs a tripped transition with the per-step check: ``state`` is the state
    the tripped transition left the chain in (a tripped transition is rejected),
    ``key`` the same key. ``info.guard_step`` and ``info.guard_position`` locate
    the first failing gradient; ``guard_tripped`` tells a broken gradient from a
    blow-up (``is_divergent``).

``guard`` is ``"trajectory"`` (the step only flags; the driver replays tripped
transitions), ``"step"`` (the step locates itself) or ``"off"``.

The driver vmaps the kernel over chains, shards the chain axis, runs chunks of
transitions in one compiled loop, thins, adapts ``params`` in warmup and
replays tripped transitions, without knowing which kernel it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from jax import Array

from hmc import integrators as _integrators

PyTree = Any
GUARD_MODES = ("step", "trajectory", "off")


class Params(NamedTuple):
    """What warmup adapts: the step size, the inverse mass matrix (``None``: identity) and,
    with ``trajectory_length="auto"``, this transition's trajectory length (the same for
    every chain; ``None``: the kernel's own setting) and, for the driver, the half-width of
    its jitter (``None`` or 1: uniform over ``(0, 2T)``; see :func:`hmc.adaptation.length_scale`)."""

    step_size: Array
    inverse_mass_matrix: Array | None
    trajectory_length: Array | None = None
    length_jitter: Array | None = None


class Info(NamedTuple):
    """The per-transition fields the driver reads (a kernel's info may hold more).

    Attributes
    ----------
    acceptance_rate
        ``min(1, exp(-delta_energy))``; 0 for a tripped or non-finite trajectory.
    is_accepted
        Whether the proposal became the new state.
    is_divergent
        ``delta_energy`` above the divergence threshold or non-finite; or the
        gradient went non-finite at a state whose energy was already more than
        the threshold above the start, +inf included (an unstable integration
        that overflowed, or a step into a region of zero density: not a broken
        gradient).
    energy
        Hamiltonian ``U + K`` of the state kept (Stan's ``energy__``).
    delta_energy
        ``H(proposal) - H(start)``.
    num_steps, step_size
        What this trajectory used (after jitter).
    guard_tripped
        Some gradient in the trajectory was non-finite at a state whose energy
        was still within the divergence threshold of the start, or NaN: a broken
        gradient.
    guard_step
        Index of the first non-finite gradient evaluation (``-1`` if none).
    guard_position
        The position where it was evaluated (the start position if none).
    """

    acceptance_rate: Array
    is_accepted: Array
    is_divergent: Array
    energy: Array
    delta_energy: Array
    num_steps: Array
    step_size: Array
    guard_tripped: Array
    guard_step: Array
    guard_position: PyTree
    proposal: PyTree = None
    proposal_velocity: PyTree = None


class Kernel(NamedTuple):
    """A built kernel: pure per-chain functions (see the module docstring)."""

    init: Callable[[PyTree], Any]
    step: Callable[[Array, Any, Params], tuple[Any, Any]]
    replay: Callable[[Array, Any, Params], Any]


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Settings shared by kernels that integrate Hamilton's equations.

    Exactly one of ``num_steps`` (integrator steps per transition) and
    ``trajectory_length`` (``ceil(tau / step_size)`` steps); ``jitter`` in
    ``[0, 1)`` scales the step size (fixed ``num_steps``) or the length by
    ``1 + jitter * u`` with ``u ~ U(-1, 1)`` drawn per transition.
    ``trajectory_length="auto"``: the driver adapts the length in warmup (ChEES, see
    :mod:`hmc.adaptation`) and passes each transition's length in :class:`Params`. ``max_num_steps``
    caps the steps of a ``trajectory_length`` trajectory (it is then shorter than asked
    for): from a poor start the first step size can be tiny, and an uncapped trajectory
    takes so many steps that the run looks hung. ``warmup_trajectory_length`` (with a
    float ``trajectory_length``): the length of warmup's transitions, jittered alike; the
    draws take ``trajectory_length``. Equilibrating from the start wants longer
    trajectories than drawing does where the start is far from typical.
    """

    integrator: str = "minimum_norm"
    num_steps: int | None = 10
    trajectory_length: float | str | None = None
    jitter: float = 0.0
    divergence_threshold: float = 1000.0
    max_num_steps: int = 1000
    timescales: tuple | None = None
    warmup_trajectory_length: float | None = None

    def __post_init__(self) -> None:
        _integrators.coefficients(self.integrator)
        object.__setattr__(self, "timescales", normalize_timescales(self.timescales))
        if (self.num_steps is None) == (self.trajectory_length is None):
            raise ValueError("give exactly one of num_steps and trajectory_length")
        if self.num_steps is not None and int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.adaptive_length:
            if self.jitter:
                raise ValueError("jitter applies to a fixed trajectory_length; trajectory_length='auto' jitters "
                                 "the length itself (a Halton sequence over (0, 2T), the same for every chain)")
        elif self.trajectory_length is not None and (isinstance(self.trajectory_length, str)
                                                     or not self.trajectory_length > 0):
            raise ValueError(f"trajectory_length must be > 0 or 'auto', got {self.trajectory_length!r}")
        if self.warmup_trajectory_length is not None:
            if self.trajectory_length is None or self.adaptive_length:
                raise ValueError("warmup_trajectory_length needs a float trajectory_length (with num_steps or "
                                 "trajectory_length='auto' the warmup's length is not set by hand)")
            if isinstance(self.warmup_trajectory_length, str) or not self.warmup_trajectory_length > 0:
                raise ValueError(f"warmup_trajectory_length must be > 0, got {self.warmup_trajectory_length!r}")
        if int(self.max_num_steps) != self.max_num_steps or self.max_num_steps < 1:
            raise ValueError(f"max_num_steps must be an integer >= 1, got {self.max_num_steps!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    @property
    def adaptive_length(self) -> bool:
        """``trajectory_length="auto"``: the length is adapted in warmup."""
        return self.trajectory_length == "auto"

    @property
    def gradients_per_step(self) -> int:
        """Gradient evaluations per integrator step (``info.num_steps`` counts steps); with
        ``timescales``, those of the outermost level (the costly force, as lattice practice
        counts)."""
        if self.timescales:
            return self.evaluations_per_level[0]
        return _integrators.gradient_evaluations_per_step(self.integrator)

    @property
    def evaluations_per_level(self) -> tuple[int, ...]:
        """Fresh force evaluations of each level per integrator step."""
        if not self.timescales:
            return _integrators.evaluations_per_step(self.integrator, (1,))
        return _integrators.evaluations_per_step(self.integrator, tuple(level.steps for level in self.timescales),
                                                 self.level_integrators)

    @property
    def level_integrators(self) -> tuple[str, ...] | None:
        """Each level's integrator (a level without its own uses ``integrator``)."""
        if not self.timescales:
            return None
        return tuple(level.integrator or self.integrator for level in self.timescales)

    def split(self, potential: Any, extend: Callable[[PyTree], PyTree] | None = None) -> _integrators.Split | None:
        """The potential split into the ``timescales`` levels (``None`` without them).
        ``potential`` is a :class:`hmc.Potential` (its named terms are split); ``extend``
        maps a position to what the terms take (the state with its auxiliary fields)."""
        if not self.timescales:
            return None
        terms = getattr(potential, "terms", None)
        if terms is None:
            raise ValueError("timescales split a Potential's named terms; this kernel was built for a bare function")
        check_timescales(self.timescales, list(terms))
        if extend is None and getattr(potential, "auxiliary", None):
            extend = potential.with_auxiliary
        groups = getattr(potential, "groups", None)
        if groups:  # every level's gradient is the algebra force on the group leaves
            from hmc.geometry import lifted

            inner = extend
            extend = (lambda q: lifted(groups, q)) if inner is None else (lambda q: inner(lifted(groups, q)))
        return _integrators.Split(tuple(_level_energy(terms, level.terms, extend) for level in self.timescales),
                                  tuple(level.steps for level in self.timescales), self.level_integrators)


def _level_energy(terms: Any, names: tuple[str, ...], extend: Callable | None) -> Callable[[PyTree], Array]:
    fns = [terms[name] for name in names]

    def energy(position: PyTree) -> Array:
        import jax.numpy as jnp

        if extend is not None:
            position = extend(position)
        total = jnp.asarray(fns[0](position))
        for fn in fns[1:]:
            total = total + fn(position)
        return total

    return energy


class Level(NamedTuple):
    """One level of ``timescales``: its terms, its steps per drift of the level outside it,
    and its integrator (``None``: the kernel's)."""

    terms: tuple[str, ...]
    steps: int
    integrator: str | None = None


def normalize_timescales(timescales: Any) -> tuple | None:
    """``[{"terms": [...], "steps": n, "integrator": name}, ...]`` (outermost level first;
    ``steps`` defaults to 1, ``integrator`` to the kernel's) as a hashable tuple of
    :class:`Level`; ``None`` or empty: no nesting."""
    if timescales is None:
        return None
    if isinstance(timescales, (str, bytes)) or not hasattr(timescales, "__iter__"):
        raise ValueError(f"timescales must be a list of levels {{'terms': [...], 'steps': n}}, got {timescales!r}")
    levels = []
    for i, level in enumerate(timescales):
        if isinstance(level, dict):
            unknown = sorted(set(level) - {"terms", "steps", "integrator"})
            if unknown:
                raise ValueError(f"timescales[{i}]: unknown key {unknown[0]!r} (a level has 'terms', 'steps' "
                                 f"and 'integrator')")
            if "terms" not in level:
                raise ValueError(f"timescales[{i}]: missing 'terms' (the names of the terms on this level)")
            terms, steps, integrator = level["terms"], level.get("steps", 1), level.get("integrator")
        else:
            try:
                terms, steps, integrator = level if len(level) == 3 else (*level, None)
            except (TypeError, ValueError):
                raise ValueError(f"timescales[{i}] must be {{'terms': [...], 'steps': n}}, got {level!r}") from None
        if isinstance(terms, str):
            terms = [terms]
        terms = tuple(terms)
        if not terms or not all(isinstance(t, str) and t for t in terms):
            raise ValueError(f"timescales[{i}].terms must be a non-empty list of term names, got {list(terms)!r}")
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps or steps < 1:
            raise ValueError(f"timescales[{i}].steps must be an integer >= 1, got {steps!r}")
        if integrator is not None and integrator not in _integrators.COEFFICIENTS:
            raise ValueError(f"timescales[{i}].integrator: unknown integrator {integrator!r}; choose one of "
                             f"{sorted(_integrators.COEFFICIENTS)}")
        levels.append(Level(terms, int(steps), integrator))
    if not levels:
        return None
    return tuple(levels)


def check_timescales(timescales: tuple, term_names: list[str]) -> None:
    """Every term of the potential on exactly one level; the message names the term."""
    seen: dict[str, int] = {}
    for i, (names, *_) in enumerate(timescales):
        for name in names:
            if name not in term_names:
                raise ValueError(f"timescales[{i}] names {name!r}, which is not a term of the potential "
                                 f"(terms: {term_names})")
            if name in seen:
                raise ValueError(f"timescales: term {name!r} is on level {seen[name]} and level {i}; every term "
                                 f"must be on exactly one level")
            seen[name] = i
    missing = [name for name in term_names if name not in seen]
    if missing:
        raise ValueError(f"timescales: term {missing[0]!r} is on no level; every term must be on exactly one level "
                         f"(levels: {[list(level[0]) for level in timescales]})")


def check_guard(guard: str) -> None:
    if guard not in GUARD_MODES:
        raise ValueError(f"guard must be one of {GUARD_MODES}, got {guard!r}")
