"""The compiled chunk programs: a chunk of transitions of all chains in one loop.

Built from small pieces: :func:`all_chains` (one transition of every chain, with
the trip location of :mod:`hmc.guard.replay`), :func:`masked_scan` (a fixed-size
program for any chunk length up to ``chunk_size``), the adaptation update, and
thinning. The driver calls ``warmup_chunk`` and ``sample_chunk`` without knowing
the kernel. Programs are cached per potential and :class:`hmc.settings.Program`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hmc import adaptation as _adaptation
from hmc import geometry as _geometry
from hmc import integrators as _integrators
from hmc import rng as _rng
from hmc.checkpoint import STAT_PREFIX
from hmc.devices import ordered_mean, ordered_sum
from hmc.guard import replay as _replay
from hmc.kernels import tempering as _tempering
from hmc.kernels.base import Kernel, Params
from hmc.potential import Potential, cached_program
from hmc.settings import Program

PyTree = Any
LIMIT_EVERY = 10  # warmup iterations between estimates of the step cap
LIMIT_STREAM = 2**31 - 2  # an iteration index no transition uses: the step cap's random vectors
FLAT_STREAM = 2**31 - 3  # (folded into those) the smallest frequency's random vectors


class Chunks(NamedTuple):
    """``warmup_chunk(chain_keys, states, adapt_state, start, n)`` -> ``(states, adapt_state, trips, out)``
    and ``sample_chunk(chain_keys, states, params, start, n)`` -> ``(states, trips, out)``."""

    warmup: Callable
    sample: Callable


def chunk_programs(potential: Potential, program: Program, with_replay: bool = True) -> Chunks:
    """The compiled chunk programs. With ``with_replay=False`` a trajectory-mode guard
    only flags tripped transitions (no replay in the program): the driver runs such
    chunks first and re-runs a chunk that tripped with ``with_replay=True``. A trip never
    changes the chain states (a tripped transition is rejected, and the replay only
    classifies it), so both give the same states; the program without the replay
    compiles in about half the time."""
    return cached_program(potential, ("chunks", program, with_replay),
                          lambda: _build(potential, program, with_replay))


def all_chains(kernel: Kernel, program: Program, with_replay: bool) -> Callable:
    """``(keys, states, params) -> (states, info, trip)``: one transition of every chain,
    and the first located guard trip of this iteration."""
    axis = None if program.pooled else 0

    def run(keys: jax.Array, states: Any, params: Params) -> tuple:
        minv = None if program.mass_matrix == "identity" else params.inverse_mass_matrix
        axes = Params(axis, None if minv is None else axis)
        params = Params(params.step_size, minv, params.trajectory_length)
        new_states, info = jax.vmap(kernel.step, in_axes=(0, 0, axes))(keys, states, params)
        if program.guard == "off" or (program.guard == "trajectory" and not with_replay):
            return new_states, info, _replay.no_trip(states.position)
        if program.guard == "step":
            return new_states, info, _replay.first_located(info)
        info, trip = _replay.replay_tripped(kernel, axes, keys, new_states, params, info)
        return new_states, info, trip

    return run


def keys_at(chain_keys: jax.Array, t: jax.Array) -> jax.Array:
    return jax.vmap(_rng.fold_in, in_axes=(0, None))(chain_keys, t)


def masked_scan(one: Callable, carry: Any, n_valid: jax.Array, chunk_size: int) -> tuple:
    """Run ``one`` for ``n_valid <= chunk_size`` iterations into fixed-size outputs (rows
    ``>= n_valid`` stay zero), so a short final chunk reuses the compiled program. A
    loop with a traced trip count rather than a scan with a ``cond`` per iteration:
    the ``cond`` made XLA copy the chain states at every iteration."""
    shapes = jax.eval_shape(lambda c: one(c, jnp.asarray(0, jnp.int32))[1], carry)
    outs = jax.tree_util.tree_map(lambda s: jnp.zeros((chunk_size,) + s.shape, s.dtype), shapes)

    def body(i, state):
        carry, outs = state
        carry, out = one(carry, i)
        return carry, jax.tree_util.tree_map(lambda o, x: o.at[i].set(x), outs, out)

    return jax.lax.fori_loop(0, jnp.minimum(n_valid, chunk_size), body, (carry, outs))


def adapter(program: Program) -> Callable:
    """``(adapt_state, t, info, states) -> adapt_state``: one warmup update, pooled over
    chains (one update from the chain-averaged acceptance) or per chain."""
    schedule = _adaptation.build_schedule(program.num_warmup)
    order = _integrators.ORDER.get(getattr(program.kernel, "integrator", None), 2)
    gain = _adaptation.pooled_gain(program.target_accept, order) if program.pooled else None

    def update(s, t, a, x):
        return _adaptation.update(s, t, a, x, schedule=schedule, target_accept=program.target_accept,
                                  adapt_step_size=program.adapt_step_size,
                                  adapt_mass_matrix=program.mass_matrix != "identity", pooled_gain=gain,
                                  adapt_length=getattr(program.kernel, "adaptive_length", False))

    def adapt(adapt_state, t, info, states):
        flat = jax.vmap(lambda q: ravel_pytree(q)[0])(states.position)
        if program.pooled:
            return update(adapt_state, t, ordered_mean(info.acceptance_rate), flat)
        return jax.vmap(update, in_axes=(0, None, 0, 0))(adapt_state, t, info.acceptance_rate, flat[:, None, :])

    return adapt


def limiter(program: Program, potential: Potential) -> Callable:
    """``(adapt_state, t, keys, states) -> adapt_state``: before warmup iteration ``t``, at the
    start and after every change of the mass matrix, the step cap from the largest frequency
    of the chains' states (the largest over chains when pooled). With nested timescales,
    each level's frequency caps that level's own step, ``eps / (steps_0 * ... * steps_l)``,
    at the stability limit of the level's integrator."""
    integrator = getattr(program.kernel, "integrator", None)
    if not program.adapt_step_size or integrator is None or getattr(potential, "groups", None):
        # group leaves: the frequencies are not measured (the Hessian probe moves the state
        # along straight lines, off the group); dual averaging alone sets the step
        return lambda adapt_state, t, keys, states: adapt_state
    schedule = _adaptation.build_schedule(program.num_warmup)
    changed = np.concatenate([[True], schedule.slow_window_end[:-1]])
    # between changes of the metric, re-estimated every LIMIT_EVERY iterations and never
    # raised: the curvature depends on where the chains are (a tail visited once lowers it)
    again = jnp.asarray(changed | (np.arange(schedule.num_warmup) % LIMIT_EVERY == 0))
    changed = jnp.asarray(changed)
    factor = _adaptation.jitter_factor(program.kernel.num_steps, program.kernel.jitter)
    nested = bool(getattr(program.kernel, "timescales", None))
    tables = (getattr(program.kernel, "level_integrators", None) if nested else None) or (integrator,)

    def level_grads(fields):
        """``[(grad of the level's potential, sub-steps of the level per step)]``; with
        auxiliary fields, at the chain's own fields (those of its last transition)."""
        extend = None if fields is None else (lambda q: {**q, **fields})
        if not nested:
            energy = potential.energy if extend is None else (lambda q: potential.energy(extend(q)))
            return [(jax.grad(energy), 1.0)]
        split = program.kernel.split(potential, extend)
        return [(jax.grad(fn), float(np.prod(split.steps[:i + 1]))) for i, fn in enumerate(split.energies)]

    n_levels = len(level_grads(None))
    spectrum = flattener(program, potential, changed)

    def estimate(adapt_state, t, keys, states):
        minv = None if program.mass_matrix == "identity" else adapt_state.inverse_mass_matrix
        in_axes = (0, None if program.pooled or minv is None else 0, 0, 0)
        keys = jax.vmap(_rng.fold_in, in_axes=(0, None))(keys, LIMIT_STREAM)
        fields = getattr(states, "auxiliary", None)
        limit = None
        for level in range(n_levels):
            level_keys = keys if level == 0 else jax.vmap(_rng.fold_in, in_axes=(0, None))(keys, level)

            def frequency(q, m, key, f, level=level):
                grad_fn, _ = level_grads(f)[level]
                return _adaptation.max_frequency(grad_fn, q, m, key)

            omega = jax.vmap(frequency, in_axes=in_axes)(states.position, minv, level_keys, fields)
            if program.pooled:
                omega = jnp.max(omega)
                adapt_state = spectrum(adapt_state, t, keys, states.position, omega)
            level_limit = _adaptation.step_limit(omega, tables[level], factor)
            substeps = level_grads(None)[level][1]
            level_limit = level_limit if substeps == 1.0 else level_limit * substeps
            limit = level_limit if limit is None else jnp.minimum(limit, level_limit)
        limit = jnp.where(changed[t], limit, jnp.minimum(limit, adapt_state.step_limit))
        update = functools.partial(_adaptation.with_limit, pooled=program.pooled)
        return update(adapt_state, limit) if program.pooled else jax.vmap(update)(adapt_state, limit)

    def limit(adapt_state, t, keys, states):
        return jax.lax.cond(again[t], estimate, lambda a, t, k, s: a, adapt_state, t, keys, states)

    return limit


