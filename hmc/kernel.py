"""The HMC transition kernel: pure ``(rng_key, state, ...) -> (state, info)``.

One trajectory: draw a Gaussian momentum, integrate, Metropolis-test on the
true energy ``H = U + K``. A non-finite energy is a rejection, never an
exception; a trajectory whose gradient went non-finite at any step ("tripped"
the guard flag) is rejected and reported in :class:`HMCInfo` with the first
failing gradient evaluation and the position there, for attribution on the
host (see :mod:`hmc.guard`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from hmc import integrators as _integrators
from hmc import rng as _rng

PyTree = Any


class HMCState(NamedTuple):
    """State of one chain: position and the potential energy and gradient there."""

    position: PyTree
    potential_energy: Array
    potential_energy_grad: PyTree


class HMCInfo(NamedTuple):
    """Per-trajectory diagnostics.

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


GUARD_MODES = ("step", "trajectory", "off")


def init(position: PyTree, potential_fn: Callable[[PyTree], Array]) -> HMCState:
    """Build the state at ``position`` (one chain; ``vmap`` for many)."""
    energy, grad = jax.value_and_grad(potential_fn)(position)
    return HMCState(position, energy, grad)


def _num_steps_for(trajectory_length: float, step_size: Array) -> Array:
    return jnp.maximum(1, jnp.ceil(trajectory_length / step_size)).astype(jnp.int32)


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
    """Build ``kernel(rng_key, state, step_size, inverse_mass_matrix=None)``.

    Parameters
    ----------
    potential_fn
        ``U(q) -> scalar``.
    integrator
        ``"leapfrog"``, ``"minimum_norm"`` or ``"yoshida4"``.
    num_steps, trajectory_length
        Exactly one: a fixed number of integrator steps, or a trajectory
        length ``tau`` with ``ceil(tau / step_size)`` steps.
    jitter
        Fraction in ``[0, 1)``. Each trajectory draws ``u ~ U(-1, 1)``: with a
        fixed ``num_steps`` the step size is ``step_size * (1 + jitter * u)``;
        with a ``trajectory_length`` the length is ``tau * (1 + jitter * u)``.
        Breaks the resonances of fixed-length HMC on near-Gaussian modes
        (Mackenzie, PLB 226 (1989) 369).
    divergence_threshold
        ``delta_energy`` above which a trajectory is called divergent.
    guard
        How the kernel notices a non-finite gradient:

        ``"step"``
            every fresh gradient is checked (``isfinite(sum(g))``) and the first
            failing evaluation, with the position and momentum there, is carried
            out of the integrator; a trip whose energy had already risen past the
            divergence threshold is classified as a divergence.
        ``"trajectory"``
            nothing is checked inside the integrator: a non-finite gradient makes
            the momentum non-finite for the rest of the trajectory (NaN and Inf
            are absorbing under ``p - eps * g``), so the kinetic energy at the
            end, computed anyway, tells. ``guard_step`` is -1 and
            ``guard_position`` the start; the driver replays tripped
            trajectories with a ``"step"`` kernel to locate and classify them.
            Costs nothing per step.
        ``"off"``
            no guard (benchmarks only): a non-finite trajectory is a divergence.
    """
    _integrators.coefficients(integrator)
    if (num_steps is None) == (trajectory_length is None):
        raise ValueError("give exactly one of num_steps and trajectory_length")
    if num_steps is not None and int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if trajectory_length is not None and not trajectory_length > 0:
        raise ValueError(f"trajectory_length must be > 0, got {trajectory_length}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if guard not in GUARD_MODES:
        raise ValueError(f"guard must be one of {GUARD_MODES}, got {guard!r}")
    per_step = guard == "step"

    def kernel(
        rng_key: Array,
        state: HMCState,
        step_size: Array | float,
        inverse_mass_matrix: Array | None = None,
    ) -> tuple[HMCState, HMCInfo]:
        key_momentum, key_jitter, key_accept = _rng.split(rng_key, 3)
        dtype = state.potential_energy.dtype
        step_size = jnp.asarray(step_size, dtype)
        u = _rng.uniform(key_jitter, dtype, -1.0, 1.0) if jitter > 0 else jnp.zeros((), dtype)
        if num_steps is not None:
            n_steps: Array | int = int(num_steps)
            eps = step_size * (1.0 + jitter * u)
        else:
            eps = step_size
            n_steps = _num_steps_for(trajectory_length * (1.0 + jitter * u), step_size)

        metric = _integrators.euclidean_metric(inverse_mass_matrix, state.position)
        momentum = metric.sample_momentum(key_momentum, state.position)
        start = _integrators.IntegratorState(state.position, momentum, state.potential_energy_grad)
        end, flags, potential_end = _integrators.integrate_to_energy(
            integrator, potential_fn, metric.velocity, start, eps, n_steps, guard=per_step
        )

        energy_start = state.potential_energy + metric.kinetic_energy(momentum)
        kinetic_end = metric.kinetic_energy(end.momentum)
        if guard == "step":
            tripped = ~flags.ok
        elif guard == "trajectory":
            # not the kinetic energy: p**2 overflows for a finite (if huge) momentum
            tripped = ~jnp.isfinite(_integrators.tree_sum(end.momentum))
        else:
            tripped = jnp.zeros((), bool)
        # A tripped trajectory ends in NaN; the energy at the trip position tells a blow-up
        # from a broken gradient. The end point keeps the energy its last gradient came
        # with, so both guard modes accept the same trajectories bit for bit.
        if per_step:
            new_potential = jnp.where(tripped, potential_fn(flags.position), potential_end)
        else:
            new_potential = potential_end
        energy_end = new_potential + kinetic_end
        delta = energy_end - energy_start
        # A non-finite proposal energy is a rejection, -inf included: in float32 a blown-up
        # trajectory can end where U overflows to -inf, which a bare Metropolis test accepts.
        delta = jnp.where(jnp.isfinite(energy_end), delta, jnp.inf)
        # A gradient that overflowed because the integrator had already blown up (the
        # energy at the trip point far above the start) is a divergence, not a broken
        # gradient: the guard only reports gradients that break at a sane state.
        if per_step:
            kinetic_at_trip = metric.kinetic_energy(flags.momentum)
            energy_at_trip = new_potential + kinetic_at_trip
            # a non-finite position with finite gradients at every earlier step: the
            # integration itself overflowed (momentum inf, then inf - inf)
            state_broken = ~jnp.isfinite(_integrators.tree_sum(flags.position))
            # ``>`` holds for +inf (an energy that overflowed, a wall of infinite height:
            # the proposal has zero density) and fails for NaN (a broken program)
            blew_up = (
                state_broken
                | (kinetic_at_trip - energy_start > divergence_threshold)
                | (energy_at_trip - energy_start > divergence_threshold)
            )
        else:
            blew_up = jnp.zeros((), bool)  # unknown without the per-step record
        diverged_trip = tripped & blew_up
        guard_tripped = tripped & ~blew_up
        acceptance_rate = jnp.where(tripped, 0.0, jnp.minimum(1.0, jnp.exp(-delta))).astype(dtype)
        log_u = jnp.log(_rng.uniform(key_accept, dtype))
        is_accepted = (log_u < -delta) & ~tripped
        is_divergent = (((delta > divergence_threshold) | ~jnp.isfinite(delta)) & ~tripped) | diverged_trip

        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(is_accepted, new, old),
            HMCState(end.position, new_potential, end.potential_energy_grad),
            state,
        )
        info = HMCInfo(
            acceptance_rate=acceptance_rate,
            is_accepted=is_accepted,
            is_divergent=is_divergent,
            energy=jnp.where(is_accepted, energy_end, energy_start),
            delta_energy=delta,
            num_steps=jnp.asarray(n_steps, jnp.int32),
            step_size=eps,
            guard_tripped=guard_tripped,
            guard_step=flags.first_step,
            guard_position=flags.position,
        )
        return new_state, info

    return kernel
