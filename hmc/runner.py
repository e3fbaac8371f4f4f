"""``hmc run``: one config -> one run directory, resumable after any interruption.

The loop of :func:`hmc.sample` calls back after every chunk; this module turns
those calls into the run directory's ``log.jsonl`` and ``guard.jsonl``, saves a
checkpoint every ``run.checkpoint_every`` chunks (and at the last chunk), and
stops at the next chunk boundary after SIGTERM or SIGUSR1 (the signals SLURM
sends before pre-emption or the time limit). Rerunning the same command on the
same directory resumes; the draws are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from hmc import config as _config
from hmc import rundir as _rundir

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_GUARD = 3
EXIT_CHECKPOINT = 4
EXIT_NOT_CLEAN = 6  # finished, but the verdict has warnings (only with --strict / run.strict)
EXIT_STORAGE = 74  # EX_IOERR: a write failed for lack of space or quota; the last checkpoint is intact
EXIT_STOPPED = 75  # EX_TEMPFAIL: checkpointed after a signal; run the same command again to resume

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")

logger = logging.getLogger("hmc")


def _nuts_default_depth() -> int:
    from hmc.kernels import NUTS

    return NUTS().max_tree_depth


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def set_precision(precision: str) -> None:
    """x64 on exactly for float64 runs, before the model creates any array."""
    import jax

    want = precision == "float64"
    if bool(jax.config.read("jax_enable_x64")) != want:
        jax.config.update("jax_enable_x64", want)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """While active, SIGTERM/SIGUSR1 set ``flag["signal"]`` instead of killing the process."""
    flag: dict[str, Any] = {"signal": None}
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name
        logger.warning("received %s: checkpointing at the end of this chunk", flag["signal"])

    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def execute(cfg: _config.RunConfig, config_dir: str | None, out: TextIO | None = None, progress: bool = True) -> int:
    """Run (or resume) ``cfg`` in its ``output.dir``; returns the exit code."""
    out = out or sys.stdout
    if not _rundir.is_writer():
        out = open(os.devnull, "w")  # noqa: SIM115 - process 0 speaks for all
    set_precision(cfg.run.precision)
    potential = _config.make_potential(cfg.model, config_dir)
    cfg = _config.with_kernel(cfg, potential)
    data = _config.resolved(cfg, config_dir)
    run_dir = _rundir.RunDirectory(cfg.output.dir)
    try:
        ident = _rundir.identity(data)
    except ValueError as err:  # the device count does not fit
        raise _config.ConfigError([f"{'run.devices' if cfg.run.mesh is None else 'run.mesh'}: {err}"]) from None
    _check_lattice_split(cfg, potential)
    if _rundir.is_writer():
        _rundir.check_writable(run_dir.path)  # before any sampling: an unwritable output fails now
    with _rundir.exclusive(run_dir.path):
        return _execute_locked(cfg, potential, data, run_dir, ident, out, progress)


def _execute_locked(cfg: _config.RunConfig, potential: Any, data: dict[str, Any],
                    run_dir: _rundir.RunDirectory, ident: dict[str, Any], out: TextIO, progress: bool) -> int:
    from hmc import sampler as _sampler

    run_dir.remove_stale_temporaries()
    try:
        resume = _checkpoint_to_resume(run_dir, ident)
    except _rundir.CheckpointDamaged as damaged:
        if not _finished_draws_read(run_dir):
            raise
        print(f"{run_dir.path}: the checkpoint is damaged ({'; '.join(damaged.reasons)}), but this run finished "
              "and draws.nc holds every draw; its summary:", file=out)
        print(summarize_run(run_dir.path, potential)["text"], file=out)
        return EXIT_OK
    if resume is not None and resume.complete and run_dir.has_draws():
        print(f"{run_dir.path}: this run is complete; its summary:", file=out)
        print(summarize_run(run_dir.path, potential)["text"], file=out)
        return EXIT_GUARD if resume.counters.halted else EXIT_OK
    _open_log(run_dir, data, ident, resume)
    with stop_on_signals() as flag:
        saver = _ChunkSaver(run_dir, ident, cfg.run.checkpoint_every, flag)
        try:
            result = _sampler.sample(potential, **_config.sample_kwargs(cfg), progress=progress,
                                     resume=resume, on_chunk=saver.on_chunk)
        except _sampler.GuardRefused as refused:
            _rundir.write_jsonl(run_dir.file("guard.jsonl"), [e.to_dict() for e in refused.events])
            saver.log(event="refused", time=_now(), guard_events=len(refused.events))
            print(f"{run_dir.path}: the gradient guard refused to start sampling {potential.name}:", file=out)
            print(str(refused.report) if refused.report is not None else str(refused), file=out)
            print(f"(findings in {run_dir.file('guard.jsonl')}; accept one with guard.allow=[KIND:TERM])", file=out)
            return EXIT_GUARD
    if result.stopped:
        saver.log(event="stopped", time=_now(), signal=flag["signal"])
        print(f"{run_dir.path}: stopped by {flag['signal']} and checkpointed; run the same command again to resume",
              file=out)
        return EXIT_STOPPED
    return _finish(cfg, data, ident, run_dir, potential, result, out)


def _checkpoint_to_resume(run_dir: _rundir.RunDirectory, ident: dict[str, Any]) -> Any:
    """The run directory's checkpoint, if it has one written under the same identity."""
    if not run_dir.has_checkpoint():
        return None
    resume, saved = run_dir.load_checkpoint()
    reasons = _rundir.mismatches(saved, ident)
    if reasons:
        raise _rundir.CheckpointMismatch(run_dir.path, reasons)
    return resume