def flattener(program: Program, potential: Potential, changed: np.ndarray) -> Callable:
    """``(adapt_state, t, keys, positions, omega_max) -> adapt_state``: with
    ``trajectory_length="auto"``, pooled adaptation, one level and an adapted metric, at
    the first iteration after each new metric, the smallest frequency over the chains
    (:func:`hmc.adaptation.min_frequency`) and the length's jitter it implies
    (:func:`hmc.adaptation.flat_spectrum`); otherwise nothing."""
    applies = (getattr(program.kernel, "adaptive_length", False) and program.pooled
               and not getattr(program.kernel, "timescales", None) and program.mass_matrix != "identity"
               and not getattr(potential, "auxiliary", None))
    if not applies:
        return lambda adapt_state, t, keys, positions, omega_max: adapt_state
    decide = jnp.asarray(changed & (np.arange(changed.shape[0]) > 0))

    def lowest(adapt_state, keys, positions, omega_max):
        keys = jax.vmap(_rng.fold_in, in_axes=(0, None))(keys, FLAT_STREAM)
        minv = adapt_state.inverse_mass_matrix
        omega = jax.vmap(lambda q, k: _adaptation.min_frequency(jax.grad(potential.energy), q, minv, k, omega_max))(
            positions, keys)
        # a chain with no positive curvature (0) makes the spectrum not flat
        return _adaptation.flat_spectrum(adapt_state, jnp.min(omega), omega_max)

    def run(adapt_state, t, keys, positions, omega_max):
        return jax.lax.cond(decide[t], lowest, lambda a, k, q, o: a, adapt_state, keys, positions, omega_max)

    return run


