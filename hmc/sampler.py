"""The driver: many chains, warmup, chunked ``lax.scan`` sampling, progress, guard policy.

All chains advance together under ``vmap`` inside one jitted ``lax.scan`` per
chunk. The host loop between chunks owns progress, logging and the guard's
attribution of tripped trajectories. Random numbers are a pure function of
``(seed, chain, iteration)`` (``fold_in``), so results do not depend on the
chunk size and the same seed gives bit-identical draws.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from hmc import adaptation as _adaptation
from hmc import diagnostics as _diagnostics
from hmc import guard as _guard
from hmc import integrators as _integrators
from hmc import kernel as _kernel
from hmc.potential import Potential, cast_tree, leaf_names

logger = logging.getLogger("hmc")

PyTree = Any
STAT_NAMES = ("lp", "energy", "acceptance_rate", "diverging", "step_size", "n_steps", "guard_tripped")
PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}


class GuardRefused(RuntimeError):
    """The preflight guard found a broken model and refused to start."""

    def __init__(self, events: Sequence[_guard.GuardEvent]):
        self.events = list(events)
        lines = "\n  ".join(str(e) for e in self.events)
        super().__init__(f"the gradient guard refused to start sampling:\n  {lines}")


@dataclasses.dataclass
class SampleResult:
    """Draws, statistics and guard findings of one :func:`sample` call.

    ``draws[name]`` and ``stats[name]`` have shape ``(chain, draw, ...)``.
    """

    draws: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    warmup_stats: dict[str, np.ndarray]
    guard_events: list[_guard.GuardEvent]
    step_size: np.ndarray
    inverse_mass_matrix: np.ndarray | None
    final_positions: PyTree
    settings: dict[str, Any]
    exact: dict[str, Any]
    halted: bool = False
    halt_reason: str | None = None

    def summary(self) -> _diagnostics.Summary:
        """Per observable: mean, sd, MCSE, bulk ESS, R-hat and, where known, exact value and z."""
        observables = {k: v for k, v in self.draws.items() if k in self.settings["observables"]}
        info = {
            "integrator": self.settings["integrator"],
            "num_guard_events": len(self.guard_events),
        }
        return _diagnostics.summarize(observables, self.stats, self.exact, info)


def _validate(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _resolve_dtype(precision: str | None, positions: PyTree) -> Any:
    if precision is None:
        leaves = jax.tree_util.tree_leaves(positions)
        return jnp.result_type(*[jnp.asarray(x).dtype for x in leaves])
    _validate("precision", precision, list(PRECISIONS))
    if precision == "float64" and not jax.config.read("jax_enable_x64"):
        # A process-wide switch: every array created afterwards may be 64-bit.
        jax.config.update("jax_enable_x64", True)
    return PRECISIONS[precision]


def sample(
    potential: Potential,
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    integrator: str = "minimum_norm",
    step_size: float | None = None,
    num_steps: int | None = 10,
    trajectory_length: float | None = None,
    jitter: float = 0.0,
    mass_matrix: str = "diagonal",
    inverse_mass_matrix: Any = None,
    target_accept: float = 0.8,
    adaptation: str = "pooled",
    thin: int = 1,
    record: Sequence[str] | None = None,
    guard: str = "reject",
    max_trip_fraction: float = 0.01,
    chunk_size: int = 100,
    precision: str | None = None,
    init_positions: PyTree | None = None,
    divergence_threshold: float = 1000.0,
    progress: bool = True,
) -> SampleResult:
    """Sample ``exp(-U)`` with HMC on ``num_chains`` chains at once.

    Parameters
    ----------
    potential
        The model.
    seed
        Everything random (initial states, momenta, jitter, accept tests) is a
        function of ``(seed, chain, iteration)``.
    num_chains, num_warmup, num_samples, thin
        ``num_samples`` draws are recorded per chain, each ``thin`` trajectories apart.
    integrator
        ``"leapfrog"``, ``"minimum_norm"`` (Omelyan 2MN) or ``"yoshida4"``.
    step_size
        ``None``: found by a doubling heuristic and adapted by dual averaging
        in warmup; a float: fixed (the mass matrix may still be adapted).
    num_steps, trajectory_length, jitter
        Trajectory length control; see :func:`hmc.kernel.build_kernel`. Setting
        ``trajectory_length`` overrides ``num_steps``.
    mass_matrix, inverse_mass_matrix
        ``"identity"``, ``"diagonal"`` or ``"dense"``, adapted in warmup from
        the initial ``inverse_mass_matrix`` (flat ``(d,)`` or ``(d, d)``; identity if ``None``).
    target_accept
        Dual-averaging target of the mean acceptance probability.
    adaptation
        ``"pooled"``: one step size and mass matrix estimated from all chains;
        ``"per_chain"``: each chain adapts its own (Stan).
    record
        State leaves stored with every draw; ``None`` stores all, ``[]`` none
        (observables are always stored).
    guard
        ``"reject"``: tripped trajectories are rejected and logged; the run
        halts when more than ``max_trip_fraction`` of all trajectories
        tripped. ``"halt"``: stop at the end of the first chunk with a trip.
        ``"off"``: no in-loop check and no preflight (benchmarks only).
    chunk_size
        Trajectories per jitted scan; the host logs, reports progress and
        attributes guard trips between chunks.
    precision
        ``"float32"``, ``"float64"`` (turns on ``jax_enable_x64``) or ``None``
        (the dtype of the initial states).
    init_positions
        A batch of initial states with a leading chain axis instead of ``potential.init``.
    """
    _integrators.coefficients(integrator)
    _validate("guard", guard, _guard.POLICIES)
    _validate("mass_matrix", mass_matrix, _adaptation.MASS_MATRIX_KINDS)
    _validate("adaptation", adaptation, ["pooled", "per_chain"])
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_samples", num_samples, 1),
        ("num_warmup", num_warmup, 0),
        ("thin", thin, 1),
        ("chunk_size", chunk_size, 1),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if trajectory_length is not None:
        num_steps = None
    if step_size is None and num_warmup == 0:
        raise ValueError("step_size=None needs num_warmup > 0 to adapt it; give a float step_size")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if not 0.0 <= max_trip_fraction <= 1.0:
        raise ValueError(f"max_trip_fraction must be in [0, 1], got {max_trip_fraction!r}")

    root = jax.random.key(seed)
    init_key, chain_root = jax.random.split(root)
    chains = np.arange(num_chains)
    if init_positions is None:
        positions = jax.vmap(potential.init)(jax.random.split(init_key, num_chains))
    else:
        positions = jax.tree_util.tree_map(jnp.asarray, init_positions)
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree_util.tree_leaves(positions)}
        if sizes != {num_chains}:
            raise ValueError(f"init_positions need a leading chain axis of size num_chains={num_chains}")
    dtype = _resolve_dtype(precision, positions)
    positions = cast_tree(positions, dtype)
    one_position = jax.tree_util.tree_map(lambda x: x[0], positions)
    names = leaf_names(one_position)
    dimension = int(ravel_pytree(one_position)[0].size)

    if record is None:
        # An observable with a leaf's name (gaussian's "x") already records it.
        record = [n for n in names if n not in potential.observables]
    unknown = sorted(set(record) - set(names))
    if unknown:
        raise ValueError(f"record names unknown state leaves {unknown}; the leaves are {names}")
    clash = sorted(set(record) & set(potential.observables))
    if clash:
        raise ValueError(f"record: leaves {clash} share their names with observables; drop them from record")

    guard_on = guard != "off"
    events: list[_guard.GuardEvent] = []
    if guard_on:
        refused = _guard.check_initial_states(potential, positions, chains)
        for event in refused:
            _guard.log_event(event)
        if refused:
            raise GuardRefused(refused)

    kernel = _kernel.build_kernel(
        potential.energy,
        integrator,
        num_steps=num_steps,
        trajectory_length=trajectory_length,
        jitter=jitter,
        divergence_threshold=divergence_threshold,
        guard=guard_on,
    )
    states = jax.jit(jax.vmap(lambda q: _kernel.init(q, potential.energy)))(positions)
    chain_keys = jax.vmap(lambda c: jax.random.fold_in(chain_root, c))(jnp.asarray(chains))

    pooled = adaptation == "pooled"
    minv0 = None if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix, dtype)
    if minv0 is not None and minv0.shape not in ((dimension,), (dimension, dimension)):
        raise ValueError(f"inverse_mass_matrix must have shape ({dimension},) or ({dimension}, {dimension})")
    if mass_matrix == "dense" and minv0 is not None and minv0.ndim == 1:
        minv0 = jnp.diag(minv0)
    if mass_matrix != "dense" and minv0 is not None and minv0.ndim == 2:
        mass_matrix = "dense"

    # -- initial step size ------------------------------------------------------
    if step_size is None:
        eps0 = _initial_step_size(potential, integrator, states, chain_keys, minv0, mass_matrix, dimension, dtype, pooled)
    else:
        eps0 = jnp.full((), step_size, dtype) if pooled else jnp.full((num_chains,), step_size, dtype)

    def make_adapt_state(eps: jax.Array) -> _adaptation.AdaptationState:
        return _adaptation.init(eps, dimension, mass_matrix, dtype, minv0)

    adapt_state = make_adapt_state(eps0) if pooled else jax.vmap(make_adapt_state)(eps0)
    axis = None if pooled else 0

    def run_kernel(keys: jax.Array, states: _kernel.HMCState, eps: jax.Array, minv: jax.Array):
        minv = None if mass_matrix == "identity" else minv
        m_axis = None if minv is None else axis
        return jax.vmap(kernel, in_axes=(0, 0, axis, m_axis))(keys, states, eps, minv)

    trip_template = (
        jnp.full((num_chains,), -1, jnp.int32),
        jnp.full((num_chains,), -1, jnp.int32),
        positions,
    )

    def record_trip(trips: tuple, info: _kernel.HMCInfo, iteration: jax.Array) -> tuple:
        draw, step, where = trips
        new = info.guard_tripped & (draw < 0)
        return (
            jnp.where(new, iteration, draw).astype(jnp.int32),
            jnp.where(new, info.guard_step, step).astype(jnp.int32),
            jax.tree_util.tree_map(
                lambda p, w: jnp.where(new.reshape((-1,) + (1,) * (p.ndim - 1)), p, w), info.guard_position, where
            ),
        )

    schedule = _adaptation.build_schedule(num_warmup)

    @jax.jit
    def warmup_chunk(states, adapt_state, start, n_valid):
        def body(carry, i):
            states, adapt_state, trips = carry
            t = start + i

            def step(operand):
                states, adapt_state, trips = operand
                keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(chain_keys, t)
                eps, minv = adapt_state.step_size, adapt_state.inverse_mass_matrix
                states, info = run_kernel(keys, states, eps, minv)
                flat = jax.vmap(lambda q: ravel_pytree(q)[0])(states.position)
                update = lambda s, a, x: _adaptation.update(  # noqa: E731
                    s,
                    t,
                    a,
                    x,
                    schedule=schedule,
                    target_accept=target_accept,
                    adapt_step_size=step_size is None,
                    adapt_mass_matrix=mass_matrix != "identity",
                )
                if pooled:
                    adapt_state = update(adapt_state, info.acceptance_rate.mean(), flat)
                else:
                    adapt_state = jax.vmap(update)(adapt_state, info.acceptance_rate, flat[:, None, :])
                trips = record_trip(trips, info, t)
                out = {
                    "acceptance_rate": info.acceptance_rate,
                    "step_size": info.step_size,
                    "diverging": info.is_divergent,
                    "guard_tripped": info.guard_tripped,
                }
                return (states, adapt_state, trips), out

            def skip(operand):
                zeros = {
                    "acceptance_rate": jnp.zeros((num_chains,), dtype),
                    "step_size": jnp.zeros((num_chains,), dtype),
                    "diverging": jnp.zeros((num_chains,), bool),
                    "guard_tripped": jnp.zeros((num_chains,), bool),
                }
                return operand, zeros

            return jax.lax.cond(i < n_valid, step, skip, (states, adapt_state, trips))

        (states, adapt_state, trips), out = jax.lax.scan(
            body, (states, adapt_state, trip_template), jnp.arange(chunk_size)
        )
        return states, adapt_state, trips, out

    @jax.jit
    def sample_chunk(states, eps, minv, start, n_valid):
        def one_draw(carry, i):
            states, trips = carry

            def step(operand):
                states, trips = operand

                def inner(j, c):
                    states, trips, acc, div, tripped, _ = c
                    t = start + i * thin + j
                    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(chain_keys, t)
                    states, info = run_kernel(keys, states, eps, minv)
                    trips = record_trip(trips, info, num_warmup + i + (start - num_warmup) // thin)
                    return (
                        states,
                        trips,
                        acc + info.acceptance_rate,
                        div | info.is_divergent,
                        tripped | info.guard_tripped,
                        info,
                    )

                first_states, first_trips, a0, d0, g0, info0 = inner(0, (
                    states,
                    trips,
                    jnp.zeros((num_chains,), dtype),
                    jnp.zeros((num_chains,), bool),
                    jnp.zeros((num_chains,), bool),
                    None,
                ))
                if thin > 1:
                    states, trips, acc, div, tripped, info = jax.lax.fori_loop(
                        1, thin, inner, (first_states, first_trips, a0, d0, g0, info0)
                    )
                else:
                    states, trips, acc, div, tripped, info = first_states, first_trips, a0, d0, g0, info0
                out = dict(jax.vmap(potential.observe)(states.position))
                leaves = dict(zip(names, jax.tree_util.tree_leaves(states.position)))
                out.update({name: leaves[name] for name in record})
                out.update(
                    lp=-states.potential_energy,
                    energy=info.energy,
                    acceptance_rate=acc / thin,
                    diverging=div,
                    step_size=info.step_size,
                    n_steps=info.num_steps,
                    guard_tripped=tripped,
                )
                return (states, trips), out

            return step((states, trips))

        def body(carry, i):
            shapes = jax.eval_shape(lambda c: one_draw(c, i)[1], carry)
            return jax.lax.cond(
                i < n_valid,
                lambda c: one_draw(c, i),
                lambda c: (c, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)),
                carry,
            )

        (states, trips), out = jax.lax.scan(body, (states, trip_template), jnp.arange(chunk_size))
        return states, trips, out

    # -- host loop --------------------------------------------------------------
    total = num_warmup + num_samples
    bar = tqdm(
        total=total,
        desc=f"hmc {potential.name}",
        unit="it",
        disable=None if progress else True,
        mininterval=1.0,
        file=sys.stderr,
    )
    log_progress = progress and bar.disable
    started = last_log = time.perf_counter()
    warmup_out: list[dict] = []
    sample_out: list[dict] = []
    trajectories = 0
    tripped_total = 0
    halted, halt_reason = False, None
    done = 0

    def handle_trips(trips: tuple, phase: str) -> int:
        draw, step, where = (np.asarray(trips[0]), np.asarray(trips[1]), trips[2])
        seen: set[tuple] = set()
        tripped_chains = np.flatnonzero(draw >= 0)
        for c in tripped_chains[:MAX_ATTRIBUTIONS_PER_CHUNK]:
            position = jax.tree_util.tree_map(lambda x: x[c], where)
            for event in _guard.attribute(
                potential,
                position,
                phase=phase,
                chain=int(c),
                draw=int(draw[c]) - (num_warmup if phase == "sampling" else 0),
                leapfrog_step=int(step[c]),
                action="halted" if guard == "halt" else "rejected",
            ):
                key = (event.kind, event.term, event.leaf, event.primitive)
                if key in seen:
                    continue
                seen.add(key)
                events.append(event)
                _guard.log_event(event)
        return len(tripped_chains)

    def policy_check(new_trips: int) -> tuple[bool, str | None]:
        if not guard_on or new_trips == 0:
            return False, None
        if guard == "halt":
            return True, "guard policy 'halt': a trajectory tripped the gradient guard"
        fraction = tripped_total / max(trajectories, 1)
        if fraction > max_trip_fraction:
            return True, (
                f"{tripped_total} of {trajectories} trajectories ({fraction:.2%}) tripped the gradient guard, "
                f"more than guard.max_trip_fraction={max_trip_fraction}"
            )
        return False, None

    def report(phase: str) -> None:
        nonlocal last_log
        bar.update(done - bar.n)
        now = time.perf_counter()
        if log_progress and (now - last_log > 10.0 or done == total):
            last_log = now
            logger.info(
                "%s: %d/%d iterations (%s), %.1f it/s, %d guard trips",
                potential.name, done, total, phase, done / max(now - started, 1e-9), tripped_total,
            )

    try:
        for start in range(0, num_warmup, chunk_size):
            n = min(chunk_size, num_warmup - start)
            states, adapt_state, trips, out = warmup_chunk(states, adapt_state, start, n)
            out = {k: np.asarray(v[:n]) for k, v in out.items()}
            warmup_out.append(out)
            trajectories += n * num_chains
            new = int(out["guard_tripped"].sum())
            tripped_total += new
            if new:
                handle_trips(trips, "warmup")
            done += n
            report("warmup")
            halted, halt_reason = policy_check(new)
            if halted:
                break

        eps = adapt_state.step_size
        minv = adapt_state.inverse_mass_matrix
        start = num_warmup
        drawn = 0
        while not halted and drawn < num_samples:
            n = min(chunk_size, num_samples - drawn)
            states, trips, out = sample_chunk(states, eps, minv, start, n)
            out = {k: np.asarray(v[:n]) for k, v in out.items()}
            sample_out.append(out)
            start += n * thin
            drawn += n
            trajectories += n * thin * num_chains
            new = int(out["guard_tripped"].sum())
            tripped_total += new
            if new:
                handle_trips(trips, "sampling")
            done += n
            report("sampling")
            halted, halt_reason = policy_check(new)
    finally:
        bar.close()

    if halted:
        logger.error("sampling halted: %s", halt_reason)

    def stack(chunks: list[dict]) -> dict[str, np.ndarray]:
        if not chunks:
            return {}
        # scan output is (draw, chain, ...); results are (chain, draw, ...)
        return {k: np.swapaxes(np.concatenate([c[k] for c in chunks]), 0, 1) for k in chunks[0]}

    sampled = stack(sample_out)
    draws = {k: v for k, v in sampled.items() if k not in STAT_NAMES}
    stats = {k: sampled[k] for k in STAT_NAMES if k in sampled}
    step_out = np.asarray(adapt_state.step_size)
    return SampleResult(
        draws=draws,
        stats=stats,
        warmup_stats=stack(warmup_out),
        guard_events=events,
        step_size=step_out,
        inverse_mass_matrix=None if mass_matrix == "identity" else np.asarray(adapt_state.inverse_mass_matrix),
        final_positions=jax.tree_util.tree_map(np.asarray, states.position),
        settings=dict(
            seed=seed,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            integrator=integrator,
            num_steps=num_steps,
            trajectory_length=trajectory_length,
            jitter=jitter,
            mass_matrix=mass_matrix,
            adaptation=adaptation,
            target_accept=target_accept,
            thin=thin,
            guard=guard,
            dtype=jnp.dtype(dtype).name,
            observables=list(potential.observables),
            record=list(record),
            leaves=names,
        ),
        exact={k: np.asarray(v) for k, v in potential.exact.items()},
        halted=halted,
        halt_reason=halt_reason,
    )


MAX_ATTRIBUTIONS_PER_CHUNK = 8
HEURISTIC_STREAM = 2**31 - 1


def _initial_step_size(potential, integrator, states, chain_keys, minv0, mass_matrix, dimension, dtype, pooled):
    """Hoffman-Gelman doubling heuristic from the initial states (one integrator step)."""
    grad_fn = jax.grad(potential.energy)
    if minv0 is None and mass_matrix == "dense":
        minv0 = jnp.eye(dimension, dtype=dtype)

    def one_chain_acceptance(key, state, eps):
        metric = _integrators.euclidean_metric(minv0, state.position)
        # An iteration index no trajectory uses: the heuristic's momenta are its own.
        momentum = metric.sample_momentum(jax.random.fold_in(key, HEURISTIC_STREAM), state.position)
        start = _integrators.IntegratorState(state.position, momentum, state.potential_energy_grad)
        end, _ = _integrators.integrate(integrator, grad_fn, metric.velocity, start, eps, 1, guard=False)
        h0 = state.potential_energy + metric.kinetic_energy(momentum)
        h1 = potential.energy(end.position) + metric.kinetic_energy(end.momentum)
        return jnp.minimum(1.0, jnp.exp(h0 - h1))

    initial = jnp.asarray(0.1, dtype)
    if pooled:

        @jax.jit
        def find(states):
            def acc(eps):
                return jax.vmap(one_chain_acceptance, in_axes=(0, 0, None))(chain_keys, states, eps).mean()

            return _adaptation.find_reasonable_step_size(acc, initial)

        return find(states)

    @jax.jit
    def find_each(states):
        def per_chain(key, state):
            return _adaptation.find_reasonable_step_size(lambda eps: one_chain_acceptance(key, state, eps), initial)

        return jax.vmap(per_chain)(chain_keys, states)

    return find_each(states)


def num_gradient_evaluations(settings: dict[str, Any], n_steps: np.ndarray) -> int:
    """Gradient evaluations spent on the trajectories described by ``n_steps``."""
    return int(np.sum(n_steps)) * _integrators.gradient_evaluations_per_step(settings["integrator"])


__all__ = ["GuardRefused", "SampleResult", "sample", "num_gradient_evaluations"]