def _finished_draws_read(run_dir: _rundir.RunDirectory) -> bool:
    """Whether the run directory holds a finished run's ``draws.nc`` that reads back."""
    if not run_dir.has_draws():
        return False
    try:
        _rundir.read_draws(run_dir.file("draws.nc"))
    except Exception as err:  # any failure to read is a damaged file here
        logger.warning("%s does not read back: %s", run_dir.file("draws.nc"), err)
        return False
    return any(r.get("event") == "end" for r in _rundir.read_jsonl(run_dir.file("log.jsonl")))


def _open_log(run_dir: _rundir.RunDirectory, data: dict[str, Any], ident: dict[str, Any], resume: Any) -> None:
    """``config.yaml``, and the ``start`` or ``resume`` record of ``log.jsonl``."""
    if _rundir.is_writer():
        os.makedirs(run_dir.path, exist_ok=True)
    _rundir.write_text(run_dir.file("config.yaml"), _rundir.dump_config(data))
    # log.jsonl is appended to: after a resume, the chunks past the checkpoint that the
    # interrupted process had logged stay, and the "resume" record says where sampling
    # picks up again (its iterations_done)
    log_file = run_dir.file("log.jsonl")
    _rundir.repair_jsonl(log_file)
    counters = resume.counters if resume is not None else None
    _rundir.append_jsonl(log_file, [dict(
        event="resume" if resume is not None else "start", time=_now(),
        iterations_done=counters.done if counters else 0, config_hash=ident["config_hash"], pid=os.getpid(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"), slurm_array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"),
        **_generation_record(run_dir, resume))])
    if counters is not None:
        logger.info("resuming %s at %d warmup iterations and %d draws", run_dir.path, counters.warmup_done,
                    counters.drawn)


def _generation_record(run_dir: _rundir.RunDirectory, resume: Any) -> dict[str, Any]:
    """Which checkpoint generation a resume read, and the damaged files it skipped (logged)."""
    if resume is None:
        return {}
    damaged = [str(d) for d in getattr(run_dir, "damaged", [])]
    for text in damaged:
        logger.warning("checkpoint file skipped: %s", text)
    source = getattr(run_dir, "loaded_from", _rundir.STATE_FILE)
    if damaged:
        logger.warning("resuming from %s, the newest checkpoint generation that verifies", source)
    return {"checkpoint": source, "damaged": damaged}


