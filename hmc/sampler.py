"""The driver: ``sample()`` runs any kernel over many chains, in chunks, under the guard.

The story of a call: settings (:mod:`hmc.settings`) -> initial states and
preflight (:mod:`hmc.initial`) -> compiled chunk programs (:mod:`hmc.chunks`)
-> warmup chunks -> sampling chunks -> result. All chains advance together under
``vmap`` inside one compiled loop per chunk; the host loop between chunks owns
progress, logging, checkpoints and the guard's host side (:mod:`hmc.guard.monitor`).
Random numbers are a pure function of ``(seed, chain, iteration)`` (``fold_in``),
so results do not depend on the chunk size and the same seed gives bit-identical draws.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from hmc import adaptation as _adaptation
from hmc import forces as _forces
from hmc import devices as _devices
from hmc import diagnostics as _diagnostics
from hmc import guard as _guard
from hmc import initial as _initial
from hmc import settings as _settings
from hmc.kernels import tempering as _tempering
from hmc.checkpoint import OPTIONAL_STATS, STAT_NAMES, STAT_PREFIX, Checkpoint, LoopState, stack_chunks
from hmc.chunks import chunk_programs
from hmc.devices import resolve_devices
from hmc.guard.monitor import Monitor
from hmc.initial import GuardRefused, initial_positions, preflight_chains
from hmc.kernels.base import Params
from hmc.potential import Potential
from hmc.progress import Progress
from hmc.settings import Program, Settings

logger = logging.getLogger("hmc")

PyTree = Any


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
    step_note: str | None = None
    tempering: dict[str, Any] | None = None

    def halted_reason_text(self) -> str:
        return self.halt_reason if self.halted else "no"

    def summary(self) -> _diagnostics.Summary:
        """Per observable: mean, sd, MCSE, bulk ESS, R-hat and, where known, exact value and z."""
        observables = {k: v for k, v in self.draws.items() if k in self.settings["observables"]}
        info = {
            "integrator": self.settings["integrator"],
            "num_guard_events": len(self.guard_events),
            "thin": self.settings.get("thin", 1),
            "max_tree_depth": self.settings.get("max_tree_depth"),
        }
        return _diagnostics.summarize(observables, self.stats, self.exact, info, self.derived, self.warmup_stats)

    @property
    def warnings(self) -> list[str]:
        """The run's verdict: plain sentences, ``[]`` when every diagnostic passes
        (:func:`hmc.diagnostics.verdict` lists the checks and thresholds)."""
        return list(self.summary().sampler["warnings"])


@dataclasses.dataclass
class ChunkEnd:
    """What :func:`sample` tells its ``on_chunk`` callback after every chunk."""

    record: dict[str, Any]
    snapshot: Callable[[], Checkpoint]
    events: list[_guard.GuardEvent]
    compiled_text: Callable[[], str] | None = None
    """The chunk's program as compiled (partitioned) HLO text, for
    :func:`hmc.lattice.traffic`: what the chunk sent between devices."""


def sample(
    potential: Potential,
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    kernel: Any = None,
    integrator: str | None = None,
    step_size: float | None = None,
    num_steps: int | None = None,
    trajectory_length: float | str | None = None,
    jitter: float = 0.0,
    warmup_trajectory_length: float | None = None,
    persistence: float | None = None,
    mass_matrix: str | None = None,
    inverse_mass_matrix: Any = None,
    target_accept: float = 0.8,
    adaptation: str = "pooled",
    thin: int = 1,
    record: Sequence[str] | str | None = "auto",
    guard: str = "reject",
    max_trip_fraction: float = 0.01,
    allow: Sequence[str] = (),
    guard_check: str = "trajectory",
    probe_chains: int = 4,
    chunk_size: int = 100,
    precision: str | None = None,
    init_positions: PyTree | None = None,
    divergence_threshold: float = 1000.0,
    max_num_steps: int | None = None,
    max_tree_depth: int | None = None,
    timescales: Sequence[Mapping[str, Any]] | None = None,
    tempering: Mapping[str, Any] | None = None,
    progress: bool = True,
    resume: Checkpoint | None = None,
    on_chunk: Callable[[ChunkEnd], bool | None] | None = None,
    devices: int | str | None = None,
    mesh: Mapping[str, int] | None = None,
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
    kernel
        ``None`` (default): ``"nuts"`` for a Bayesian potential (:meth:`Potential.from_numpyro`,
        :meth:`Potential.from_logdensity`, ``kind="bayesian"``) unless a trajectory setting is
        given, ``"hmc"`` otherwise (:func:`hmc.settings.default_kernel`). ``"hmc"`` (fixed length, :class:`hmc.kernels.HMC`), ``"ghmc"`` (partial
        momentum refreshment, :class:`hmc.kernels.GHMC`), ``"nuts"`` (the No-U-Turn
        sampler, :class:`hmc.kernels.NUTS`: numpyro's tree, our integrator, the guard
        in every leaf), or a kernel object with
        ``build(potential_fn, guard)`` (see :mod:`hmc.kernels.base`); an object
        carries its own trajectory settings, and the next five arguments are ignored.
    integrator
        ``"leapfrog"``, ``"minimum_norm"`` (Omelyan 2MN), ``"yoshida4"`` or ``"force_gradient"``
        (fourth order, three forces per step, the middle one's at a shifted point); ``None``: the
        kernel's default (``minimum_norm`` for ``hmc`` and ``ghmc``, ``leapfrog`` for ``nuts``).
    step_size
        ``None``: found by a doubling heuristic and adapted by dual averaging
        in warmup; a float: fixed (the mass matrix may still be adapted).
    num_steps, trajectory_length, jitter
        Trajectory length control; see :class:`hmc.kernels.base.Trajectory`. Setting
        ``trajectory_length`` overrides ``num_steps``. Neither given: ``hmc`` adapts the
        length in warmup (``trajectory_length="auto"``) where it can (pooled adaptation,
        ``num_warmup >= 100``, no tempering, no ``jitter``), and takes 10 steps where it
        cannot; ``ghmc`` takes 1 step.
    warmup_trajectory_length
        With a float ``trajectory_length``: warmup's transitions take this length instead
        (jittered alike), the draws ``trajectory_length``. Where equilibrating from the
        start needs longer trajectories than drawing does (LJ13 from a random cluster:
        a warmup at 0.5 and draws at 0.25 gave about 3x the effective samples per gradient
        of either length throughout; BENCHMARKS.md).
    max_num_steps
        The most integrator steps of one ``trajectory_length`` trajectory (``None``: the
        kernel's default, 1000); a capped trajectory is shorter, and the log says so.
    max_tree_depth
        ``kernel="nuts"``: at most ``2**max_tree_depth - 1`` leaves per transition
        (``None``: 10, Stan's default).
    timescales
        Nested integration by term (Sexton-Weingarten), outermost level first:
        ``[{"terms": ["fermion"], "steps": 1}, {"terms": ["gauge"], "steps": 5}]``. Each
        level runs the chosen integrator (or its own, ``"integrator": "leapfrog"``) with its
        own terms' force; level ``l >= 1`` makes ``steps`` steps per drift of level ``l - 1``
        (``steps`` of level 0: sub-steps per integrator step). Every term is on exactly one
        level. ``None``: one level.
    tempering
        Replica exchange (non-reversible parallel tempering, :mod:`hmc.kernels.tempering`):
        ``{"replicas": R, "beta_min": b}`` (a geometric ladder from 1 down to ``b``, adapted in
        warmup), or ``{"ladder": [1, ...]}``; ``"terms"``: the tempered terms (default all);
        ``"adapt": False`` keeps the ladder; ``"replicas": "auto"``: a pilot run (warmup and
        200 draws with 8 replicas) measures the barrier ``Lambda``, then ``ceil(2 Lambda + 1)``
        replicas (at least 2, at most 64) run; ``"beta_min": "auto"``: pilot runs lower
        ``beta_min`` from 0.32 by factors of sqrt(10) until a replica at ``beta_min`` alone
        decorrelates its slowest observable within 2 transitions or heating further stops
        helping (:func:`hmc.kernels.tempering.choose_beta_min`; the trials are in
        ``result.tempering["beta_min_search"]``, the pilots' gradients in
        ``result.tempering["pilot_gradients"]``); ``"swaps": False`` runs the replicas
        without exchange; ``"record": True`` also records every replica's
        observables (``replicas/<name>``). Draws come from the ``beta = 1`` replica;
        ``result.tempering`` has the swap rates, round trips, the barrier and the ladder.
    persistence
        ``ghmc`` only: the momentum kept per transition, ``c`` in
        ``p <- c p + sqrt(1 - c^2) xi`` (default 0.9).
    mass_matrix, inverse_mass_matrix
        ``"identity"``, ``"diagonal"`` or ``"dense"``, adapted in warmup from
        the initial ``inverse_mass_matrix`` (flat ``(d,)`` or ``(d, d)``; identity if ``None``).
        ``mass_matrix=None``: ``"identity"`` for a state with group leaves, else ``"diagonal"``.
    target_accept
        Dual-averaging target of the mean acceptance probability.
    adaptation
        ``"pooled"``: one step size and mass matrix estimated from all chains;
        ``"per_chain"``: each chain adapts its own (Stan).
    record
        State leaves stored with every draw: ``"auto"`` stores them while they hold at
        most 256 numbers per chain together and none otherwise (one log line says so);
        ``None`` stores all, ``[]`` none, a list those named (observables are always
        stored).
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
    mesh
        ``None`` or ``{"chain": n}``: the chain axis alone, as ``devices``. ``{"chain": c,
        "lattice": k}``: ``c * k`` devices, each chain's lattice split over ``k`` of them along
        the first of its ``potential.lattice_axes`` (:mod:`hmc.lattice`, :func:`hmc.devices.place`);
        ``num_chains`` a multiple of ``c``. Draws agree with one device's to rounding: fields,
        forces and random streams are the same bit for bit, sums over sites (energies, the
        Metropolis test, observables) add in another order.
    on_chunk
        Called after every chunk with a :class:`ChunkEnd` (a log record and a
        ``snapshot()`` that returns a :class:`Checkpoint`); returning ``True``
        stops the run there (the result then has ``stopped=True``).
    """
    search, pilots = None, []
    if isinstance(tempering, Mapping) and "auto" in (tempering.get("replicas"), tempering.get("beta_min")):
        # pilot runs measure the barrier (replicas: auto) or a hot replica's mixing (beta_min: auto)
        arguments = {k: v for k, v in locals().items() if k not in ("potential", "tempering", "resume", "on_chunk",
                                                                    "progress", "init_positions", "search", "pilots")}

        def pilot(options: dict) -> SampleResult:
            out = sample(potential, **dict(arguments, num_samples=_tempering.PILOT_DRAWS, tempering=options,
                                            progress=False, init_positions=init_positions))
            pilots.append(_tempering.pilot_gradients(out))
            return out

        if tempering.get("beta_min") == "auto":
            tempering, search = _tempering.choose_beta_min(tempering, pilot)
        else:
            tempering = _tempering.choose_replicas(tempering, pilot)
    kernel = _settings.default_kernel(potential, kernel, num_steps=num_steps, trajectory_length=trajectory_length,
                                      jitter=jitter, warmup_trajectory_length=warmup_trajectory_length,
                                      persistence=persistence, timescales=timescales, tempering=tempering)
    mass_matrix = _settings.default_mass_matrix(potential, mass_matrix)
    settings = Settings.from_arguments(
        kernel, integrator=integrator, num_steps=num_steps, trajectory_length=trajectory_length, jitter=jitter,
        warmup_trajectory_length=warmup_trajectory_length, persistence=persistence,
        divergence_threshold=divergence_threshold, max_num_steps=max_num_steps,
        max_tree_depth=max_tree_depth,
        timescales=timescales, tempering=tempering, seed=seed, num_chains=num_chains,
        num_warmup=num_warmup, num_samples=num_samples, thin=thin, step_size=step_size, mass_matrix=mass_matrix,
        target_accept=target_accept, adaptation=adaptation, guard=guard, max_trip_fraction=max_trip_fraction,
        allow=allow, guard_check=guard_check, probe_chains=probe_chains, chunk_size=chunk_size,
        precision=precision, devices=devices)
    if getattr(settings.kernel, "timescales", None):
        settings.kernel.split(potential)  # every term on exactly one level, or a clear error
    layout = _devices.resolve_layout(mesh, devices, num_chains)
    begin = _initial.start(potential, settings, init_positions, record, inverse_mass_matrix, resume)
    program = Program.of(settings, begin.mass_matrix, begin.names, begin.record)
    run = _Run(potential, settings, program, begin, layout, resume, on_chunk)
    with run.progress_bar(progress):
        run.warmup()
        run.sampling()
    result = run.result()
    if pilots and result.tempering is not None:
        result.tempering["pilot_gradients"] = int(sum(pilots))
        if search is not None:
            result.tempering["beta_min_search"] = search
    return result


