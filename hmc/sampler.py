"""The driver: many chains, warmup, chunked ``lax.scan`` sampling, progress, guard policy.

All chains advance together under ``vmap`` inside one jitted ``lax.scan`` per
chunk. The host loop between chunks owns progress, logging and the guard's
attribution of tripped trajectories. Random numbers are a pure function of
``(seed, chain, iteration)`` (``fold_in``), so results do not depend on the
chunk size and the same seed gives bit-identical draws.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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
from hmc import rng as _rng
from hmc.potential import Potential, cast_tree, leaf_names

logger = logging.getLogger("hmc")

PyTree = Any
STAT_NAMES = ("lp", "energy", "acceptance_rate", "diverging", "step_size", "n_steps", "guard_tripped")
STAT_PREFIX = "stat:"
PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}


class GuardRefused(RuntimeError):
    """The preflight guard found a broken model and refused to start."""

    def __init__(self, events: Sequence[_guard.GuardEvent], report: _guard.PreflightReport | None = None):
        self.events = list(events)
        self.report = report
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
    timing: dict[str, float] = dataclasses.field(default_factory=dict)
    derived: dict[str, Any] = dataclasses.field(default_factory=dict)
    stopped: bool = False

    def halted_reason_text(self) -> str:
        return self.halt_reason if self.halted else "no"

    def summary(self) -> _diagnostics.Summary:
        """Per observable: mean, sd, MCSE, bulk ESS, R-hat and, where known, exact value and z."""
        observables = {k: v for k, v in self.draws.items() if k in self.settings["observables"]}
        info = {
            "integrator": self.settings["integrator"],
            "num_guard_events": len(self.guard_events),
        }
        return _diagnostics.summarize(observables, self.stats, self.exact, info, self.derived)


@dataclasses.dataclass
class Checkpoint:
    """Everything a :func:`sample` call needs to continue bit-exactly where it stopped.

    ``meta`` holds JSON-able counters (iterations done, guard counters, events),
    ``arrays`` the chain states and the adaptation state as flat leaves
    (``"state/<i>"``, ``"adapt/<i>"``), and ``warmup_chunks``/``sample_chunks``
    the per-chunk outputs so far (scan layout ``(iteration, chain, ...)``).
    Random numbers are a function of ``(seed, chain, iteration)``, so no key
    state is needed beyond the seed.
    """

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    warmup_chunks: list[dict[str, np.ndarray]]
    sample_chunks: list[dict[str, np.ndarray]]

    FORMAT = 1

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))


@dataclasses.dataclass
class ChunkEnd:
    """What :func:`sample` tells its ``on_chunk`` callback after every chunk."""

    record: dict[str, Any]
    snapshot: Callable[[], Checkpoint]
    events: list[_guard.GuardEvent]


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
    allow: Sequence[str] = (),
    guard_check: str = "trajectory",
    probe_chains: int = 4,
    chunk_size: int = 100,
    precision: str | None = None,
    init_positions: PyTree | None = None,
    divergence_threshold: float = 1000.0,
    progress: bool = True,
    resume: Checkpoint | None = None,
    on_chunk: Callable[[ChunkEnd], bool | None] | None = None,
    devices: int | str | None = None,
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
        halts when more than ``max_trip_fraction`` of the sampling phase's
        trajectories tripped (the settled sampler). Warmup trips are rejected
        and logged but not counted: while the step size is searched, dual
        averaging tries steps past the integrator's stability limit, and those
        trajectories reach regions the settled sampler never visits. Only a
        warmup chunk in which most trajectories (more than half) tripped halts:
        the sampler is then stuck, not searching. ``"halt"``: stop at the end
        of the first chunk with a trip (any phase).
        ``"off"``: no in-loop check and no preflight (benchmarks only).
    guard_check
        ``"trajectory"`` (default): the integrator carries no per-step check; a
        trajectory whose momentum ends non-finite tripped (NaN and Inf are
        absorbing), and the tripped ones are re-run with the per-step check to
        find the first failing gradient and its position. ``"step"``: every
        gradient is checked inside the integrator. Both reject the same
        trajectories; see :func:`hmc.kernel.build_kernel`.
    allow
        Preflight findings to accept instead of refusing to start: ``"kind"``,
        ``"kind:term"`` or ``"kind:term:leaf"`` (see :func:`hmc.guard.preflight`).
    probe_chains
        At every chunk boundary the current states of this many chains (in
        rotation) are probed for elements that no term's gradient reaches.
    chunk_size
        Trajectories per jitted scan; the host logs, reports progress and
        attributes guard trips between chunks.
    precision
        ``"float32"``, ``"float64"`` (turns on ``jax_enable_x64``) or ``None``
        (the dtype of the initial states).
    init_positions
        A batch of initial states with a leading chain axis instead of ``potential.init``.
    resume
        A :class:`Checkpoint` from an earlier call with the same arguments: the
        run continues where it stopped and gives draws bit-identical to an
        uninterrupted run (preflight and the step-size heuristic are not repeated).
    devices
        ``None`` or ``1``: one device. ``"auto"``: shard the chain axis over the
        local devices (as many as divide ``num_chains``); an integer ``n``: over
        the first ``n`` local devices (``num_chains`` must be a multiple of ``n``).
        Pooled adaptation then averages over all chains across devices.
    on_chunk
        Called after every chunk with a :class:`ChunkEnd` (a log record and a
        ``snapshot()`` that returns a :class:`Checkpoint`); returning ``True``
        stops the run there (the result then has ``stopped=True``).
    """
    _integrators.coefficients(integrator)
    _validate("guard", guard, _guard.POLICIES)
    _validate("guard_check", guard_check, ["trajectory", "step"])
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

    chain_root = _root_keys(seed)[1]
    chains = np.arange(num_chains)
    mesh_devices = resolve_devices(devices, num_chains)
    if init_positions is None:
        positions = initial_positions(potential, seed, num_chains)
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
    preflight_report = None
    if resume is not None:
        events.extend(_guard.GuardEvent(**e) for e in resume.meta["events"])
    elif guard_on:
        allow = list(allow)
        preflight_report = _preflight_all_chains(potential, positions, chains, allow)
        for event in preflight_report.events:
            _guard.log_event(event)
        events.extend(preflight_report.events)
        if not preflight_report.ok:
            raise GuardRefused(preflight_report.events, preflight_report)

    if guard_on and resume is None:
        states = _initial_program(potential)(positions)[0]
    else:
        init_states = _cached(
            potential, "init_states", lambda: jax.jit(jax.vmap(lambda q: _kernel.init(q, potential.energy)))
        )
        states = init_states(positions)
    chain_keys = _chain_keys(chain_root, num_chains)

    pooled = adaptation == "pooled"
    minv0 = None if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix, dtype)
    if minv0 is not None and minv0.shape not in ((dimension,), (dimension, dimension)):
        raise ValueError(f"inverse_mass_matrix must have shape ({dimension},) or ({dimension}, {dimension})")
    if mass_matrix == "dense" and minv0 is not None and minv0.ndim == 1:
        minv0 = jnp.diag(minv0)
    if mass_matrix != "dense" and minv0 is not None and minv0.ndim == 2:
        mass_matrix = "dense"

    # -- initial step size ------------------------------------------------------
    if resume is not None:
        eps0 = jnp.zeros((), dtype) if pooled else jnp.zeros((num_chains,), dtype)  # restored below
    elif step_size is None:
        eps0 = _initial_step_size(potential, integrator, states, chain_keys, minv0, mass_matrix, dimension, dtype, pooled)
    else:
        eps0 = jnp.full((), step_size, dtype) if pooled else jnp.full((num_chains,), step_size, dtype)

    def make_adapt_state(eps: jax.Array) -> _adaptation.AdaptationState:
        return _adaptation.init(eps, dimension, mass_matrix, dtype, minv0)

    adapt_state = jax.jit(make_adapt_state if pooled else jax.vmap(make_adapt_state))(eps0)
    if resume is not None:
        states = _restore_leaves(states, resume.arrays, "state")
        adapt_state = _restore_leaves(adapt_state, resume.arrays, "adapt")
    if len(mesh_devices) > 1:
        states, chain_keys, adapt_state = _shard(mesh_devices, states, chain_keys, adapt_state, pooled)
    static = _Static(
        integrator=integrator,
        num_steps=num_steps,
        trajectory_length=trajectory_length,
        jitter=float(jitter),
        divergence_threshold=float(divergence_threshold),
        guard=guard_check if guard_on else "off",
        mass_matrix=mass_matrix,
        pooled=pooled,
        adapt_step_size=step_size is None,
        target_accept=float(target_accept),
        num_warmup=int(num_warmup),
        thin=int(thin),
        names=tuple(names),
        record=tuple(record),
        chunk_size=int(chunk_size),
    )
    # chunks run without the replay of tripped trajectories until one trips (see
    # _build_chunk_functions): a model that never trips never compiles the replay
    lazy_replay = static.guard == "trajectory"
    warmup_chunk, sample_chunk = _chunk_functions(potential, static, with_replay=not lazy_replay)

    def rerun_with_replay(phase: str, out: dict, *args: Any) -> tuple | None:
        """The chunk again with the replay, if any trajectory of it tripped."""
        tripped = out["guard_tripped"] if phase == "warmup" else out[STAT_PREFIX + "guard_tripped"]
        if not lazy_replay or not np.any(tripped):
            return None
        located = _chunk_functions(potential, static, with_replay=True)
        return (located[0] if phase == "warmup" else located[1])(*args)

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
    meta = resume.meta if resume is not None else {}
    elapsed_before = float(meta.get("elapsed", 0.0))
    started = last_log = time.perf_counter()
    warmup_out: list[dict] = list(resume.warmup_chunks) if resume is not None else []
    sample_out: list[dict] = list(resume.sample_chunks) if resume is not None else []
    trajectories = int(meta.get("trajectories", 0))
    tripped_total = int(meta.get("tripped_total", 0))
    # the fraction of trips is judged over the sampling phase (the settled sampler)
    judged_trajectories = int(meta.get("judged_trajectories", 0))
    judged_trips = int(meta.get("judged_trips", 0))
    halted, halt_reason = bool(meta.get("halted", False)), meta.get("halt_reason")
    warmup_done = int(meta.get("warmup_done", 0))
    drawn = int(meta.get("drawn", 0))
    done = warmup_done + drawn
    stopped = False

    def handle_trips(trips: tuple, phase: str) -> None:
        """Attribute the located trips of a chunk (a few, deduplicated by term and primitive)."""
        trips = _host(trips)
        count = int(trips[0])
        chains_, iterations, steps = (np.asarray(x) for x in trips[1:4])
        seen: set[tuple] = set()
        action = "halted" if guard == "halt" else "rejected"
        for k in range(min(count, MAX_ATTRIBUTIONS_PER_CHUNK)):
            position = jax.tree_util.tree_map(lambda x: x[k], trips[4])
            draw = int(iterations[k]) - (num_warmup if phase == "sampling" else 0)
            for event in _guard.attribute(potential, position, phase=phase, chain=int(chains_[k]), draw=draw,
                                          leapfrog_step=int(steps[k]), action=action):
                key = (event.kind, event.term, event.leaf, event.primitive)
                if key in seen:
                    continue
                seen.add(key)
                events.append(event)
                _guard.log_event(event)
        if count == 0:
            events.append(_guard.GuardEvent(
                kind="nonfinite_gradient", phase=phase, action=action,
                message="trajectories produced non-finite gradients that were not located (more chains "
                "tripped in one iteration than are replayed at once, or the replay did not reproduce them)",
            ))
            _guard.log_event(events[-1])

    def policy_check(phase: str, new_trips: int, chunk_trajectories: int) -> tuple[bool, str | None]:
        if not guard_on or new_trips == 0:
            return False, None
        if guard == "halt":
            return True, "guard policy 'halt': a trajectory tripped the gradient guard"
        if phase == "warmup":
            if new_trips > chunk_trajectories / 2:
                return True, (
                    f"{new_trips} of the {chunk_trajectories} trajectories of a warmup chunk tripped the gradient "
                    "guard: the sampler is stuck, not searching"
                )
            return False, None
        fraction = judged_trips / max(judged_trajectories, 1)
        if fraction > max_trip_fraction:
            return True, (
                f"{judged_trips} of {judged_trajectories} sampling trajectories ({fraction:.2%}) tripped the "
                f"gradient guard, more than guard.max_trip_fraction={max_trip_fraction}"
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

    guard_seconds = float(meta.get("guard_seconds", 0.0))
    probe_seen: set[tuple] = {(leaf, tuple(map(tuple, idx))) for leaf, idx in meta.get("probe_seen", [])}
    chunk_index = int(meta.get("chunk_index", 0))

    def probe(phase: str, draw: int) -> None:
        """Element-level reach of the current states of a few chains, in rotation."""
        nonlocal chunk_index
        k = min(probe_chains, num_chains)
        if k <= 0:
            return
        picked = (np.arange(k) + chunk_index * k) % num_chains
        chunk_index += 1
        # every chain through the program compiled for the initial checks (no compilation
        # of its own; about two gradients per chain, against the chunk's thousands), then
        # the picked ones reported
        positions = _host(states.position) if jax.process_count() > 1 else states.position
        masks = [np.asarray(m)[picked] for m in _initial_program(potential)(positions)[2]]
        found = _guard.check_element_reach(masks, names, picked, phase=phase, action="reported", draw=draw)
        for event in found:
            key = (event.leaf, tuple(map(tuple, event.indices or [])))
            if key not in probe_seen:
                probe_seen.add(key)
                events.append(event)
                _guard.log_event(event)

    def snapshot() -> Checkpoint:
        """The whole sampler state now (at a chunk boundary)."""
        arrays = {f"state/{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(_host(states)))}
        arrays.update({f"adapt/{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(_host(adapt_state)))})
        return Checkpoint(
            meta=dict(
                format=Checkpoint.FORMAT,
                complete=bool(halted or drawn >= num_samples),
                warmup_done=warmup_done,
                drawn=drawn,
                trajectories=trajectories,
                tripped_total=tripped_total,
                judged_trajectories=judged_trajectories,
                judged_trips=judged_trips,
                halted=halted,
                halt_reason=halt_reason,
                guard_seconds=guard_seconds,
                elapsed=elapsed_before + time.perf_counter() - started,
                chunk_index=chunk_index,
                probe_seen=[[leaf, [list(i) for i in idx]] for leaf, idx in sorted(probe_seen)],
                events=[e.to_dict() for e in events],
            ),
            arrays=arrays,
            warmup_chunks=list(warmup_out),
            sample_chunks=list(sample_out),
        )

    def after_chunk(phase: str, trips: tuple, out: dict, n_traj: int, draw: int, seconds: float) -> tuple[bool, str | None]:
        nonlocal trajectories, tripped_total, done, guard_seconds, stopped, judged_trajectories, judged_trips
        trajectories += n_traj
        tripped_now = out["guard_tripped"] if "guard_tripped" in out else out[STAT_PREFIX + "guard_tripped"]
        new = int(tripped_now.sum())
        tripped_total += new
        if phase == "sampling":
            judged_trajectories += n_traj
            judged_trips += new
        events_before = len(events)
        if guard_on:
            t0 = time.perf_counter()
            if new:
                handle_trips(trips, phase)
            probe(phase, draw)
            guard_seconds += time.perf_counter() - t0
        done += len(tripped_now)
        report(phase)
        result = policy_check(phase, new, n_traj)
        if on_chunk is not None:
            get = lambda k: out[k] if k in out else out[STAT_PREFIX + k]  # noqa: E731
            record = dict(
                phase=phase,
                iterations_done=done,
                iterations_total=total,
                warmup_done=warmup_done,
                draws_done=drawn,
                trajectories=n_traj,
                acceptance_rate=float(np.mean(get("acceptance_rate"))),
                divergences=int(np.sum(get("diverging"))),
                guard_trips=new,
                guard_trips_total=tripped_total,
                guard_trips_judged=judged_trips,
                guard_events=len(events) - events_before,
                step_size=float(np.mean(get("step_size"))),
                seconds=seconds,
                trajectories_per_second=n_traj / max(seconds, 1e-12),
                gradients_per_second=_gradients(integrator, get("n_steps"), n_traj) / max(seconds, 1e-12),
                elapsed=elapsed_before + time.perf_counter() - started,
                halted=result[0],
            )
            if on_chunk(ChunkEnd(record=record, snapshot=snapshot, events=events)):
                stopped = True
        return result

    try:
        while not (halted or stopped) and warmup_done < num_warmup:
            start = warmup_done
            n = min(chunk_size, num_warmup - start)
            t0 = time.perf_counter()
            args = (chain_keys, states, adapt_state, start, n)
            states, adapt_state, trips, out = warmup_chunk(*args)
            out = {k: v[:n] for k, v in _host(out).items()}
            again = rerun_with_replay("warmup", out, *args)
            if again is not None:
                states, adapt_state, trips, out = again
                out = {k: v[:n] for k, v in _host(out).items()}
            seconds = time.perf_counter() - t0
            warmup_out.append(out)
            warmup_done += n
            halted, halt_reason = after_chunk("warmup", trips, out, n * num_chains, start + n - 1, seconds)

        eps = adapt_state.step_size
        minv = adapt_state.inverse_mass_matrix
        while not (halted or stopped) and drawn < num_samples:
            start = num_warmup + drawn * thin
            n = min(chunk_size, num_samples - drawn)
            t0 = time.perf_counter()
            args = (chain_keys, states, eps, minv, start, n)
            states, trips, out = sample_chunk(*args)
            out = {k: v[:n] for k, v in _host(out).items()}
            again = rerun_with_replay("sampling", out, *args)
            if again is not None:
                states, trips, out = again
                out = {k: v[:n] for k, v in _host(out).items()}
            seconds = time.perf_counter() - t0
            sample_out.append(out)
            drawn += n
            halted, halt_reason = after_chunk("sampling", trips, out, n * thin * num_chains, drawn - 1, seconds)
    finally:
        bar.close()
    elapsed = elapsed_before + time.perf_counter() - started

    if halted:
        logger.error("sampling halted: %s", halt_reason)

    def stack(chunks: list[dict]) -> dict[str, np.ndarray]:
        if not chunks:
            return {}
        # scan output is (draw, chain, ...); results are (chain, draw, ...)
        return {k: np.swapaxes(np.concatenate([c[k] for c in chunks]), 0, 1) for k in chunks[0]}

    sampled = stack(sample_out)
    if not sampled:
        # halted before the first draw: empty (chain, 0, ...) arrays with the right names
        shapes = jax.eval_shape(lambda q: jax.vmap(potential.observe)(q), states.position)
        sampled = {k: np.zeros((num_chains, 0) + s.shape[1:], s.dtype) for k, s in shapes.items()}
        leaves = dict(zip(names, jax.tree_util.tree_leaves(states.position)))
        sampled.update({k: np.zeros((num_chains, 0) + leaves[k].shape[1:], leaves[k].dtype) for k in record})
        for k in STAT_NAMES:
            sampled[STAT_PREFIX + k] = np.zeros((num_chains, 0), bool if k in ("diverging", "guard_tripped") else
                                  (np.int32 if k == "n_steps" else dtype))
    draws = {k: v for k, v in sampled.items() if not k.startswith(STAT_PREFIX)}
    stats = {k: sampled[STAT_PREFIX + k] for k in STAT_NAMES}
    adapt_state = _host(adapt_state)
    step_out = np.asarray(adapt_state.step_size)
    return SampleResult(
        draws=draws,
        stats=stats,
        warmup_stats=stack(warmup_out),
        guard_events=events,
        step_size=step_out,
        inverse_mass_matrix=None if mass_matrix == "identity" else np.asarray(adapt_state.inverse_mass_matrix),
        final_positions=_host(states.position),
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
            devices=len(mesh_devices),
            dtype=jnp.dtype(dtype).name,
            observables=list(potential.observables),
            record=list(record),
            leaves=names,
        ),
        exact={k: np.asarray(v) for k, v in potential.exact.items()},
        halted=halted,
        halt_reason=halt_reason,
        timing={"total_seconds": elapsed, "guard_host_seconds": guard_seconds},
        derived=dict(potential.derived),
        stopped=stopped,
    )


def _ordered_mean(x: jax.Array) -> jax.Array:
    """Mean over the chain axis with a fixed pairwise order of additions (halves added
    elementwise, log2(n) vectorised steps): the same rounding whether the chains live on
    one device or are sharded over several. XLA's own reduction rounds differently
    across devices, and adaptation would amplify the difference."""
    n = x.shape[0]
    x = jnp.pad(x, (0, (1 << max(n - 1, 0).bit_length()) - n))  # zeros add exactly
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0] / n


def _host(tree: Any) -> Any:
    """Device arrays as numpy on this host; with several processes every process gets
    every chain (an all-gather), so the host loop runs identically everywhere."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def resolve_devices(devices: int | str | None, num_chains: int) -> list[Any]:
    """The devices the chain axis is sharded over (see ``sample(devices=...)``); with
    several processes (``jax.distributed``), all devices of all processes."""
    if jax.process_count() > 1:
        everywhere = jax.devices()
        if devices not in ("auto", None, len(everywhere)):
            raise ValueError(f"with {jax.process_count()} processes the chains are sharded over all "
                             f"{len(everywhere)} devices: use devices='auto', not {devices!r}")
        if num_chains % len(everywhere):
            raise ValueError(f"num_chains={num_chains} is not a multiple of the {len(everywhere)} devices of "
                             f"{jax.process_count()} processes (use num_chains="
                             f"{len(everywhere) * -(-num_chains // len(everywhere))})")
        return everywhere
    local = jax.local_devices()
    if devices is None:
        return local[:1]
    if devices == "auto":
        n = max(k for k in range(1, len(local) + 1) if num_chains % k == 0)
        if n < len(local):
            logger.warning("num_chains=%d is not a multiple of the %d local devices: sampling on %d of them "
                           "(choose a multiple of %d to use all)", num_chains, len(local), n, len(local))
        return local[:n]
    if isinstance(devices, str) or int(devices) != devices or devices < 1:
        raise ValueError(f"devices must be 'auto' or a positive integer, got {devices!r}")
    if devices > len(local):
        raise ValueError(f"devices={devices}, but this process sees {len(local)} device(s): {local}")
    if num_chains % devices:
        raise ValueError(f"num_chains={num_chains} is not a multiple of devices={devices}: the chain axis "
                         f"is split evenly (use num_chains={devices * -(-num_chains // devices)})")
    return local[:devices]


def _shard(devices: list[Any], states: Any, chain_keys: Any, adapt_state: Any, pooled: bool) -> tuple:
    """Chain-axis arrays split over ``devices``; a pooled adaptation state replicated."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("chain",))
    by_chain = NamedSharding(mesh, PartitionSpec("chain"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put_one(x: Any, sharding: Any) -> Any:
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        # every process holds the same full value; each places the shards its devices own
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            global_data = jax.make_array_from_callback(data.shape, sharding, lambda idx: data[idx])
            return jax.jit(jax.random.wrap_key_data, out_shardings=sharding)(global_data)
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    def put(tree: Any, sharding: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: put_one(x, sharding), tree)

    return put(states, by_chain), put(chain_keys, by_chain), put(adapt_state, replicated if pooled else by_chain)


def _initial_program(potential: Potential) -> Any:
    """One compiled ``positions -> (chain states, per-term values and gradients, element
    reach masks)``: the initial states, the preflight's state checks for every chain,
    and later the chunk-boundary probe, without a compilation each."""

    def build() -> Any:
        states = jax.vmap(lambda q: _kernel.init(q, potential.energy))
        checks = _guard.batched_initial_checks(potential)
        return jax.jit(lambda positions: (states(positions), *checks(positions)))

    return _cached(potential, "initial_program", build)


def _root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(key of the initial states, root of the per-chain keys)."""
    init_key, chain_root = jax.random.split(jax.random.key(seed))
    return init_key, chain_root


@functools.partial(jax.jit, static_argnums=1)
def _chain_keys(chain_root: jax.Array, num_chains: int) -> jax.Array:
    return jax.vmap(lambda c: jax.random.fold_in(chain_root, c))(jnp.arange(num_chains))


def initial_positions(potential: Potential, seed: int, num_chains: int) -> PyTree:
    """The initial states :func:`sample` starts from (``potential.init`` per chain), leading chain axis."""
    return jax.vmap(potential.init)(jax.random.split(_root_keys(seed)[0], num_chains))


def preflight_chains(potential: Potential, positions: PyTree, allow: Sequence[str] = (),
                     precision: str | None = None) -> _guard.PreflightReport:
    """The preflight :func:`sample` runs on a batch of initial states (leading chain axis)."""
    positions = cast_tree(positions, _resolve_dtype(precision, positions))
    n = jax.tree_util.tree_leaves(positions)[0].shape[0]
    return _preflight_all_chains(potential, positions, np.arange(n), list(allow))


def _restore_leaves(template: PyTree, arrays: dict[str, np.ndarray], prefix: str) -> PyTree:
    """``template``'s tree with its leaves replaced by ``arrays[f"{prefix}/{i}"]`` (shapes and dtypes checked)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    restored = []
    for i, leaf in enumerate(leaves):
        key = f"{prefix}/{i}"
        if key not in arrays:
            raise ValueError(f"checkpoint lacks {key}: it was written for a different model or settings")
        saved = np.asarray(arrays[key])
        if saved.shape != leaf.shape or saved.dtype != leaf.dtype:
            raise ValueError(f"checkpoint {key} has {saved.dtype}{list(saved.shape)}, this run needs "
                             f"{leaf.dtype}{list(leaf.shape)}: it was written for a different model or settings")
        restored.append(jnp.asarray(saved))
    if sum(k.startswith(prefix + "/") for k in arrays) != len(leaves):
        raise ValueError(f"checkpoint has a different number of {prefix} arrays: written for other settings")
    return jax.tree_util.tree_unflatten(treedef, restored)


def _gradients(integrator: str, n_steps: np.ndarray, n_traj: int) -> float:
    """Gradient evaluations of a chunk's ``n_traj`` trajectories (``n_steps`` holds the
    step counts of the recorded ones: all in warmup, one in ``thin`` when sampling)."""
    per_step = _integrators.gradient_evaluations_per_step(integrator)
    return float(np.sum(n_steps)) * per_step * (n_traj / max(np.size(n_steps), 1))


MAX_ATTRIBUTIONS_PER_CHUNK = 8


def _preflight_all_chains(
    potential: Potential, positions: PyTree, chains: np.ndarray, allow: Sequence[str]
) -> _guard.PreflightReport:
    """Structural preflight once (connectivity is a property of the program), then the
    state-dependent checks (finite energy and gradient, element reach) for every chain."""
    first = jax.tree_util.tree_map(lambda x: x[0], positions)
    report = _guard.preflight(potential, first, allow=allow, chain=int(chains[0]), states=False)
    try:
        _, per_term, masks = _initial_program(potential)(positions)
    except Exception as err:  # a term without a gradient at all: the structural report names it
        logger.debug("batched initial checks failed: %s", err)
        return report
    extra = _guard.check_initial_states(potential, positions, chains, per_term)
    def classify(c: int) -> list[np.ndarray]:
        return _guard.reach_codes(potential, jax.tree_util.tree_map(lambda x: x[c], positions))

    extra += _guard.check_element_reach(masks, leaf_names(first), chains, phase="preflight", action="refused",
                                        classify=classify)
    for event in extra:
        if _guard._allowed(event, allow):
            event.action = "allowed"
    report.events.extend(extra)
    return report


HEURISTIC_STREAM = 2**31 - 1


class _Static(NamedTuple):
    """Everything the compiled chunk functions depend on besides array shapes."""

    integrator: str
    num_steps: int | None
    trajectory_length: float | None
    jitter: float
    divergence_threshold: float
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


# Compiled chunk functions per potential and static settings: a second ``sample``
# call with the same model and settings does not recompile.
_CHUNK_CACHE: "weakref.WeakKeyDictionary[Potential, dict[_Static, tuple]]" = weakref.WeakKeyDictionary()


def _cached(potential: Potential, key: Any, build: Any) -> Any:
    """``build()`` once per potential and hashable ``key``."""
    per_potential = _CHUNK_CACHE.setdefault(potential, {})
    if key not in per_potential:
        per_potential[key] = build()
    return per_potential[key]


def _chunk_functions(potential: Potential, static: _Static, with_replay: bool = True) -> tuple:
    key = (static, with_replay)
    return _cached(potential, key, lambda: _build_chunk_functions(potential, static, with_replay))


def _build_chunk_functions(potential: Potential, st: _Static, with_replay: bool = True) -> tuple:
    """``(warmup_chunk, sample_chunk)``. With ``with_replay=False`` a trajectory-mode guard
    only flags tripped trajectories (no per-step replay in the program): the driver
    runs such chunks first and re-runs a chunk that tripped with ``with_replay=True``. A
    trip never changes the chain states (a tripped trajectory is rejected, and the
    replay only classifies it), so both give the same states; the program without
    the replay compiles in about half the time."""
    def build(guard: str) -> Any:
        return _kernel.build_kernel(
            potential.energy,
            st.integrator,
            num_steps=st.num_steps,
            trajectory_length=st.trajectory_length,
            jitter=st.jitter,
            divergence_threshold=st.divergence_threshold,
            guard=guard,
        )

    kernel = build(st.guard)
    # tripped trajectories are re-run with the per-step check to locate the failure
    replay_kernel = build("step") if st.guard == "trajectory" else None
    axis = None if st.pooled else 0
    schedule = _adaptation.build_schedule(st.num_warmup)
    thin, chunk_size, num_warmup = st.thin, st.chunk_size, st.num_warmup

    def run_kernel(keys: jax.Array, states: _kernel.HMCState, eps: jax.Array, minv: jax.Array):
        """All chains one trajectory; also the first located guard trip of this iteration
        as ``(found, chain, leapfrog step, position)``."""
        minv = None if st.mass_matrix == "identity" else minv
        m_axis = None if minv is None else axis
        new_states, info = jax.vmap(kernel, in_axes=(0, 0, axis, m_axis))(keys, states, eps, minv)
        one_state = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:], x.dtype), states.position)
        no_trip = (jnp.array(False), jnp.array(0, jnp.int32), jnp.array(-1, jnp.int32), one_state)
        if st.guard == "off" or (st.guard == "trajectory" and not with_replay):
            return new_states, info, no_trip
        if st.guard == "step":
            c = jnp.argmax(info.guard_tripped)
            trip = (jnp.any(info.guard_tripped), c.astype(jnp.int32), info.guard_step[c],
                    jax.tree_util.tree_map(lambda x: x[c], info.guard_position))
            return new_states, info, trip

        def replay(operand: tuple, capacity: int) -> tuple:
            """Re-run the tripped trajectories (same keys, same start) with the per-step
            check, to locate the first failing gradient and tell blow-ups from broken
            gradients. Runs only in iterations where some chain tripped."""
            tripped, divergent, step = operand
            n = tripped.shape[0]
            idx = jnp.nonzero(tripped, size=capacity, fill_value=0)[0]
            valid = jnp.arange(capacity) < jnp.sum(tripped)
            take = lambda x: x[idx]  # noqa: E731
            # a tripped trajectory is never accepted, so its start is also the chain's new
            # state; reading that (not the loop-carried old state) spares XLA a copy of
            # every chain state per iteration
            _, again = jax.vmap(replay_kernel, in_axes=(0, 0, axis, m_axis))(
                keys[idx],
                jax.tree_util.tree_map(take, new_states),
                eps if axis is None else eps[idx],
                minv if m_axis is None else minv[idx],
            )
            target = jnp.where(valid, idx, n)  # out of range: dropped
            # a replay with no non-finite gradient: the momentum itself overflowed, a divergence
            located = again.guard_step >= 0

            def put(full: jax.Array, part: jax.Array) -> jax.Array:
                return full.at[target].set(part, mode="drop")

            genuine = valid & located & again.guard_tripped
            k = jnp.argmax(genuine)
            trip = (jnp.any(genuine), idx[k].astype(jnp.int32), again.guard_step[k],
                    jax.tree_util.tree_map(lambda x: x[k], again.guard_position))
            return (
                put(tripped, again.guard_tripped & located),
                put(divergent, again.is_divergent | ~located),
                put(step, again.guard_step),
            ), trip

        # outside the chain vmap the predicate is a scalar: without a trip the replay costs
        # nothing, and the branches carry only per-chain scalars and one state
        operand = (info.guard_tripped, info.is_divergent, info.guard_step)
        n = info.guard_tripped.shape[0]
        few = min(n, max(8, n // 16))
        count = jnp.sum(info.guard_tripped)
        # a few trips: replay a few chains; a flood (e.g. early warmup blow-ups): replay all
        (tripped, divergent, step), trip = jax.lax.switch(
            jnp.where(count == 0, 0, jnp.where(count <= few, 1, 2)),
            [lambda o: (o, no_trip), lambda o: replay(o, few), lambda o: replay(o, n)],
            operand,
        )
        info = info._replace(guard_tripped=tripped, is_divergent=divergent, guard_step=step)
        return new_states, info, trip

    def keys_at(chain_keys: jax.Array, t: jax.Array) -> jax.Array:
        return jax.vmap(_rng.fold_in, in_axes=(0, None))(chain_keys, t)

    slots = MAX_ATTRIBUTIONS_PER_CHUNK

    def no_trips(states: _kernel.HMCState) -> tuple:
        """A few slots for located trips of a chunk: count, chain, iteration, step, position."""
        minus = jnp.full((slots,), -1, jnp.int32)
        where = jax.tree_util.tree_map(lambda x: jnp.zeros((slots,) + x.shape[1:], x.dtype), states.position)
        return (jnp.array(0, jnp.int32), minus, minus, minus, where)

    def record_trip(trips: tuple, trip: tuple, iteration: jax.Array) -> tuple:
        found, chain, step, position = trip

        def store(trips: tuple) -> tuple:
            count, chains, iterations, steps, where = trips
            return (
                count + 1,
                chains.at[count].set(chain),
                iterations.at[count].set(jnp.asarray(iteration, jnp.int32)),
                steps.at[count].set(step),
                jax.tree_util.tree_map(lambda w, p: w.at[count].set(p), where, position),
            )

        return jax.lax.cond(found & (trips[0] < slots), store, lambda t: t, trips)

    def masked_scan(one: Any, carry: Any, n_valid: jax.Array) -> tuple:
        """Run ``one`` for ``n_valid <= chunk_size`` iterations into fixed-size outputs
        (rows ``>= n_valid`` stay zero), so a short final chunk reuses the compiled
        function. A loop with a traced trip count rather than a scan with a ``cond`` per
        iteration: the ``cond`` made XLA copy the chain states at every iteration."""
        shapes = jax.eval_shape(lambda c: one(c, jnp.asarray(0, jnp.int32))[1], carry)
        outs = jax.tree_util.tree_map(lambda s: jnp.zeros((chunk_size,) + s.shape, s.dtype), shapes)

        def body(i, state):
            carry, outs = state
            carry, out = one(carry, i)
            return carry, jax.tree_util.tree_map(lambda o, x: o.at[i].set(x), outs, out)

        return jax.lax.fori_loop(0, jnp.minimum(n_valid, chunk_size), body, (carry, outs))

    def adapt(adapt_state, t, info, states):
        flat = jax.vmap(lambda q: ravel_pytree(q)[0])(states.position)

        def update(s, a, x):
            return _adaptation.update(
                s,
                t,
                a,
                x,
                schedule=schedule,
                target_accept=st.target_accept,
                adapt_step_size=st.adapt_step_size,
                adapt_mass_matrix=st.mass_matrix != "identity",
            )

        if st.pooled:
            return update(adapt_state, _ordered_mean(info.acceptance_rate), flat)
        return jax.vmap(update)(adapt_state, info.acceptance_rate, flat[:, None, :])

    @jax.jit
    def warmup_chunk(chain_keys, states, adapt_state, start, n_valid):
        def one(carry, i):
            states, adapt_state, trips = carry
            t = start + i
            states, info, trip = run_kernel(keys_at(chain_keys, t), states, adapt_state.step_size,
                                            adapt_state.inverse_mass_matrix)
            adapt_state = adapt(adapt_state, t, info, states)
            out = {
                "acceptance_rate": info.acceptance_rate,
                "step_size": info.step_size,
                "diverging": info.is_divergent,
                "guard_tripped": info.guard_tripped,
                "n_steps": info.num_steps,
            }
            return (states, adapt_state, record_trip(trips, trip, t)), out

        (states, adapt_state, trips), out = masked_scan(one, (states, adapt_state, no_trips(states)), n_valid)
        return states, adapt_state, trips, out

    @jax.jit
    def sample_chunk(chain_keys, states, eps, minv, start, n_valid):
        def one(carry, i):
            states, trips = carry
            draw = num_warmup + (start - num_warmup) // thin + i

            def trajectory(j, c):
                states, trips, acc, div, tripped, _ = c
                states, info, trip = run_kernel(keys_at(chain_keys, start + i * thin + j), states, eps, minv)
                return (
                    states,
                    record_trip(trips, trip, draw),
                    acc + info.acceptance_rate,
                    div | info.is_divergent,
                    tripped | info.guard_tripped,
                    info,
                )

            n = states.potential_energy.shape[0]
            zeros = jnp.zeros((n,), states.potential_energy.dtype)
            false = jnp.zeros((n,), bool)
            carry = trajectory(0, (states, trips, zeros, false, false, None))
            if thin > 1:
                carry = jax.lax.fori_loop(1, thin, trajectory, carry)
            states, trips, acc, div, tripped, info = carry
            out = dict(jax.vmap(potential.observe)(states.position))
            leaves = dict(zip(st.names, jax.tree_util.tree_leaves(states.position)))
            out.update({name: leaves[name] for name in st.record})
            stats = dict(
                lp=-states.potential_energy,
                energy=info.energy,
                acceptance_rate=acc / thin,
                diverging=div,
                step_size=info.step_size,
                n_steps=info.num_steps,
                guard_tripped=tripped,
            )
            # observables may share a name with a statistic (lennard_jones' "energy")
            out.update({STAT_PREFIX + k: v for k, v in stats.items()})
            return (states, trips), out

        (states, trips), out = masked_scan(one, (states, no_trips(states)), n_valid)
        return states, trips, out

    return warmup_chunk, sample_chunk


def _initial_step_size(potential, integrator, states, chain_keys, minv0, mass_matrix, dimension, dtype, pooled):
    """Hoffman-Gelman doubling heuristic from the initial states (one integrator step)."""
    if minv0 is None and mass_matrix == "dense":
        minv0 = jnp.eye(dimension, dtype=dtype)
    find = _cached(potential, ("step_size_heuristic", integrator, pooled), lambda: _build_step_size_finder(
        potential, integrator, pooled))
    return find(states, chain_keys, minv0, jnp.asarray(0.1, dtype))


def _build_step_size_finder(potential: Potential, integrator: str, pooled: bool) -> Any:
    grad_fn = jax.grad(potential.energy)

    def one_chain_acceptance(key, state, eps, minv):
        metric = _integrators.euclidean_metric(minv, state.position)
        # An iteration index no trajectory uses: the heuristic's momenta are its own.
        momentum = metric.sample_momentum(jax.random.fold_in(key, HEURISTIC_STREAM), state.position)
        start = _integrators.IntegratorState(state.position, momentum, state.potential_energy_grad)
        end, _ = _integrators.integrate(integrator, grad_fn, metric.velocity, start, eps, 1, guard=False)
        h0 = state.potential_energy + metric.kinetic_energy(momentum)
        h1 = potential.energy(end.position) + metric.kinetic_energy(end.momentum)
        return jnp.minimum(1.0, jnp.exp(h0 - h1))

    @jax.jit
    def find(states, chain_keys, minv, initial):
        if pooled:

            def acc(eps):
                return _ordered_mean(jax.vmap(one_chain_acceptance, in_axes=(0, 0, None, None))(
                    chain_keys, states, eps, minv))

            return _adaptation.find_reasonable_step_size(acc, initial)

        def per_chain(key, state):
            return _adaptation.find_reasonable_step_size(
                lambda eps: one_chain_acceptance(key, state, eps, minv), initial
            )

        return jax.vmap(per_chain)(chain_keys, states)

    return find


def num_gradient_evaluations(settings: dict[str, Any], n_steps: np.ndarray) -> int:
    """Gradient evaluations spent on the trajectories described by ``n_steps``."""
    return int(np.sum(n_steps)) * _integrators.gradient_evaluations_per_step(settings["integrator"])


__all__ = ["Checkpoint", "ChunkEnd", "GuardRefused", "SampleResult", "initial_positions", "num_gradient_evaluations",
           "preflight_chains", "sample"]