class _ChunkSaver:
    """After every chunk: its ``log.jsonl`` record, the guard events, and every
    ``checkpoint_every`` chunks (and at the end, or on a signal) the checkpoint."""

    def __init__(self, run_dir: _rundir.RunDirectory, ident: dict[str, Any], every: int, flag: dict):
        self.run_dir, self.ident, self.every, self.flag, self.since = run_dir, ident, every, flag, 0

    def log(self, **record: Any) -> None:
        _rundir.append_jsonl(self.run_dir.file("log.jsonl"), [record])

    def on_chunk(self, end: Any) -> bool:
        # the record first: a kill between the two repeats a logged chunk after the
        # resume, never loses one that the checkpoint holds
        self.log(**dict(end.record, event="chunk", time=_now()))
        self.since += 1
        final = end.record["halted"] or end.record["iterations_done"] >= end.record["iterations_total"]
        stop = _any_process(self.flag["signal"] is not None)
        if self.since >= self.every or final or stop:
            self.run_dir.save_checkpoint(end.snapshot(), self.ident)
            self.since = 0
            if stop:
                _any_process(False)  # a barrier: nobody exits before process 0 has written
        _rundir.write_jsonl(self.run_dir.file("guard.jsonl"), [e.to_dict() for e in end.events])
        return stop


def _finish(cfg: _config.RunConfig, data: dict[str, Any], ident: dict[str, Any], run_dir: _rundir.RunDirectory,
            potential: Any, result: Any, out: TextIO) -> int:
    """Draws, guard events, summary and plots of a finished (or halted) run."""
    attrs = provenance(cfg, data, ident, potential.name)
    _rundir.write_draws(run_dir.file("draws.nc"), result.draws, result.stats, result.warmup_stats,
                        result.exact, attrs, observables=result.settings["observables"])
    _rundir.write_jsonl(run_dir.file("guard.jsonl"), [e.to_dict() for e in result.guard_events])
    run_dir.prune_checkpoint()
    summary = summarize_run(run_dir.path, potential, result=result)
    warnings = list(summary["summary"].sampler.get("warnings", []))
    _rundir.append_jsonl(run_dir.file("log.jsonl"), [dict(
        event="end", time=_now(), halted=result.halted, halt_reason=result.halt_reason,
        seconds=result.timing.get("total_seconds"), warnings=warnings,
        step_size=summary["summary"].sampler.get("step_size_mean"),
        step_size_adapted=summary["summary"].sampler.get("step_size_adapted"),
        **{k: result.tempering[k] for k in ("beta_min_search", "pilot_gradients") if k in (result.tempering or {})})])
    full = None
    try:
        from hmc import plots

        if _rundir.is_writer():
            plots.plot_run(run_dir.path)
    except _rundir.DiskFull as err:  # the draws are safe; the figures wait for space
        full = err
    except Exception as err:  # a figure must never cost the draws
        logger.warning("plots were not written: %s", err)
    print(summary["text"], file=out)
    print(f"\nrun directory: {run_dir.path}", file=out)
    if full is not None:
        print(f"hmc: the plots were not written: {full}. Every draw is in draws.nc; free space and run "
              f"'hmc plot {run_dir.path}'.", file=sys.stderr)
        return EXIT_STORAGE
    if result.halted:
        print(f"sampling halted: {result.halt_reason}", file=out)
        return EXIT_GUARD
    if cfg.run.strict and warnings:
        print(f"--strict: the verdict is not clean ({len(warnings)} warning(s)): exit {EXIT_NOT_CLEAN}", file=out)
        return EXIT_NOT_CLEAN
    return EXIT_OK


def _any_process(value: bool) -> bool:
    """``value`` or-ed over all processes (a signal may reach only some of them)."""
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([value]))))


def _check_lattice_split(cfg: _config.RunConfig, potential: Any) -> None:
    """With a lattice mesh, every lattice leaf of the model splits evenly (before any sampling)."""
    lattice = (cfg.run.mesh or {}).get("lattice", 1)
    if lattice == 1:
        return
    import jax

    from hmc import lattice as _lattice

    position = jax.eval_shape(potential.init, jax.random.key(0))
    fields = jax.eval_shape(potential.refresh, jax.random.key(0), position) if potential.auxiliary else {}
    shapes = {name: tuple(x.shape) for name, x in zip(potential.leaf_names(position),
                                                       jax.tree_util.tree_leaves(position))}
    shapes.update({name: tuple(x.shape) for name, x in fields.items()})
    try:
        _lattice.split_axes(potential.lattice_axes, shapes, lattice)
    except ValueError as err:
        raise _config.ConfigError([f"run.mesh: {err}"]) from None


