"""Where the chains start: initial positions, preflight, chain states, the first step
size and the adaptation state (or all of it restored from a checkpoint)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hmc import adaptation as _adaptation
from hmc import geometry as _geometry
from hmc import guard as _guard
from hmc import integrators as _integrators
from hmc.checkpoint import Checkpoint, restore_leaves
from hmc.devices import ordered_mean
from hmc.potential import Potential, cached_program, cast_tree, leaf_names
from hmc.settings import Settings, working_dtype

logger = logging.getLogger("hmc")

PyTree = Any
INITIAL_LENGTH_STEPS = 1  # trajectory_length="auto" adapts from one step: growing, it stops at
# the first maximum of ChEES (started long, it can settle on a later one, periods on); a warmup with a
# first (fast) window holds ten steps there first (hmc.adaptation.length_phases)
RECORD_AUTO_SIZE = 256  # record="auto": the state leaves are stored while they hold at most this many numbers
HEURISTIC_STREAM = 2**31 - 1  # an iteration index no transition uses: the heuristic's momenta are its own


def initial_length_steps(settings: Settings) -> int:
    """The first transition's length of ``trajectory_length="auto"``, in initial steps
    (without ``auto`` the length is unused, and stays one step)."""
    if not getattr(settings.kernel, "adaptive_length", False):
        return INITIAL_LENGTH_STEPS
    hold, _ = _adaptation.length_phases(_adaptation.build_schedule(settings.num_warmup))
    return _adaptation.EQUILIBRATION_LENGTH_STEPS if hold.size and hold[0] else INITIAL_LENGTH_STEPS


class GuardRefused(RuntimeError):
    """The preflight guard found a broken model and refused to start."""

    def __init__(self, events: Sequence[_guard.GuardEvent], report: _guard.PreflightReport | None = None):
        self.events = list(events)
        self.report = report
        lines = "\n  ".join(str(e) for e in self.events)
        super().__init__(f"the gradient guard refused to start sampling:\n  {lines}")


class Start(NamedTuple):
    """The chains at the start of a :func:`hmc.sample` call (or of its resumption)."""

    positions: PyTree
    dtype: Any
    names: list[str]
    record: list[str]
    mass_matrix: str
    states: Any
    adapt_state: _adaptation.AdaptationState
    chain_keys: jax.Array
    events: list[_guard.GuardEvent]


def root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(key of the initial states, root of the per-chain keys)."""
    init_key, chain_root = jax.random.split(jax.random.key(seed))
    return init_key, chain_root


@functools.partial(jax.jit, static_argnums=1)
def chain_keys(chain_root: jax.Array, num_chains: int) -> jax.Array:
    return jax.vmap(lambda c: jax.random.fold_in(chain_root, c))(jnp.arange(num_chains))


def initial_positions(potential: Potential, seed: int, num_chains: int) -> PyTree:
    """The initial states :func:`hmc.sample` starts from (``potential.init`` per chain, or the
    potential's own ``initial_positions``), leading chain axis."""
    if potential.initial_positions is not None:
        count = jax.tree_util.tree_leaves(potential.initial_positions)[0].shape[0]
        if count != num_chains:
            raise ValueError(f"the potential {potential.name!r} brings {count} initial positions (one per chain) but "
                             f"num_chains={num_chains}; give num_chains={count} or init(rng_key) -> q")
        return potential.initial_positions
    return jax.vmap(potential.init)(jax.random.split(root_keys(seed)[0], num_chains))


def preflight_chains(potential: Potential, positions: PyTree, allow: Sequence[str] = (),
                     precision: str | None = None) -> _guard.PreflightReport:
    """The preflight :func:`hmc.sample` runs on a batch of initial states (leading chain axis)."""
    positions = cast_tree(positions, working_dtype(precision, positions))
    return _guard.preflight_batch(potential, positions, allow=list(allow))