def at_transition(params: Params, t: jax.Array) -> Params:
    """``params`` for transition ``t``: an adapted trajectory length ``T`` becomes
    ``T * 2 h(t)`` (:func:`hmc.adaptation.halton`, the same for every chain), or
    ``T (1 + w (2 h(t) - 1))`` with a narrow jitter ``w`` (:func:`hmc.adaptation.length_scale`)."""
    if params.trajectory_length is None:
        return params
    scale = _adaptation.length_scale(t, params.length_jitter).astype(params.trajectory_length.dtype)
    return params._replace(trajectory_length=params.trajectory_length * scale, length_jitter=None)


def lengthener(program: Program, potential: Potential) -> Callable:
    """``(adapt_state, t, start_states, info, length) -> adapt_state``: with
    ``trajectory_length="auto"``, one ChEES update of the length (see
    :func:`hmc.adaptation.chees_signal`), in the potential's ``embedding`` if it has one."""
    if not getattr(program.kernel, "adaptive_length", False):
        return lambda adapt_state, t, states, info, length: adapt_state
    schedule = _adaptation.build_schedule(program.num_warmup)
    hold, restart = (jnp.asarray(x) for x in _adaptation.length_phases(schedule))
    groups = getattr(potential, "groups", None) or {}
    embed = potential.embedding or (_geometry.embedding if groups else (lambda q: ravel_pytree(q)[0]))

    def flat(q):
        return jnp.ravel(embed(q))

    def moved(q, v):
        if groups:  # a group leaf moves as dU/dt = P U: its tangent in the matrix space
            v = {**v, **{name: v[name] @ q[name] for name in groups}}
        return jax.jvp(flat, (q,), (v,))

    def update(adapt_state, t, states, info, length):
        start = jax.vmap(flat)(states.position)
        proposal, tangent = jax.vmap(moved)(info.proposal, info.proposal_velocity)
        signal = _adaptation.chees_signal(start, proposal, tangent, info.acceptance_rate, length, ordered_mean,
                                             lambda x: ordered_sum(x, 1))
        return _adaptation.update_length(adapt_state, signal, jnp.asarray(schedule.averaged)[t],
                                         t == program.num_warmup - 1, adapt_state.step_size,
                                         program.kernel.max_num_steps, hold[t], restart[t])

    return update