def start_distributed(cfg: _config.RunConfig) -> bool:
    """``jax.distributed.initialize()`` when the run spans several processes: ``run.distributed:
    true``, or ``auto`` under ``srun`` with ``SLURM_NTASKS > 1``. The coordinator comes from
    SLURM, or from ``HMC_COORDINATOR_ADDRESS``, ``HMC_NUM_PROCESSES`` and ``HMC_PROCESS_ID``.
    Must run before JAX touches a device; returns whether it did."""
    import jax

    wanted = cfg.run.distributed
    if wanted == "auto":
        wanted = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ
    if not wanted:
        return False
    kwargs: dict[str, Any] = {}
    if "HMC_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["HMC_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["HMC_NUM_PROCESSES"]),
                      process_id=int(os.environ["HMC_PROCESS_ID"]))
    # CPU processes talk through gloo (GPUs use NCCL whatever this says)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as err:
        raise _config.ConfigError([f"run.distributed: jax.distributed.initialize() failed: {err}"]) from None
    _rundir.set_writer(jax.process_index() == 0)
    logger.info("process %d of %d, %d device(s) in all", jax.process_index(), jax.process_count(),
                jax.device_count())
    return True


def provenance(cfg: _config.RunConfig, data: dict[str, Any], ident: dict[str, Any], model: str) -> dict[str, Any]:
    """Attributes of ``draws.nc``: who made it, with what, from which config."""
    return dict(
        model=model,
        seed=cfg.run.seed,
        precision=cfg.run.precision,
        config_hash=ident["config_hash"],
        config_yaml=_rundir.dump_config(data),
        devices=ident["devices"],
        git_commit=_rundir.git_commit(),
        **{f"{k}_version": v for k, v in ident["versions"].items()},
    )


def summarize_run(path: str, potential: Any = None, result: Any = None) -> dict[str, Any]:
    """Summary of a run directory (from ``draws.nc``, or from the checkpoint of a run
    in progress); writes ``summary.json`` when the run is finished. Returns
    ``{"summary": Summary, "text": str, "status": str}``."""
    from hmc import diagnostics

    run_dir = _rundir.RunDirectory(path)
    config = None
    if result is not None:
        draws, stats, warmup, exact = result.draws, result.stats, result.warmup_stats, result.exact
        observables = result.settings["observables"]
        integrator = result.settings["integrator"]
        timescales = result.settings.get("timescales")
        max_tree_depth = result.settings.get("max_tree_depth")
        status = "halted" if result.halted else "complete"
        events = [e.to_dict() for e in result.guard_events]
    else:
        data = run_dir.load()
        draws, stats, warmup, events, status = (data[k] for k in ("draws", "stats", "warmup_stats", "events", "status"))
        exact = data["exact"] or (dict(potential.exact) if potential is not None else {})
        observables = data["observables"]
        if observables is None:  # in progress: the model says which are observables
            observables = list(potential.observables) if potential is not None else list(draws)
        integrator = data["config"]["sampler"]["integrator"]
        timescales = data["config"]["sampler"].get("timescales")
        max_tree_depth = data["config"]["sampler"].get("max_tree_depth") or _nuts_default_depth()
        config = data["config"]
    derived = dict(potential.derived) if potential is not None else {}
    shown = {k: np.asarray(v) for k, v in draws.items() if k in observables}
    thin = result.settings.get("thin", 1) if result is not None else config["sampler"].get("thin", 1)
    summary = diagnostics.summarize(shown, stats, exact, {"integrator": integrator, "num_guard_events": len(events),
                                                          "thin": thin, "timescales": timescales,
                                                          "max_tree_depth": max_tree_depth}, derived,
                                  warmup if warmup and np.size(warmup.get("step_size", [])) else None)
    kinds: dict[str, int] = {}
    for e in events:
        key = e["kind"] + (f":{e['term']}" if e.get("term") else "")
        kinds[key] = kinds.get(key, 0) + 1
    text = summary.table()
    if kinds:
        text += "\nguard events: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
    if warmup and np.size(warmup.get("acceptance_rate", [])):
        text += _warmup_notes(summary, warmup, result.step_note if result is not None else _step_note(config, warmup))
    tempering_text, tempering = _tempering_note(run_dir, result)
    if tempering_text:
        text += "\n" + tempering_text
        summary.sampler["tempering"] = tempering
    forces_text, forces = _forces_note(run_dir)
    if forces_text:
        text += "\n" + forces_text
        summary.sampler["forces"] = forces
    text = f"status: {status}\n" + text
    if not status.startswith("in progress"):
        payload = dict(summary.to_dict(), status=status, guard_events_by_kind=kinds)
        if result is not None:
            payload["timing"] = result.timing
            payload["halt_reason"] = result.halt_reason
        _rundir.write_json(run_dir.file("summary.json"), payload)
    return {"summary": summary, "text": text, "status": status}