def positions_for(potential: Potential, settings: Settings, init_positions: PyTree | None) -> tuple[PyTree, Any]:
    """The initial positions in the working dtype, and that dtype."""
    if settings.precision is not None:
        # float64 switches jax_enable_x64 on before the initial states are drawn: the same
        # states whether or not an earlier call in this process had switched it on
        working_dtype(settings.precision, None)
    if init_positions is None:
        positions = initial_positions(potential, settings.seed, settings.num_chains)
    else:
        positions = jax.tree_util.tree_map(jnp.asarray, init_positions)
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree_util.tree_leaves(positions)}
        if sizes != {settings.num_chains}:
            raise ValueError(f"init_positions need a leading chain axis of size num_chains={settings.num_chains}")
    dtype = settings.dtype(positions)
    positions = cast_tree(positions, dtype)
    if potential.groups:
        _geometry.check_state(potential.groups, jax.tree_util.tree_map(lambda x: x[0], positions))
        positions = jax.jit(lambda q: _geometry.projected(potential.groups, q))(positions)
    return positions, dtype


def recorded_leaves(potential: Potential, names: list[str], record: Sequence[str] | str | None,
                    sizes: Sequence[int] = ()) -> list[str]:
    """The state leaves stored with every draw: ``"auto"`` all of them while they hold at
    most :data:`RECORD_AUTO_SIZE` numbers per chain together (else none, said once in the
    log); ``None`` all; a list those named. ``sizes``: the numbers per chain of each leaf."""
    # An observable with a leaf's name (gaussian's "x") already records it.
    candidates = [n for n in names if n not in potential.observables]
    if record is None:
        return candidates
    if isinstance(record, str):
        if record != "auto":
            raise ValueError(f"record must be 'auto', None or a list of state leaves, got {record!r}")
        # group matrices (complex) stay out: their observables are what a run records
        candidates = [n for n in candidates if n not in potential.groups]
        size = dict(zip(names, sizes))
        total = sum(size.get(n, 0) for n in candidates)
        if total <= RECORD_AUTO_SIZE:
            return candidates
        logger.info("record: auto keeps the state leaves out of the draws (%s: %d numbers per chain and draw, more "
                    "than %d); only observables are recorded. Name leaves in record to keep them.",
                    ", ".join(candidates), total, RECORD_AUTO_SIZE)
        return []
    unknown = sorted(set(record) - set(names))
    if unknown:
        raise ValueError(f"record names unknown state leaves {unknown}; the leaves are {names}")
    clash = sorted(set(record) & set(potential.observables))
    if clash:
        raise ValueError(f"record: leaves {clash} share their names with observables; drop them from record")
    return list(record)


def run_preflight(potential: Potential, settings: Settings, positions: PyTree) -> list[_guard.GuardEvent]:
    """Preflight on every chain's initial state; :class:`GuardRefused` if anything is broken."""
    report = _guard.preflight_batch(potential, positions, allow=list(settings.allow))
    for event in report.events:
        _guard.log_event(event)
    if not report.ok:
        raise GuardRefused(report.events, report)
    return list(report.events)


def initial_mass(settings: Settings, inverse_mass_matrix: Any, dimension: int, dtype: Any) -> tuple[Any, str]:
    """The initial inverse mass matrix (or ``None``: identity) and the mass matrix kind."""
    mass_matrix = settings.mass_matrix
    minv0 = None if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix, dtype)
    if minv0 is not None and minv0.shape not in ((dimension,), (dimension, dimension)):
        raise ValueError(f"inverse_mass_matrix must have shape ({dimension},) or ({dimension}, {dimension})")
    if mass_matrix == "dense" and minv0 is not None and minv0.ndim == 1:
        minv0 = jnp.diag(minv0)
    if mass_matrix != "dense" and minv0 is not None and minv0.ndim == 2:
        mass_matrix = "dense"
    return minv0, mass_matrix


def init_states(potential: Potential, kernel: Any) -> Any:
    """The compiled ``positions -> chain states`` of ``kernel``."""
    return cached_program(potential, ("init_states", kernel),
                          lambda: jax.jit(jax.vmap(kernel.build(potential, "off").init)))


