"""Generalized HMC (Horowitz 1991): partial momentum refreshment, short trajectories.

Each transition first mixes the momentum with fresh noise,
``p <- c p + sqrt(1 - c^2) xi`` with ``xi ~ N(0, M)``, integrates a few steps
(one, in Horowitz's form), and Metropolis-tests the end on the true energy. An
accepted proposal keeps its momentum; a rejected one (a tripped one included)
keeps the position and *flips* the momentum. The momentum is part of the chain
state. With ``c = 0`` this is HMC; ``c`` near 1 gives second-order Langevin
dynamics with friction ``gamma = -log(c) / (step_size * num_steps)``, which keeps
the direction of motion across transitions (Horowitz, Phys. Lett. B 268 (1991)
247; Kennedy & Pendleton, Nucl. Phys. B 607 (2001) 456).

The chain starts with zero momentum: the first refreshments build it up (a
transient that warmup absorbs, like the initial position's).
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
from hmc.kernels.base import Kernel, Params, Trajectory, check_guard
from hmc.kernels.hmc import HMCInfo, info_of, jittered, metropolis

PyTree = Any


class GHMCState(NamedTuple):
    """State of one chain: position, momentum, and the potential energy and gradient."""

    position: PyTree
    momentum: PyTree
    potential_energy: Array
    potential_energy_grad: PyTree


def init(position: PyTree, potential_fn: Callable[[PyTree], Array],
         split: _integrators.Split | None = None) -> GHMCState:
    energy, grad = split.value_and_grads(position) if split else jax.value_and_grad(potential_fn)(position)
    return GHMCState(position, jax.tree_util.tree_map(jnp.zeros_like, position), energy, grad)


def _transition(potential_fn: Callable, settings: GHMC, guard: str, refresh: bool) -> Callable:
    """One GHMC transition; ``refresh=False`` re-runs a rejected one from the state it
    left (momentum flipped back, no refreshment): the replay of a tripped transition."""
    split = settings.split(potential_fn)

    def step(rng_key: Array, state: GHMCState, params: Params) -> tuple[GHMCState, HMCInfo]:
        key_momentum, key_jitter, key_accept = _rng.split(rng_key, 3)
        dtype = state.potential_energy.dtype
        eps, n_steps = jittered(settings, key_jitter, jnp.asarray(params.step_size, dtype), dtype,
                                params.trajectory_length)
        metric = _integrators.metric_for(potential_fn, params.inverse_mass_matrix, state.position)
        if refresh:
            c = jnp.asarray(settings.persistence, dtype)
            noise = metric.sample_momentum(key_momentum, state.position)
            momentum = jax.tree_util.tree_map(lambda p, xi: c * p + jnp.sqrt(1 - c * c) * xi, state.momentum, noise)
        else:
            momentum = jax.tree_util.tree_map(jnp.negative, state.momentum)
        out = metropolis(potential_fn, settings, guard, metric, state, momentum, eps, n_steps, key_accept, split)
        kept = GHMCState(state.position, jax.tree_util.tree_map(jnp.negative, momentum), state.potential_energy,
                         state.potential_energy_grad)
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(out.is_accepted, new, old),
            GHMCState(out.end.position, out.end.momentum, out.potential, out.end.potential_energy_grad),
            kept,
        )
        return new_state, info_of(out, eps, n_steps)

    return step


@dataclasses.dataclass(frozen=True)
class GHMC(Trajectory):
    """Generalized HMC (``kernel="ghmc"``); ``persistence`` is ``c`` in ``[0, 1)``.

    ``num_steps`` is the number of integrator steps per transition (one to a few);
    the other settings are those of :class:`hmc.kernels.base.Trajectory`.
    """

    num_steps: int | None = 1
    persistence: float = 0.9
    name: str = dataclasses.field(default="ghmc", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.persistence < 1.0:
            raise ValueError(f"persistence must be in [0, 1), got {self.persistence!r}")
        if self.adaptive_length:
            raise ValueError("trajectory_length='auto' applies to kernel 'hmc' (ghmc's trajectories are a few "
                             "steps by design)")

    def build(self, potential_fn: Callable[[PyTree], Array], guard: str = "trajectory") -> Kernel:
        check_guard(guard)
        if getattr(potential_fn, "auxiliary", None):
            raise ValueError("auxiliary fields are redrawn at each trajectory start: they need kernel='hmc', "
                             "not 'ghmc' (whose momentum carries over between transitions)")
        located = _transition(potential_fn, self, "step", refresh=False)
        return Kernel(
            init=lambda position: init(position, potential_fn, self.split(potential_fn)),
            step=_transition(potential_fn, self, guard, refresh=True),
            replay=lambda key, state, params: located(key, state, params)[1],
        )