def _tempering_note(run_dir: Any, result: Any = None) -> tuple[str, dict | None]:
    """With replica exchange: the ladder, the swap acceptance of each pair, the barrier and
    the round trips over the sampling phase (the result's, or the last record of ``log.jsonl``)."""
    report = None
    if result is not None and getattr(result, "tempering", None):
        report = {k: v for k, v in result.tempering.items() if k != "index_process"}
    else:
        path = run_dir.file("log.jsonl")
        if os.path.exists(path):
            log = _rundir.read_jsonl(path)
            records = [r for r in log if r.get("event") == "chunk" and r.get("tempering") and r.get("phase") == "sampling"]
            report = dict(records[-1]["tempering"]) if records else None
            ends = [r for r in log if r.get("event") == "end"]
            for key in ("beta_min_search", "pilot_gradients"):
                if report and ends and ends[-1].get(key):
                    report[key] = ends[-1][key]
    if not report:
        return "", None
    fmt = lambda xs: "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"  # noqa: E731
    text = (f"tempering: {report['replicas']} replicas, ladder {fmt(report['ladder'])}\n"
            f"  swap acceptance per pair {fmt(report['swap_acceptance'])}; barrier Lambda = {report['barrier']:.3g} "
            f"(about 2 Lambda + 1 = {2 * report['barrier'] + 1:.0f} replicas suffice)\n"
            f"  round trips per chain {report['round_trips']} in {report['transitions']} transitions: "
            f"{report['round_trip_rate']:.3g} per transition (DEO prediction {report['predicted_round_trip_rate']:.3g})")
    search = report.get("beta_min_search")
    if search:
        tried = "; ".join(f"{t['beta_min']:.3g} (tau_int {t['tau']:.3g} of {t['observable']}"
                          f"{', chosen' if t['chosen'] else ''})" for t in search)
        text += f"\n  beta_min auto, the slowest observable of a replica alone at each candidate: {tried}"
    if report.get("pilot_gradients"):
        text += f"\n  pilot runs (replicas or beta_min auto) took {report['pilot_gradients']} gradients"
    return text, report


def _forces_note(run_dir: Any) -> tuple[str, dict | None]:
    """With nested timescales: each level's force and ``eps * |F|`` over the sampling chunks
    of ``log.jsonl``, and the step counts that balance ``eps * max|F|`` across levels."""
    from hmc import forces as _forces

    path = run_dir.file("log.jsonl")
    if not os.path.exists(path):
        return "", None
    records = [r for r in _rundir.read_jsonl(path) if r.get("event") == "chunk" and r.get("forces")]
    sampled = [r for r in records if r.get("phase") == "sampling"] or records
    if not sampled:
        return "", None
    n_levels = len(sampled[-1]["forces"]["levels"])
    levels = []
    for i in range(n_levels):
        rows = [r["forces"]["levels"][i] for r in sampled]
        levels.append(dict(terms=rows[-1]["terms"], steps=rows[-1]["steps"], step=float(np.mean([x["step"] for x in rows])),
                           rms=float(np.mean([x["rms"] for x in rows])), max=float(np.max([x["max"] for x in rows])),
                           eps_rms=float(np.mean([x["eps_rms"] for x in rows])),
                           eps_max=float(np.max([x["eps_max"] for x in rows]))))
    lines = ["forces (per level, over the sampling chunks' end states):"]
    for i, lv in enumerate(levels):
        lines.append(f"  level {i} {'+'.join(lv['terms'])}: steps {lv['steps']}, eps {lv['step']:.4g}, |F| rms "
                     f"{lv['rms']:.4g} max {lv['max']:.4g}, eps*|F| rms {lv['eps_rms']:.4g} max {lv['eps_max']:.4g}")
    dh = [r["delta_energy_mean"] for r in sampled if r.get("delta_energy_mean") is not None]
    if dh:
        lines.append(f"  <dH> over the sampling chunks {float(np.mean(dh)):.4g}")
    suggested = _forces.suggest_steps(levels)
    if n_levels > 1:
        lines.append("  steps that balance eps*max|F| across levels: "
                     + ", ".join(f"level {i}: {n}" for i, n in enumerate(suggested)))
    return "\n".join(lines), {"levels": levels, "suggested_steps": suggested}


