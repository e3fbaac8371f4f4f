"""Fixed-length HMC: pure ``(rng_key, state, params) -> (state, info)``.

One trajectory: draw a Gaussian momentum, integrate, Metropolis-test on the
true energy ``H = U + K``. A non-finite energy is a rejection, never an
exception; a trajectory whose gradient went non-finite at any step ("tripped"
the guard flag) is rejected and reported in :class:`HMCInfo` with the first
failing gradient evaluation and the position there, for attribution on the
host (see :mod:`hmc.guard`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from hmc import integrators as _integrators
from hmc import rng as _rng
from hmc.kernels.base import Info, Kernel, Params, Trajectory, check_guard

PyTree = Any


class HMCState(NamedTuple):
    """State of one chain: position and the potential energy and gradient there; with
    auxiliary fields (:attr:`hmc.Potential.auxiliary`), those of the last transition."""

    position: PyTree
    potential_energy: Array
    potential_energy_grad: PyTree
    auxiliary: PyTree = None


AUXILIARY_STREAM = 3  # the key of a transition's auxiliary fields: fold_in(key, 3), apart from its split


def with_fresh_auxiliary(potential: Any, settings: Trajectory, key: Array, state: Any) -> tuple[Any, Callable, Any]:
    """At the start of a transition: fresh auxiliary fields, and the state's energy and
    gradient recomputed with them (the fields changed the action). Returns the state, the
    potential of the position alone with the fields fixed, and its split."""
    fields = potential.refresh(_rng.fold_in(key, AUXILIARY_STREAM), state.position)

    def extend(q: PyTree) -> PyTree:
        return {**q, **fields}

    energy_fn = lambda q: potential.energy(extend(q))  # noqa: E731
    split = settings.split(potential, extend)
    energy, grad = split.value_and_grads(state.position) if split else jax.value_and_grad(energy_fn)(state.position)
    return state._replace(potential_energy=energy, potential_energy_grad=grad, auxiliary=fields), energy_fn, split


HMCInfo = Info  # the per-transition diagnostics of fixed-length HMC (the interface's fields)


def init(position: PyTree, potential_fn: Callable[[PyTree], Array],
         split: _integrators.Split | None = None) -> HMCState:
    """Build the state at ``position`` (one chain; ``vmap`` for many). With a ``split``
    (nested timescales) the gradient is the tuple of the levels' gradients; with auxiliary
    fields, the fields are those :meth:`hmc.Potential.with_auxiliary` draws (every
    transition redraws them)."""
    energy, grad = split.value_and_grads(position) if split else jax.value_and_grad(potential_fn)(position)
    fields = None
    if getattr(potential_fn, "auxiliary", None):
        fields = potential_fn.with_auxiliary(dict(position))
        fields = {name: fields[name] for name in potential_fn.auxiliary}
    return HMCState(position, energy, grad, fields)


def _num_steps_for(trajectory_length: Array, step_size: Array, max_num_steps: int) -> Array:
    # clipped as a float: a tiny step would overflow the integer
    return jnp.clip(jnp.ceil(trajectory_length / step_size), 1, max_num_steps).astype(jnp.int32)


def jittered(settings: Trajectory, key: Array, step_size: Array, dtype: Any,
             length: Array | None = None) -> tuple[Array, Array | int]:
    """``(step size, number of steps)`` of one transition, jitter applied.

    With ``trajectory_length``, the trajectory has exactly the (jittered) length: the
    fewest steps no longer than ``step_size`` that cover it, at most ``max_num_steps`` (a
    capped trajectory is shorter, its steps ``step_size`` long). Rounding the number of steps
    up at a fixed step instead makes the length jump in whole steps: with a few steps per
    trajectory the jitter then leaves every trajectory the same, and a mode whose
    rotation per trajectory is near a multiple of pi stops mixing (measured on the
    oscillator, 64 sites: 12x fewer effective samples per gradient at 1.75x the adapted step).
    ``length``: this transition's length, given by the driver (``trajectory_length="auto"``,
    already jittered), or with a fixed length the one to jitter in its place (warmup's
    ``warmup_trajectory_length``).
    """
    u = _rng.uniform(key, dtype, -1.0, 1.0) if settings.jitter > 0 else jnp.zeros((), dtype)
    if settings.num_steps is not None:
        return step_size * (1.0 + settings.jitter * u), int(settings.num_steps)
    if settings.adaptive_length:
        if length is None:
            raise ValueError("trajectory_length='auto' needs the length in Params (the driver passes it)")
    else:
        length = (settings.trajectory_length if length is None else length) * (1.0 + settings.jitter * u)
    length = jnp.asarray(length, dtype)
    n_steps = _num_steps_for(length, step_size, settings.max_num_steps)
    return jnp.minimum(length / n_steps, step_size).astype(dtype), n_steps


class Outcome(NamedTuple):
    """One integrated trajectory and its Metropolis test (see :func:`metropolis`)."""

    end: _integrators.IntegratorState
    potential: Array
    is_accepted: Array
    acceptance_rate: Array
    is_divergent: Array
    energy_start: Array
    energy_end: Array
    delta: Array
    guard_tripped: Array
    flags: _integrators.GuardFlags


def metropolis(potential_fn: Callable[[PyTree], Array], settings: Trajectory, guard: str, metric: Any,
               state: Any, momentum: PyTree, eps: Array, n_steps: Array | int, key_accept: Array,
               split: _integrators.Split | None = None, start_ok: Array | None = None) -> Outcome:
    """Integrate from ``(state.position, momentum)`` and test the end on the true energy.

    A non-finite proposal energy is a rejection; a trajectory whose gradient went
    non-finite tripped and is rejected: a broken gradient (``guard_tripped``) unless the
    energy had already risen past the divergence threshold (a divergence).
    """
    per_step = guard == "step"
    dtype = state.potential_energy.dtype
    start = _integrators.IntegratorState(state.position, momentum, state.potential_energy_grad)
    end, flags, potential_end = _integrators.integrate_to_energy(
        settings.integrator, potential_fn, metric.velocity, start, eps, n_steps, guard=per_step, split=split,
        drift_fn=metric.drift)
    if split is not None:
        potential_fn = split.energy
    if start_ok is not None:
        # a start recomputed in this transition (fresh auxiliary fields): its gradient was
        # not checked by an earlier trajectory; a broken one is a trip at the start
        bad = ~start_ok
        keep = lambda new, old: jnp.where(bad, new, old)  # noqa: E731
        flags = _integrators.GuardFlags(
            flags.ok & start_ok, jnp.where(bad, 0, flags.first_step).astype(jnp.int32),
            jax.tree_util.tree_map(keep, state.position, flags.position),
            jax.tree_util.tree_map(keep, momentum, flags.momentum))
    energy_start = state.potential_energy + metric.kinetic_energy(momentum)
    kinetic_end = metric.kinetic_energy(end.momentum)
    tripped = _tripped(guard, flags, end)
    # A tripped trajectory ends in NaN; the energy at the trip position tells a blow-up
    # from a broken gradient. The end point keeps the energy its last gradient came
    # with, so both guard modes accept the same trajectories bit for bit.
    new_potential = jnp.where(tripped, potential_fn(flags.position), potential_end) if per_step else potential_end
    energy_end = new_potential + kinetic_end
    delta = energy_end - energy_start
    # A non-finite proposal energy is a rejection, -inf included: in float32 a blown-up
    # trajectory can end where U overflows to -inf, which a bare Metropolis test accepts.
    delta = jnp.where(jnp.isfinite(energy_end), delta, jnp.inf)
    blew_up = _blew_up(metric, flags, new_potential, energy_start, settings.divergence_threshold,
                       beyond_a_wall(potential_fn, flags.position)) if per_step \
        else jnp.zeros((), bool)  # unknown without the per-step record
    diverged_trip = tripped & blew_up
    guard_tripped = tripped & ~blew_up
    acceptance_rate = jnp.where(tripped, 0.0, jnp.minimum(1.0, jnp.exp(-delta))).astype(dtype)
    log_u = jnp.log(_rng.uniform(key_accept, dtype))
    is_accepted = (log_u < -delta) & ~tripped
    threshold = settings.divergence_threshold
    is_divergent = (((delta > threshold) | ~jnp.isfinite(delta)) & ~tripped) | diverged_trip
    return Outcome(end, new_potential, is_accepted, acceptance_rate, is_divergent, energy_start, energy_end, delta,
                   guard_tripped, flags)


def _tripped(guard: str, flags: _integrators.GuardFlags, end: _integrators.IntegratorState) -> Array:
    if guard == "step":
        return ~flags.ok
    if guard == "trajectory":
        # not the kinetic energy: p**2 overflows for a finite (if huge) momentum
        return ~jnp.isfinite(_integrators.tree_sum(end.momentum))
    return jnp.zeros((), bool)


def beyond_a_wall(potential_fn: Callable[[PyTree], Array], position: PyTree) -> Array:
    """Whether some term of the potential is +inf at ``position``: the state lies beyond
    an infinite wall (zero density), whatever NaN the other terms give there. A potential
    that is a plain function is one term. ``potential_fn`` is a :class:`hmc.Potential`
    (its ``term_energies``), a :class:`hmc.integrators.Split` level energy, or a function."""
    terms = getattr(potential_fn, "term_energies", None)
    if terms is not None:
        values = list(terms(position).values())
    elif isinstance(getattr(potential_fn, "__self__", None), _integrators.Split):
        values = [fn(position) for fn in potential_fn.__self__.energies]
    else:
        values = [potential_fn(position)]
    return jnp.any(jnp.stack([jnp.isposinf(jnp.asarray(v)) for v in values]))


def _blew_up(metric: Any, flags: _integrators.GuardFlags, potential: Array, energy_start: Array,
             threshold: float, wall: Array | bool = False) -> Array:
    """A gradient that overflowed because the integrator had already blown up (the energy
    at the trip point far above the start) is a divergence, not a broken gradient: the
    guard only reports gradients that break at a sane state. So is one at a state beyond
    an infinite wall (``wall``: some term is +inf there, :func:`beyond_a_wall`), the same
    rule for every kernel."""
    kinetic_at_trip = metric.kinetic_energy(flags.momentum)
    energy_at_trip = potential + kinetic_at_trip
    # a non-finite position with finite gradients at every earlier step: the
    # integration itself overflowed (momentum inf, then inf - inf)
    state_broken = ~jnp.isfinite(_integrators.tree_sum(flags.position))
    # ``>`` holds for +inf (an energy that overflowed, a wall of infinite height:
    # the proposal has zero density) and fails for NaN (a broken program)
    return (
        state_broken
        | wall
        | (kinetic_at_trip - energy_start > threshold)
        | (energy_at_trip - energy_start > threshold)
    )


def info_of(outcome: Outcome, eps: Array, n_steps: Array | int) -> HMCInfo:
    return HMCInfo(
        acceptance_rate=outcome.acceptance_rate,
        is_accepted=outcome.is_accepted,
        is_divergent=outcome.is_divergent,
        energy=jnp.where(outcome.is_accepted, outcome.energy_end, outcome.energy_start),
        delta_energy=outcome.delta,
        num_steps=jnp.asarray(n_steps, jnp.int32),
        step_size=eps,
        guard_tripped=outcome.guard_tripped,
        guard_step=outcome.flags.first_step,
        guard_position=outcome.flags.position,
    )


def _transition(potential_fn: Callable[[PyTree], Array], settings: Trajectory, guard: str) -> Callable:
    split = settings.split(potential_fn)
    auxiliary = bool(getattr(potential_fn, "auxiliary", None))

    def step(rng_key: Array, state: HMCState, params: Params) -> tuple[HMCState, HMCInfo]:
        key_momentum, key_jitter, key_accept = _rng.split(rng_key, 3)
        dtype = state.potential_energy.dtype
        eps, n_steps = jittered(settings, key_jitter, jnp.asarray(params.step_size, dtype), dtype,
                                params.trajectory_length)
        metric = _integrators.metric_for(potential_fn, params.inverse_mass_matrix, state.position)
        momentum = metric.sample_momentum(key_momentum, state.position)
        energy_fn, level_split, start_ok = potential_fn, split, None
        if auxiliary:
            state, energy_fn, level_split = with_fresh_auxiliary(potential_fn, settings, rng_key, state)
            start_ok = jnp.isfinite(state.potential_energy) & jnp.isfinite(
                _integrators.tree_sum(state.potential_energy_grad))
        out = metropolis(energy_fn, settings, guard, metric, state, momentum, eps, n_steps, key_accept, level_split,
                         start_ok)
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(out.is_accepted, new, old),
            HMCState(out.end.position, out.potential, out.end.potential_energy_grad, state.auxiliary),
            state,
        )
        info = info_of(out, eps, n_steps)
        if settings.adaptive_length:  # what the length adaptation reads
            info = info._replace(proposal=out.end.position, proposal_velocity=metric.velocity(out.end.momentum))
        return new_state, info

    return step


@dataclasses.dataclass(frozen=True)
class HMC(Trajectory):
    """Fixed-length HMC (``kernel="hmc"``): a fresh Gaussian momentum per transition,
    ``num_steps`` integrator steps (or ``trajectory_length``), a Metropolis test on
    the true energy. See :class:`hmc.kernels.base.Trajectory` for the settings."""

    name: str = dataclasses.field(default="hmc", init=False)
    can_temper = True  # :class:`hmc.kernels.tempering.Tempered` can wrap it

    def build(self, potential_fn: Callable[[PyTree], Array], guard: str = "trajectory") -> Kernel:
        check_guard(guard)
        located = _transition(potential_fn, self, "step")
        split = self.split(potential_fn)
        return Kernel(
            init=lambda position: init(position, potential_fn, split),
            step=_transition(potential_fn, self, guard),
            # a tripped transition is rejected: the state it left is its start
            replay=lambda key, state, params: located(key, state, params)[1],
        )


def build_kernel(
    potential_fn: Callable[[PyTree], Array],
    integrator: str = "leapfrog",
    *,
    num_steps: int | None = 10,
    trajectory_length: float | None = None,
    jitter: float = 0.0,
    divergence_threshold: float = 1000.0,
    guard: str = "step",
) -> Callable[..., tuple[HMCState, HMCInfo]]:
    """Build ``kernel(rng_key, state, step_size, inverse_mass_matrix=None)``: one HMC
    transition of one chain (the function form of :class:`HMC`).

    ``integrator``: ``"leapfrog"``, ``"minimum_norm"``, ``"yoshida4"`` or ``"force_gradient"``;
    ``num_steps``/``trajectory_length``/``jitter``: see :class:`hmc.kernels.base.Trajectory`
    (jitter breaks the resonances of fixed-length HMC on near-Gaussian modes, Mackenzie,
    PLB 226 (1989) 369); ``divergence_threshold``: ``delta_energy`` above which a
    trajectory is divergent.

    ``guard`` is how the kernel notices a non-finite gradient. ``"step"``: every fresh
    gradient is checked (``isfinite(sum(g))``) and the first failing evaluation, with the
    position and momentum there, is carried out of the integrator; a trip whose energy
    had already risen past the divergence threshold is classified as a divergence.
    ``"trajectory"``: nothing is checked inside the integrator; a non-finite gradient
    makes the momentum non-finite for the rest of the trajectory (NaN and Inf are
    absorbing under ``p - eps * g``), so the end tells. ``guard_step`` is -1 and
    ``guard_position`` the start; the driver replays tripped trajectories with a
    ``"step"`` kernel to locate and classify them. Costs nothing per step. ``"off"``:
    no guard (benchmarks only): a non-finite trajectory is a divergence.
    """
    check_guard(guard)
    settings = HMC(integrator, num_steps, trajectory_length, jitter, divergence_threshold)
    step = _transition(potential_fn, settings, guard)

    def kernel(rng_key: Array, state: HMCState, step_size: Array | float,
               inverse_mass_matrix: Array | None = None) -> tuple[HMCState, HMCInfo]:
        return step(rng_key, state, Params(step_size, inverse_mass_matrix))

    return kernel