def tempering_rounds(program: Program, potential: Potential) -> Callable:
    """``(t, states) -> states``: with tempering, the ladder adapted at the end of each warmup
    round (:func:`hmc.kernels.tempering.adapt_ladder`, rejection rates pooled over chains in a
    fixed order), and the swap and round-trip counters reset at the end of warmup (so the
    sampling phase counts its own)."""
    adapter = getattr(program.kernel, "ladder_adapter", None)
    if adapter is None or not program.num_warmup:
        return lambda t, states: states
    adapt = adapter(potential, program.guard)
    ends = np.zeros(program.num_warmup, bool)
    if program.kernel.adapt:
        ends[_tempering_round_ends(program.num_warmup)] = True
    round_end, last = jnp.asarray(ends), program.num_warmup - 1

    def update(t, states):
        states = jax.lax.cond(round_end[t], lambda s: adapt(s, ordered_mean, True), lambda s: s, states)
        return jax.lax.cond(t == last, lambda s: adapt(s, ordered_mean, False), lambda s: s, states)

    return update


def _tempering_round_ends(num_warmup: int, first: int = 8) -> list[int]:
    """The last iterations of the ladder's adaptation rounds: rounds double in length (as in
    Pigeons) and the last ends at 3/4 of warmup, so the step size settles on the final
    ladder; rounds shorter than ``first`` iterations are merged into the next."""
    end = (3 * num_warmup) // 4
    ends = []
    while end >= first:
        ends.append(end - 1)
        end //= 2
    return sorted(ends)


def _warmup_chunk(step: Callable, adapt: Callable, limit: Callable, lengthen: Callable, temper: Callable,
                  chunk_size: int, adaptive_length: bool, warmup_length: float | None = None) -> Callable:
    @jax.jit
    def warmup_chunk(chain_keys, states, adapt_state, start, n_valid):
        def one(carry, i):
            states, adapt_state, trips = carry
            t = start + i
            keys = keys_at(chain_keys, t)
            adapt_state = limit(adapt_state, t, keys, states)
            if adaptive_length:
                params = at_transition(Params(adapt_state.step_size, adapt_state.inverse_mass_matrix,
                                              adapt_state.trajectory_length, adapt_state.length_jitter), t)
            else:  # a fixed length: warmup's own, if given, jittered by the kernel
                length = None if warmup_length is None else jnp.asarray(warmup_length, adapt_state.step_size.dtype)
                params = Params(adapt_state.step_size, adapt_state.inverse_mass_matrix, length)
            before = states
            states, info, trip = step(keys, states, params)
            adapt_state = adapt(adapt_state, t, info, states)
            adapt_state = lengthen(adapt_state, t, before, info, params.trajectory_length)
            states = temper(t, states)
            out = {
                "acceptance_rate": info.acceptance_rate,
                "step_size": info.step_size,
                "diverging": info.is_divergent,
                "guard_tripped": info.guard_tripped,
                "n_steps": info.num_steps,
                # the cap in force, and the step adaptation sets for the next iteration
                "step_limit": jnp.broadcast_to(adapt_state.step_limit, info.step_size.shape),
                "adapted_step": jnp.broadcast_to(adapt_state.step_size, info.step_size.shape),
                "trajectory_length": jnp.broadcast_to(adapt_state.trajectory_length, info.step_size.shape),
            }
            if adaptive_length:
                out["length_jitter"] = jnp.broadcast_to(adapt_state.length_jitter, info.step_size.shape)
            if getattr(info, "tree_depth", None) is not None:
                out["tree_depth"] = info.tree_depth
            if getattr(info, "swap_acceptance", None) is not None:
                out["swap_acceptance"] = info.swap_acceptance
                out["ladder"] = states.ladder
            return (states, adapt_state, _replay.record(trips, trip, t)), out

        carry = (states, adapt_state, _replay.empty(states.position))
        (states, adapt_state, trips), out = masked_scan(one, carry, n_valid, chunk_size)
        return states, adapt_state, trips, out

    return warmup_chunk