class _Run:
    """The host loop of one :func:`sample` call: the loop state (:class:`hmc.checkpoint.LoopState`:
    counters, chain and adaptation states, outputs so far) and the guard's monitor, chunk by chunk."""

    def __init__(self, potential: Potential, settings: Settings, program: Program, begin: _initial.Start,
                 layout: _devices.Layout, resume: Checkpoint | None, on_chunk: Callable | None):
        self.potential, self.settings, self.program, self.begin = potential, settings, program, begin
        self.mesh, self.layout, self.on_chunk = layout.devices, layout, on_chunk
        states, keys, adapt_state = begin.states, begin.chain_keys, begin.adapt_state
        if layout.lattice > 1:
            states, keys, adapt_state = _devices.place(layout, potential, states, keys, adapt_state, settings.pooled)
        elif len(self.mesh) > 1:
            states, keys, adapt_state = _devices.shard(self.mesh, states, keys, adapt_state, settings.pooled)
        self.chain_keys = keys
        self.loop = LoopState.begin(states, adapt_state, resume)
        self.counters = self.loop.counters
        self.events = begin.events
        self.monitor = Monitor(potential, settings, begin.names, self.counters, self.events,
                               lambda positions: _guard.checks_program(potential)(positions)[1])
        self.elapsed_before, self.started, self.stopped = self.counters.elapsed, time.perf_counter(), False
        # chunks run without the replay of tripped transitions until one trips: a model
        # that never trips never compiles the replay
        self.capped_noted = False
        self.lazy_replay = program.guard == "trajectory"
        self.programs = chunk_programs(potential, program, with_replay=not self.lazy_replay)

    def progress_bar(self, enabled: bool) -> Progress:
        self.bar = Progress(self.potential.name, self.settings.total, self.counters.done, enabled)
        return self.bar

    @property
    def running(self) -> bool:
        return not (self.counters.halted or self.stopped)

    def warmup(self) -> None:
        c, s = self.counters, self.settings
        while self.running and c.warmup_done < s.num_warmup:
            start, n = c.warmup_done, min(s.chunk_size, s.num_warmup - c.warmup_done)
            args = (self.chain_keys, self.loop.states, self.loop.adapt_state, start, n)
            (self.loop.states, self.loop.adapt_state, trips, out), seconds = self._chunk("warmup", args, n)
            c.warmup_done += n
            self._after_chunk("warmup", trips, out, n * s.num_chains, start + n - 1, seconds)
            if c.warmup_done == s.num_warmup and s.step_size is None:
                note = self.step_note()
                if note:
                    logger.info("warmup: %s", note)
                length_note = _adaptation.length_report(stack_chunks(self.loop.warmup_chunks))
                if length_note:
                    logger.info("warmup: trajectory length %s", length_note)

    def step_note(self) -> str | None:
        """What :func:`hmc.adaptation.limit_report` says of this run's warmup."""
        kernel = self.settings.kernel
        if not self.loop.warmup_chunks or self.settings.step_size is not None:
            return None
        return _adaptation.limit_report(stack_chunks(self.loop.warmup_chunks), self.settings.target_accept,
                                        getattr(kernel, "integrator", None),
                                        _adaptation.jitter_factor(getattr(kernel, "num_steps", None),
                                                                  getattr(kernel, "jitter", 0.0)))

    def sampling(self) -> None:
        c, s = self.counters, self.settings
        state = self.loop.adapt_state
        adaptive = getattr(s.kernel, "adaptive_length", False)
        length, width = (state.trajectory_length, state.length_jitter) if adaptive else (None, None)
        params = Params(state.step_size, state.inverse_mass_matrix, length, width)
        while self.running and c.drawn < s.num_samples:
            start, n = s.num_warmup + c.drawn * s.thin, min(s.chunk_size, s.num_samples - c.drawn)
            args = (self.chain_keys, self.loop.states, params, start, n)
            (self.loop.states, trips, out), seconds = self._chunk("sampling", args, n)
            c.drawn += n
            self._after_chunk("sampling", trips, out, n * s.thin * s.num_chains, c.drawn - 1, seconds)

    def _chunk(self, phase: str, args: tuple, n: int) -> tuple[tuple, float]:
        """One chunk, re-run with the replay if a transition of it tripped; its outputs kept."""
        t0 = time.perf_counter()
        program = self._program(phase, False)
        with self.layout.context():
            results = program(*args)
        # abstract arguments (shapes, dtypes, shardings) to lower the program again on request
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                                          if isinstance(x, jax.Array) else x, args)
        self.compiled_text = lambda: _compiled_text(self.layout, program, abstract)
        out = {k: v[:n] for k, v in _devices.host(results[-1]).items()}
        if self.lazy_replay and np.any(out[_tripped_key(phase)]):
            with self.layout.context():
                results = self._program(phase, True)(*args)
            out = {k: v[:n] for k, v in _devices.host(results[-1]).items()}
        (self.loop.warmup_chunks if phase == "warmup" else self.loop.sample_chunks).append(out)
        return (*results[:-1], out), time.perf_counter() - t0

    def _program(self, phase: str, replay: bool) -> Callable:
        programs = chunk_programs(self.potential, self.program, with_replay=True) if replay else self.programs
        return programs.warmup if phase == "warmup" else programs.sample

    def _after_chunk(self, phase: str, trips: Any, out: dict, n_traj: int, draw: int, seconds: float) -> None:
        c = self.counters
        new = int(out[_tripped_key(phase)].sum())
        c.trajectories += n_traj
        c.tripped_total += new
        if phase == "sampling":
            c.judged_trajectories += n_traj
            c.judged_trips += new
        self._note_capped(phase, out)
        events_before = len(self.events)
        positions = self.loop.states.position
        positions = _devices.host(positions) if jax.process_count() > 1 else positions
        self.monitor.after_chunk(phase, trips, new, positions, draw)
        self.bar.update(c.done, phase, c.tripped_total)
        reason = self.monitor.verdict(phase, new, n_traj)
        c.halted, c.halt_reason = reason is not None, reason
        if self.on_chunk is not None:
            record = self._record(phase, out, n_traj, new, len(self.events) - events_before, seconds)
            if self.on_chunk(ChunkEnd(record=record, snapshot=self.snapshot, events=self.events,
                                      compiled_text=self.compiled_text)):
                self.stopped = True

    def _note_capped(self, phase: str, out: dict) -> None:
        """One log line, the first time trajectories hit the kernel's ``max_num_steps``."""
        kernel = self.settings.kernel
        cap = getattr(kernel, "max_num_steps", None)
        if self.capped_noted or cap is None or getattr(kernel, "trajectory_length", None) is None:
            return
        n_steps = out["n_steps"] if "n_steps" in out else out[STAT_PREFIX + "n_steps"]
        hit = float(np.mean(np.asarray(n_steps) >= cap))
        if hit > 0:
            self.capped_noted = True
            step = float(np.min(out["step_size"] if "step_size" in out else out[STAT_PREFIX + "step_size"]))
            length = kernel.trajectory_length
            length = "auto (adapted)" if isinstance(length, str) else f"{length:g}"
            logger.warning("%s: %.0f%% of this chunk's trajectories hit max_num_steps=%d and are shorter than "
                           "trajectory_length=%s (step size down to %.3g); raise max_num_steps or start nearer "
                           "the typical set", phase, 100 * hit, cap, length, step)

    def _record(self, phase: str, out: dict, n_traj: int, new: int, new_events: int, seconds: float) -> dict:
        """The ``log.jsonl`` record of a chunk."""
        c = self.counters
        get = lambda k: out[k] if k in out else out[STAT_PREFIX + k]  # noqa: E731
        extra = {}
        timescales = getattr(self.settings.kernel, "timescales", None)
        if timescales:
            # per term and level: |F| at the chunk's end states, and eps_level * |F|
            extra["forces"] = _forces.chunk_forces(self.potential, timescales, self.loop.states,
                                                   float(np.mean(get("step_size"))))
        if hasattr(self.loop.states, "ladder"):  # replica exchange since the last reset
            report = _tempering.report(_devices.host(self.loop.states))
            report.pop("index_process")
            extra["tempering"] = report
        if STAT_PREFIX + "delta_energy" in out:
            dh = np.asarray(out[STAT_PREFIX + "delta_energy"], np.float64)
            extra["delta_energy_mean"] = float(np.mean(dh[np.isfinite(dh)])) if np.isfinite(dh).any() else None
        return extra | dict(
            phase=phase, iterations_done=c.done, iterations_total=self.settings.total, warmup_done=c.warmup_done,
            draws_done=c.drawn, trajectories=n_traj, acceptance_rate=float(np.mean(get("acceptance_rate"))),
            divergences=int(np.sum(get("diverging"))), guard_trips=new, guard_trips_total=c.tripped_total,
            guard_trips_judged=c.judged_trips, guard_events=new_events, step_size=float(np.mean(get("step_size"))),
            seconds=seconds, trajectories_per_second=n_traj / max(seconds, 1e-12),
            gradients_per_second=self._gradients(get("n_steps"), n_traj) / max(seconds, 1e-12),
            elapsed=self._elapsed(), halted=c.halted,
        )

    def _gradients(self, n_steps: np.ndarray, n_traj: int) -> float:
        """Gradient evaluations of a chunk's ``n_traj`` transitions (``n_steps`` holds the
        step counts of the recorded ones: all in warmup, one in ``thin`` when sampling)."""
        per_step = getattr(self.settings.kernel, "gradients_per_step", 1)
        return float(np.sum(n_steps)) * per_step * (n_traj / max(np.size(n_steps), 1))

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def snapshot(self) -> Checkpoint:
        """The whole sampler state now (at a chunk boundary)."""
        c = self.counters
        c.complete = bool(c.halted or c.drawn >= self.settings.num_samples)
        c.elapsed = self._elapsed()
        c.events = [e.to_dict() for e in self.events]
        return self.loop.to_checkpoint(_devices.host)

    def result(self) -> SampleResult:
        c = self.counters
        if c.halted:
            logger.error("sampling halted: %s", c.halt_reason)
        sampled = stack_chunks(self.loop.sample_chunks) or self._no_draws()
        adapt_state = _devices.host(self.loop.adapt_state)
        return SampleResult(
            draws={k: v for k, v in sampled.items() if not k.startswith(STAT_PREFIX)},
            stats={k: sampled[STAT_PREFIX + k] for k in (*STAT_NAMES, *OPTIONAL_STATS) if STAT_PREFIX + k in sampled},
            warmup_stats=stack_chunks(self.loop.warmup_chunks),
            guard_events=self.events,
            step_size=np.asarray(adapt_state.step_size),
            inverse_mass_matrix=None if self.program.mass_matrix == "identity"
            else np.asarray(adapt_state.inverse_mass_matrix),
            final_positions=_devices.host(self.loop.states.position),
            settings=self._settings_record(),
            exact={k: np.asarray(v) for k, v in self.potential.exact.items()},
            halted=c.halted, halt_reason=c.halt_reason,
            timing={"total_seconds": self._elapsed(), "guard_host_seconds": c.guard_seconds},
            derived=dict(self.potential.derived),
            stopped=self.stopped,
            step_note=self.step_note(),
            tempering=self._tempering(sampled),
        )

    def _tempering(self, sampled: dict) -> dict[str, Any] | None:
        """Replica exchange over the sampling phase: see :func:`hmc.kernels.tempering.report`."""
        if not hasattr(self.loop.states, "ladder"):
            return None
        index = sampled.get(STAT_PREFIX + "beta_index")
        return _tempering.report(_devices.host(self.loop.states), None if index is None else np.asarray(index))

    def _no_draws(self) -> dict[str, np.ndarray]:
        """Halted before the first draw: empty ``(chain, 0, ...)`` arrays with the right names."""
        n, dtype = self.settings.num_chains, self.begin.dtype
        positions = self.loop.states.position
        shapes = jax.eval_shape(lambda q: jax.vmap(self.potential.observe)(q), positions)
        empty = {k: np.zeros((n, 0) + v.shape[1:], v.dtype) for k, v in shapes.items()}
        leaves = dict(zip(self.begin.names, jax.tree_util.tree_leaves(positions)))
        empty.update({k: np.zeros((n, 0) + leaves[k].shape[1:], leaves[k].dtype) for k in self.begin.record})
        for k in STAT_NAMES:
            kind = bool if k in ("diverging", "guard_tripped") else (np.int32 if k == "n_steps" else dtype)
            empty[STAT_PREFIX + k] = np.zeros((n, 0), kind)
        return empty

    def _settings_record(self) -> dict[str, Any]:
        s, kernel = self.settings, self.settings.kernel
        return dict(
            seed=s.seed, num_chains=s.num_chains, num_warmup=s.num_warmup, num_samples=s.num_samples,
            kernel=getattr(kernel, "name", type(kernel).__name__),
            integrator=getattr(kernel, "integrator", None), num_steps=getattr(kernel, "num_steps", None),
            max_tree_depth=getattr(kernel, "max_tree_depth", None),
            trajectory_length=getattr(kernel, "trajectory_length", None), jitter=getattr(kernel, "jitter", None),
            **({} if getattr(kernel, "warmup_trajectory_length", None) is None
               else {"warmup_trajectory_length": kernel.warmup_trajectory_length}),
            timescales=None if not getattr(kernel, "timescales", None)
            else [{"terms": list(level.terms), "steps": level.steps,
                   **({"integrator": level.integrator} if level.integrator else {})} for level in kernel.timescales],
            tempering=None if not isinstance(kernel, _tempering.Tempered)
            else {"replicas": kernel.replicas, "beta_min": kernel.beta_min, "terms": kernel.terms,
                  "adapt": kernel.adapt, "initial_ladder": kernel.initial_ladder.tolist()},
            mass_matrix=self.program.mass_matrix, adaptation=s.adaptation, target_accept=s.target_accept,
            thin=s.thin, guard=s.guard, devices=len(self.mesh), dtype=np.dtype(self.begin.dtype).name,
            **({"mesh": {"chain": self.layout.chain, "lattice": self.layout.lattice}} if self.layout.lattice > 1
               else {}),
            observables=list(self.potential.observables), record=list(self.begin.record),
            leaves=self.begin.names,
        )


def _compiled_text(layout: _devices.Layout, program: Callable, arguments: tuple) -> str:
    with layout.context():
        return program.lower(*arguments).compile().as_text()


def _tripped_key(phase: str) -> str:
    return "guard_tripped" if phase == "warmup" else STAT_PREFIX + "guard_tripped"


def num_gradient_evaluations(settings: dict[str, Any], n_steps: np.ndarray) -> int:
    """Gradient evaluations spent on the transitions described by ``n_steps``."""
    from hmc import integrators as _integrators

    return int(np.sum(n_steps)) * _integrators.gradient_evaluations_per_step(settings["integrator"],
                                                                              settings.get("timescales"))


__all__ = ["Checkpoint", "ChunkEnd", "GuardRefused", "SampleResult", "initial_positions", "num_gradient_evaluations",
           "preflight_chains", "resolve_devices", "sample"]