def start(potential: Potential, settings: Settings, init_positions: PyTree | None, record: Sequence[str] | str | None,
          inverse_mass_matrix: Any, resume: Checkpoint | None) -> Start:
    """Positions, preflight, states, step size and adaptation state, or their checkpointed values."""
    positions, dtype = positions_for(potential, settings, init_positions)
    one = jax.tree_util.tree_map(lambda x: x[0], positions)
    names = leaf_names(one)
    record = recorded_leaves(potential, names, record, [int(np.size(x)) for x in jax.tree_util.tree_leaves(one)])
    if resume is not None:
        events = [_guard.GuardEvent(**e) for e in resume.counters.events]
    else:
        events = run_preflight(potential, settings, positions) if settings.guard_on else []
    states = init_states(potential, settings.kernel)(positions)
    keys = chain_keys(root_keys(settings.seed)[1], settings.num_chains)
    dimension = int(ravel_pytree(one)[0].size)
    minv0, mass_matrix = initial_mass(settings, inverse_mass_matrix, dimension, dtype)
    shape = () if settings.pooled else (settings.num_chains,)
    if resume is not None:
        eps0 = jnp.zeros(shape, dtype)  # restored below
    elif settings.step_size is None:
        eps0 = initial_step_size(potential, settings, states, keys, minv0, mass_matrix, dimension, dtype)
    else:
        eps0 = jnp.full(shape, settings.step_size, dtype)

    def make_adapt_state(eps: jax.Array) -> _adaptation.AdaptationState:
        return _adaptation.init(eps, dimension, mass_matrix, dtype, minv0, pooled=settings.pooled,
                                trajectory_length=initial_length_steps(settings) * eps)

    adapt_state = jax.jit(make_adapt_state if settings.pooled else jax.vmap(make_adapt_state))(eps0)
    if resume is not None:
        states = restore_leaves(states, resume.arrays, "state")
        adapt_state = restore_leaves(adapt_state, resume.arrays, "adapt")
    return Start(positions, dtype, names, record, mass_matrix, states, adapt_state, keys, events)


def initial_step_size(potential: Potential, settings: Settings, states: Any, keys: jax.Array, minv0: Any,
                      mass_matrix: str, dimension: int, dtype: Any) -> jax.Array:
    """Hoffman-Gelman doubling heuristic from the initial states (one integrator step)."""
    if minv0 is None and mass_matrix == "dense":
        minv0 = jnp.eye(dimension, dtype=dtype)
    integrator = getattr(settings.kernel, "integrator", "leapfrog")
    timescales = getattr(settings.kernel, "timescales", None)
    split = settings.kernel.split(potential) if timescales else None
    find = cached_program(potential, ("step_size_heuristic", integrator, settings.pooled, timescales),
                          lambda: _step_size_finder(potential, integrator, settings.pooled, split))
    return find(states, keys, minv0, jnp.asarray(0.1, dtype))


def _step_size_finder(potential: Potential, integrator: str, pooled: bool, split: Any = None) -> Any:
    grad_fn = jax.grad(potential.energy)

    def one_chain_acceptance(key, state, eps, minv):
        metric = _integrators.metric_for(potential, minv, state.position)
        momentum = metric.sample_momentum(jax.random.fold_in(key, HEURISTIC_STREAM), state.position)
        begin = _integrators.IntegratorState(state.position, momentum, state.potential_energy_grad)
        end, _ = _integrators.integrate(integrator, grad_fn, metric.velocity, begin, eps, 1, guard=False, split=split,
                                        drift_fn=metric.drift)
        h0 = state.potential_energy + metric.kinetic_energy(momentum)
        h1 = potential.energy(end.position) + metric.kinetic_energy(end.momentum)
        return jnp.minimum(1.0, jnp.exp(h0 - h1))

    @jax.jit
    def find(states, chain_keys, minv, initial):
        if pooled:
            def acc(eps):
                return ordered_mean(jax.vmap(one_chain_acceptance, in_axes=(0, 0, None, None))(
                    chain_keys, states, eps, minv))

            return _adaptation.find_reasonable_step_size(acc, initial)

        def per_chain(key, state):
            return _adaptation.find_reasonable_step_size(lambda eps: one_chain_acceptance(key, state, eps, minv),
                                                         initial)

        return jax.vmap(per_chain)(chain_keys, states)

    return find


__all__ = ["GuardRefused", "Start", "chain_keys", "initial_positions", "preflight_chains", "root_keys", "start"]