def _thinned(step: Callable, chain_keys: jax.Array, params: Params, thin: int, start: jax.Array) -> Callable:
    """``(states, trips, i, draw) -> carry``: the ``thin`` transitions of draw ``i`` of the
    chunk, acceptance summed, divergence and trips or-ed, the last info kept."""

    def transition(j, c, i, draw):
        states, trips, acc, div, tripped, _ = c
        t = start + i * thin + j
        states, info, trip = step(keys_at(chain_keys, t), states, at_transition(params, t))
        return (states, _replay.record(trips, trip, draw), acc + info.acceptance_rate,
                div | info.is_divergent, tripped | info.guard_tripped, info)

    def run(states, trips, i, draw):
        n = states.potential_energy.shape[0]
        zeros = jnp.zeros((n,), states.potential_energy.dtype)
        false = jnp.zeros((n,), bool)
        carry = transition(0, (states, trips, zeros, false, false, None), i, draw)
        if thin > 1:
            carry = jax.lax.fori_loop(1, thin, lambda j, c: transition(j, c, i, draw), carry)
        return carry

    return run


def _draw_record(potential: Potential, program: Program, states: Any, info: Any, acc, div, tripped) -> dict:
    """One draw's outputs: observables, recorded leaves and statistics (``stat:`` keys:
    an observable may share a name with a statistic, as lennard_jones' ``energy``)."""
    out = dict(jax.vmap(potential.observe)(states.position))
    if getattr(program.kernel, "record", False) is True and hasattr(states, "ladder"):
        out.update(_tempering.replica_observables(potential, states))
    leaves = dict(zip(program.names, jax.tree_util.tree_leaves(states.position)))
    out.update({name: leaves[name] for name in program.record})
    stats = dict(
        lp=-states.potential_energy,
        energy=info.energy,
        acceptance_rate=acc / program.thin,
        diverging=div,
        step_size=info.step_size,
        n_steps=info.num_steps,
        guard_tripped=tripped,
        delta_energy=info.delta_energy,  # of the last transition of the draw
    )
    if getattr(info, "beta_index", None) is not None:  # tempering: the index process
        stats["beta_index"] = info.beta_index
    if getattr(info, "tree_depth", None) is not None:  # nuts
        stats["tree_depth"] = info.tree_depth
    if potential.groups:  # each chain's distance from the group after the draw
        stats["group_defect"] = jax.vmap(lambda q: _geometry.state_defect(potential.groups, q))(
            states.position).astype(states.potential_energy.dtype)
    out.update({STAT_PREFIX + k: v for k, v in stats.items()})
    return out


def _sample_chunk(potential: Potential, program: Program, step: Callable) -> Callable:
    @jax.jit
    def sample_chunk(chain_keys, states, params, start, n_valid):
        run = _thinned(step, chain_keys, params, program.thin, start)
        record = functools.partial(_draw_record, potential, program)

        def one(carry, i):
            states, trips = carry
            draw = program.num_warmup + (start - program.num_warmup) // program.thin + i
            states, trips, acc, div, tripped, info = run(states, trips, i, draw)
            return (states, trips), record(states, info, acc, div, tripped)

        (states, trips), out = masked_scan(one, (states, _replay.empty(states.position)), n_valid,
                                           program.chunk_size)
        return states, trips, out

    return sample_chunk


def _build(potential: Potential, program: Program, with_replay: bool) -> Chunks:
    kernel = program.kernel.build(potential, program.guard)
    step = all_chains(kernel, program, with_replay)
    warmup = _warmup_chunk(step, adapter(program), limiter(program, potential),
                           lengthener(program, potential), tempering_rounds(program, potential), program.chunk_size,
                           getattr(program.kernel, "adaptive_length", False),
                           getattr(program.kernel, "warmup_trajectory_length", None))
    return Chunks(warmup,
                  _sample_chunk(potential, program, step))


__all__ = ["Chunks", "all_chains", "chunk_programs", "keys_at", "masked_scan"]
