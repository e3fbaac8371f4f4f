"""In the compiled loop: locate the first failing gradient of tripped transitions.

With the ``"trajectory"`` in-loop guard a kernel only flags a transition whose
gradient went non-finite. In an iteration where some chain tripped, the tripped
chains are re-run with the per-step check (the kernel's ``replay``: same key,
same start), which finds the first failing gradient evaluation and its position,
and tells a broken gradient from a blow-up. A chunk keeps a few located trips in
fixed slots (:class:`Trips`) for attribution on the host.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


PyTree = Any
SLOTS = 8  # located trips kept per chunk (attributed on the host, deduplicated)


class Trip(NamedTuple):
    """The first located trip of one iteration (``found`` false if none)."""

    found: jax.Array
    chain: jax.Array
    step: jax.Array
    position: PyTree
    replica: jax.Array  # tempering: the temperature index of the tripped replica (-1: none)


class Trips(NamedTuple):
    """The located trips of a chunk: ``count`` and :data:`SLOTS` rows of chain,
    iteration (draw index when sampling), leapfrog step and position."""

    count: jax.Array
    chains: jax.Array
    iterations: jax.Array
    steps: jax.Array
    positions: PyTree
    replicas: jax.Array


def no_trip(positions: PyTree) -> Trip:
    one_state = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:], x.dtype), positions)
    return Trip(jnp.array(False), jnp.array(0, jnp.int32), jnp.array(-1, jnp.int32), one_state,
                jnp.array(-1, jnp.int32))


def empty(positions: PyTree) -> Trips:
    minus = jnp.full((SLOTS,), -1, jnp.int32)
    where = jax.tree_util.tree_map(lambda x: jnp.zeros((SLOTS,) + x.shape[1:], x.dtype), positions)
    return Trips(jnp.array(0, jnp.int32), minus, minus, minus, where, minus)


def record(trips: Trips, trip: Trip, iteration: jax.Array) -> Trips:
    """``trips`` with ``trip`` stored in the next free slot, if it was found and one is free."""

    def store(trips: Trips) -> Trips:
        count = trips.count
        return Trips(
            count + 1,
            trips.chains.at[count].set(trip.chain),
            trips.iterations.at[count].set(jnp.asarray(iteration, jnp.int32)),
            trips.steps.at[count].set(trip.step),
            jax.tree_util.tree_map(lambda w, p: w.at[count].set(p), trips.positions, trip.position),
            trips.replicas.at[count].set(trip.replica),
        )

    return jax.lax.cond(trip.found & (trips.count < SLOTS), store, lambda t: t, trips)


def first_located(info: Any) -> Trip:
    """The first chain whose own step located a trip (the ``"step"`` in-loop guard)."""
    c = jnp.argmax(info.guard_tripped)
    found = jnp.any(info.guard_tripped)
    replica = getattr(info, "replica", None)
    # the tripped chain's position only in an iteration with a trip: picking it is a gather
    # over the chains' devices, which a run should not pay at every iteration
    position = jax.lax.cond(found, lambda: jax.tree_util.tree_map(lambda x: x[c], info.guard_position),
                            lambda: no_trip(info.guard_position).position)
    return Trip(found, c.astype(jnp.int32), info.guard_step[c], position,
                jnp.array(-1, jnp.int32) if replica is None else replica[c].astype(jnp.int32))


def _replay_some(kernel: Any, axes: Any, keys: jax.Array, states: Any, params: Any, info: Any,
                 capacity: int) -> tuple[tuple, Trip]:
    """Replay up to ``capacity`` tripped chains; their flags, divergences and steps
    corrected, and the first genuine trip located."""
    tripped, divergent, step = info
    n = tripped.shape[0]
    idx = jnp.nonzero(tripped, size=capacity, fill_value=0)[0]
    valid = jnp.arange(capacity) < jnp.sum(tripped)
    take = lambda x: x[idx]  # noqa: E731
    picked = type(params)(*(p if a is None else p[idx] for p, a in zip(params, axes)))
    # a tripped transition is rejected, so the state it left is the chain's new state;
    # reading that (not the loop-carried old state) spares XLA a copy of every chain
    # state per iteration
    again = jax.vmap(kernel.replay, in_axes=(0, 0, axes))(keys[idx], jax.tree_util.tree_map(take, states), picked)
    target = jnp.where(valid, idx, n)  # out of range: dropped
    # a replay with no non-finite gradient: the momentum itself overflowed, a divergence
    located = again.guard_step >= 0

    def put(full: jax.Array, part: jax.Array) -> jax.Array:
        return full.at[target].set(part, mode="drop")

    genuine = valid & located & again.guard_tripped
    k = jnp.argmax(genuine)
    trip = Trip(jnp.any(genuine), idx[k].astype(jnp.int32), again.guard_step[k],
                jax.tree_util.tree_map(lambda x: x[k], again.guard_position), jnp.array(-1, jnp.int32))
    return (put(tripped, again.guard_tripped & located), put(divergent, again.is_divergent | ~located),
            put(step, again.guard_step)), trip


def replay_tripped(kernel: Any, axes: Any, keys: jax.Array, new_states: Any, params: Any,
                   info: Any) -> tuple[Any, Trip]:
    """``info`` with the tripped chains replayed and classified, and the first located trip.

    Outside the chain vmap the predicate is a scalar: without a trip the replay costs
    nothing, and the branches carry only per-chain scalars and one state. A few trips
    replay a few chains; a flood (early warmup blow-ups) replays all."""
    no = no_trip(new_states.position)
    operand = (info.guard_tripped, info.is_divergent, info.guard_step)
    n = info.guard_tripped.shape[0]
    few = min(n, max(8, n // 16))
    count = jnp.sum(info.guard_tripped)
    replay = functools.partial(_replay_some, kernel, axes, keys, new_states, params)
    (tripped, divergent, step), trip = jax.lax.switch(
        jnp.where(count == 0, 0, jnp.where(count <= few, 1, 2)),
        [lambda o: (o, no), lambda o: replay(o, few), lambda o: replay(o, n)],
        operand,
    )
    return info._replace(guard_tripped=tripped, is_divergent=divergent, guard_step=step), trip


__all__ = ["SLOTS", "Trip", "Trips", "empty", "first_located", "no_trip", "record", "replay_tripped"]