def _step_note(config: dict | None, warmup: dict) -> str | None:
    """The adaptation's note on a step held at the stability cap, from the warmup record."""
    from hmc import adaptation

    sampler = (config or {}).get("sampler") or {}
    if sampler.get("step_size") is not None or "integrator" not in sampler:
        return None
    return adaptation.limit_report(warmup, sampler.get("target_accept", 0.8), sampler["integrator"],
                                   adaptation.jitter_factor(sampler.get("num_steps"), sampler.get("jitter")))


def _warmup_notes(summary: Any, warmup: dict, step_note: str | None) -> str:
    """The summary's lines on warmup: its final acceptance, and the adaptation's notes on the
    step size (``step_note``) and the trajectory length (also put in ``summary.sampler``)."""
    from hmc import adaptation

    acc = np.asarray(warmup["acceptance_rate"])
    tail = acc[:, -max(1, acc.shape[1] // 10):]
    text = f"\nwarmup: {acc.shape[1]} iterations, mean acceptance over its last tenth {float(tail.mean()):.3f}"
    if step_note:
        text += f"\nstep size: {step_note}"
        summary.sampler["step_size_note"] = step_note
    length_note = adaptation.length_report(warmup)
    if length_note:
        text += f"\ntrajectory length: {length_note}"
        summary.sampler["trajectory_length_note"] = length_note
    return text


def potential_for(path: str) -> Any:
    """The model of a run directory, rebuilt from its ``config.yaml`` (``None`` if that fails)."""
    try:
        cfg = _config.load(os.path.join(path, "config.yaml"))
        set_precision(cfg.run.precision)
        return _config.make_potential(cfg.model, path)
    except Exception as err:  # the summary still works without derived quantities
        logger.warning("could not rebuild the model of %s (%s); derived quantities are left out", path, err)
        return None



def measure_flow(path: str, t_max: float = 1.0, eps: float = 0.01, every: int = 5, configurations: int = 20,
                 out: TextIO | None = None) -> int:
    """``hmc measure RUN_DIR flow``: the Wilson flow of the recorded links of a run
    (:mod:`physics_models.gradient_flow`), on at most ``configurations`` draws spread evenly
    over the chains and draws; the result in ``RUN_DIR/flow.json`` and on ``out``."""
    from physics_models import gradient_flow

    out = out or sys.stdout
    potential = potential_for(path)
    if potential is None or len(getattr(potential, "groups", {}) or {}) != 1:
        raise _config.ConfigError([f"{path}: the flow needs a model with one group leaf of links (yang_mills)"])
    (leaf, group), = potential.groups.items()
    draws = _rundir.read_draws(os.path.join(path, "draws.nc"))["draws"] if os.path.exists(
        os.path.join(path, "draws.nc")) else {}
    if leaf not in draws:
        raise _config.ConfigError([f"{path}: draws.nc holds no links {leaf!r}; record them with "
                                   f"sampler.record: [{leaf}] to measure the flow on a finished run"])
    links = np.asarray(draws[leaf])
    flat = links.reshape((-1,) + links.shape[2:])
    picked = np.unique(np.linspace(0, len(flat) - 1, min(configurations, len(flat))).round().astype(int))
    result = gradient_flow.measure(group, flat[picked], t_max=t_max, eps=eps, every=every)
    _rundir.write_json(os.path.join(path, "flow.json"), result)
    print(gradient_flow.format_result(result), file=out)
    print(f"(written to {os.path.join(path, 'flow.json')})", file=out)
    return EXIT_OK


def check_reversibility(cfg: _config.RunConfig, config_dir: str | None, out: TextIO | None = None) -> int:
    """``hmc check --reversibility``: :func:`hmc.check_reversibility` with the config's model,
    integrator, timescales, step size (0.1 if adapted), number of steps (10 if not fixed),
    precision and seed."""
    from hmc import reversibility

    out = out or sys.stdout
    set_precision(cfg.run.precision)
    potential = _config.make_potential(cfg.model, config_dir)
    s = _config.with_kernel(cfg, potential).sampler
    report = reversibility.check_reversibility(
        potential, seed=cfg.run.seed, precision=cfg.run.precision, integrator=s.integrator,
        step_size=s.step_size or 0.1, num_steps=s.num_steps or 10, num_chains=min(s.num_chains, 4),
        timescales=None if s.timescales is None
        else [level.model_dump(exclude_none=True) for level in s.timescales])
    print(f"model {potential.name}", file=out)
    print(reversibility.format_report(report), file=out)
    return EXIT_OK


def check(cfg: _config.RunConfig, config_dir: str | None, out: TextIO | None = None) -> int:
    """``hmc check``: the preflight of every chain's initial state, without sampling."""
    out = out or sys.stdout
    from hmc import sampler as _sampler

    set_precision(cfg.run.precision)
    potential = _config.make_potential(cfg.model, config_dir)
    positions = _sampler.initial_positions(potential, cfg.run.seed, cfg.sampler.num_chains)
    report = _sampler.preflight_chains(potential, positions, cfg.guard.allow, cfg.run.precision)
    print(f"model {potential.name}: {len(report.terms)} term(s) x {len(report.leaves)} leaf/leaves, "
          f"{cfg.sampler.num_chains} initial state(s) checked", file=out)
    print(str(report), file=out)
    print(space_estimate(potential, cfg, positions)["text"], file=out)
    if not report.ok:
        print("\nThe run would be refused (exit 3). Fix the terms above, or accept a finding with "
              "guard.allow=[KIND:TERM:LEAF].", file=out)
        return EXIT_GUARD
    return EXIT_OK


#: per draw and chain: the sample statistics (lp, energy, acceptance, diverging, step size,
#: n_steps, guard_tripped, delta_energy and the optional ones), 8 bytes each at most
_STAT_BYTES = 12 * 8


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g} {unit}"
        size /= 1000.0
    return f"{size:.3g} TB"


def space_estimate(potential: Any, cfg: _config.RunConfig, positions: Any) -> dict[str, Any]:
    """The disk a run of ``cfg`` needs at most: ``draws.nc`` (observables, recorded leaves and
    statistics of every draw, warmup statistics), and the checkpoint (two generations of the
    chain states, and the chunk files, which hold the draws until the run ends)."""
    import jax

    one = jax.tree_util.tree_map(lambda x: x[0], positions)
    shapes = jax.eval_shape(potential.observe, one)
    item = 8 if cfg.run.precision == "float64" else 4
    per_draw = sum(int(np.prod(s.shape)) for s in shapes.values()) * item + _STAT_BYTES
    from hmc.initial import recorded_leaves

    names = potential.leaf_names(one)
    leaves = dict(zip(names, jax.tree_util.tree_leaves(one)))
    recorded = recorded_leaves(potential, names, cfg.sampler.record, [int(np.size(leaves[k])) for k in names])
    per_draw += sum(int(np.size(leaves[k])) * max(item, np.dtype(leaves[k].dtype).itemsize) for k in recorded)
    chains, draws = cfg.sampler.num_chains, cfg.sampler.num_samples // cfg.sampler.thin
    draws_nc = chains * (draws * per_draw + cfg.sampler.num_warmup * _STAT_BYTES)
    states = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(positions))
    checkpoint = 2 * 3 * states + draws_nc  # two generations (and one being written) of states and gradients
    total = draws_nc + checkpoint
    return {"draws_nc": draws_nc, "checkpoint": checkpoint, "total": total,
            "text": f"disk space: about {_human(total)} at most (draws.nc {_human(draws_nc)}, the checkpoint up to "
                    f"{_human(checkpoint)} while the run is in progress); plots and logs add a few MB"}
