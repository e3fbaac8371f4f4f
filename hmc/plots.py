"""Figures of a run directory (``hmc plot RUN_DIR``; also drawn at the end of ``hmc run``).

Written to ``RUN_DIR/plots/``:

- ``trace_<observable>.png``: the trace of every chain and the histogram per chain,
  with the exact value when the model knows it. A vector observable (a correlator)
  is drawn instead as its mean with 2-MCSE bars against its index, beside the exact curve.
- ``energy.png``: marginal energy vs energy transitions (E-BFMI, Betancourt 2016).
- ``warmup.png``: acceptance and step size through warmup.
- ``guard.png``: guard trips over the run (iteration x chain) with the findings of guard.jsonl.
- ``autocorrelation.png``: normalised autocorrelation of every scalar observable.

Only matplotlib's object API is used (no pyplot, no display needed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hmc import diagnostics, rundir

MAX_CHAINS_DRAWN = 8
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: str) -> str:
    rundir.atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_run(run_dir: str, observables: list[str] | None = None) -> list[str]:
    """Write every figure of ``run_dir``; returns their paths."""
    data = rundir.RunDirectory(run_dir).load()
    folder = os.path.join(run_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    draws = data["draws"]
    if observables is None:  # the model's observables, not the recorded state leaves
        observables = data.get("observables") or list(draws)
    names = observables
    written = []
    settings = data["config"].get("sampler", {})
    for name in names:
        if name not in draws or draws[name].shape[1] == 0:
            continue
        x = np.asarray(draws[name], np.float64)
        path = os.path.join(folder, f"trace_{_safe(name)}.png")
        if x.ndim == 2:
            written.append(_save(trace_figure(name, x, data["exact"].get(name)), path))
        elif x.ndim == 3 and x.shape[2] <= 512:
            written.append(_save(vector_figure(name, x, data["exact"].get(name)), path))
    stats = data["stats"]
    if "energy" in stats and np.shape(stats["energy"])[1] > 2:
        written.append(_save(energy_figure(np.asarray(stats["energy"], np.float64)), os.path.join(folder, "energy.png")))
    if data["warmup_stats"] and np.size(data["warmup_stats"].get("step_size", [])):
        written.append(_save(warmup_figure(data["warmup_stats"], settings.get("target_accept")),
                             os.path.join(folder, "warmup.png")))
    written.append(_save(guard_figure(data["warmup_stats"], stats, data["events"]), os.path.join(folder, "guard.png")))
    log_path = os.path.join(run_dir, "log.jsonl")
    records = [r for r in rundir.read_jsonl(log_path) if r.get("forces")] if os.path.exists(log_path) else []
    if records:
        written.append(_save(forces_figure(records), os.path.join(folder, "forces.png")))
    tempering = [r for r in rundir.read_jsonl(log_path) if r.get("tempering")] if os.path.exists(log_path) else []
    if tempering and "beta_index" in stats and np.shape(stats["beta_index"])[1] > 1:
        written.append(_save(tempering_figure(np.asarray(stats["beta_index"]), tempering[-1]["tempering"]),
                             os.path.join(folder, "tempering.png")))
    scalars = {k: np.asarray(v, np.float64) for k, v in draws.items() if np.ndim(v) == 2 and k in names}
    if scalars and next(iter(scalars.values())).shape[1] > 4:
        written.append(_save(autocorrelation_figure(scalars), os.path.join(folder, "autocorrelation.png")))
    return written


def trace_figure(name: str, x: np.ndarray, exact: Any = None) -> Any:
    """Trace (left) and per-chain histograms (right) of a scalar observable."""
    fig = _figure(10, 3.2)
    trace, hist = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    chains, draws = x.shape
    shown = range(min(chains, MAX_CHAINS_DRAWN))
    for c in shown:
        trace.plot(np.arange(draws), x[c], lw=0.6, alpha=0.8, color=COLORS[c % len(COLORS)], label=f"chain {c}")
    finite = x[np.isfinite(x)]
    bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 10
    for c in shown:
        hist.hist(x[c][np.isfinite(x[c])], bins=bins, orientation="horizontal", histtype="step",
                  color=COLORS[c % len(COLORS)], density=True)
    s = diagnostics.summarize_draws(x, exact)
    title = f"{name}: mean {float(s.mean):.5g} ± {float(s.mcse):.2g} (MCSE), ESS {float(s.ess_bulk):.0f}, " \
            f"R-hat {float(s.r_hat):.3f}"
    if exact is not None and np.ndim(exact) == 0:
        for ax in (trace, hist):
            ax.axhline(float(exact), color="black", ls="--", lw=1.2)
        title += f", exact {float(exact):.6g} (z = {float(s.z):+.2f})"
    if chains > MAX_CHAINS_DRAWN:
        title += f"  [{MAX_CHAINS_DRAWN} of {chains} chains drawn]"
    trace.set_title(title, fontsize=9, loc="left")
    trace.set_xlabel("draw")
    trace.set_ylabel(name)
    hist.set_xlabel("density")
    if chains <= 4:
        trace.legend(fontsize=7, loc="upper right", ncol=chains)
    return fig


def vector_figure(name: str, x: np.ndarray, exact: Any = None) -> Any:
    """A vector observable: mean over all draws with 2-MCSE bars against its index."""
    known = exact is not None and np.shape(exact) == x.shape[2:]
    fig = _figure(8, 5.5 if known else 3.6)
    ax, z_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1]) if known else (fig.subplots(), None)
    mean = x.mean(axis=(0, 1))
    err = diagnostics.mcse(x)
    index = np.arange(x.shape[2])
    ax.errorbar(index, mean, yerr=2 * err, fmt="o", ms=3, capsize=2, label="estimate ± 2 MCSE")
    if known:
        ax.plot(index, np.asarray(exact), "k--", lw=1, label="exact")
        z = (mean - np.asarray(exact)) / np.where(err > 0, err, np.nan)
        ax.set_title(f"{name}: max |z| = {np.nanmax(np.abs(z)):.2f} over {mean.size} components", fontsize=9, loc="left")
        z_ax.axhspan(-2, 2, color="gray", alpha=0.2, label="|z| < 2")
        z_ax.plot(index, z, "o", ms=3, color=COLORS[0])
        z_ax.axhline(0, color="black", lw=0.6)
        z_ax.set_ylabel("z = (estimate - exact) / MCSE", fontsize=8)
        z_ax.set_xlabel("index")
        z_ax.legend(fontsize=8, loc="upper right")
    else:
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlabel("index")
    ax.set_ylabel(name)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def forces_figure(records: list[dict]) -> Any:
    """Nested timescales: ``eps_level * |F|`` of each level (rms, and the largest component)
    at the end of every chunk. Balanced levels sit at the same height."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    x = np.arange(len(records))
    for i, level in enumerate(records[-1]["forces"]["levels"]):
        label = f"level {i} ({'+'.join(level['terms'])}, steps {level['steps']})"
        rms = [r["forces"]["levels"][i]["eps_rms"] for r in records]
        big = [r["forces"]["levels"][i]["eps_max"] for r in records]
        line, = ax.plot(x, rms, label=label + " rms")
        ax.plot(x, big, ls="--", color=line.get_color(), label=label + " max")
    warm = sum(r.get("phase") == "warmup" for r in records)
    if 0 < warm < len(records):
        ax.axvline(warm - 0.5, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("chunk")
    ax.set_ylabel("eps_level * |F|")
    ax.set_title("force per level at the chunk ends (balanced levels sit together)", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="best")
    return fig


def tempering_figure(beta_index: np.ndarray, report: Mapping[str, Any]) -> Any:
    """Replica exchange: the index process of chain 0 (the temperature index of each
    replica at every draw; a replica that sweeps 0 -> R-1 -> 0 made a round trip), and the
    swap rejection rate of each neighbouring pair (an adapted ladder makes them equal)."""
    fig = _figure(10, 3.6)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    chain = beta_index[0]
    R = chain.shape[1]
    # three replicas: those that start the sampling phase at beta = 1, mid-ladder and the reference
    for index in sorted({0, R // 2, R - 1}):
        slot = int(np.flatnonzero(chain[0] == index)[0])
        left.step(np.arange(chain.shape[0]), chain[:, slot], where="post", lw=0.9,
                  label=f"replica starting at index {index}")
    left.legend(fontsize=7, loc="upper right")
    left.set_xlabel("draw")
    left.set_ylabel("temperature index (0: beta = 1)")
    left.invert_yaxis()
    left.set_title(f"index process, chain 0 ({R} replicas; a sweep 0 -> {R - 1} -> 0 is a round trip)", fontsize=9,
                   loc="left")
    rejection = 1.0 - np.asarray(report["swap_acceptance"], np.float64)
    right.bar(np.arange(rejection.size), rejection, color="tab:orange")
    right.set_xlabel("pair (i, i + 1)")
    right.set_ylabel("swap rejection rate")
    right.set_title(f"barrier {report['barrier']:.2f}; round trips/transition {report['round_trip_rate']:.3f} "
                    f"(DEO: {report['predicted_round_trip_rate']:.3f})", fontsize=8, loc="left")
    return fig


def energy_figure(energy: np.ndarray) -> Any:
    """Centred marginal energy and energy transitions: similar widths mean the momentum
    resampling explores the energy levels well (E-BFMI near 1); E-BFMI < 0.3 is a warning."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    centred = (energy - energy.mean(axis=1, keepdims=True)).ravel()
    transitions = np.diff(energy, axis=1).ravel()
    both = np.concatenate([centred, transitions])
    both = both[np.isfinite(both)]
    bins = np.histogram_bin_edges(both, bins=50) if both.size else 10
    ax.hist(centred[np.isfinite(centred)], bins=bins, alpha=0.5, density=True, label="marginal energy E - <E>")
    ax.hist(transitions[np.isfinite(transitions)], bins=bins, alpha=0.5, density=True,
            label="energy transition E(t) - E(t-1)")
    e = diagnostics.ebfmi(energy)
    ax.set_title(f"E-BFMI per chain: min {np.nanmin(e):.3f}, median {np.nanmedian(e):.3f} "
                 f"({int(np.sum(e < 0.3))} chain(s) below 0.3)", fontsize=9, loc="left")
    ax.set_xlabel("energy (centred)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def warmup_figure(warmup: Mapping[str, np.ndarray], target_accept: float | None = None) -> Any:
    """Acceptance (mean over chains, smoothed) and step size through warmup, with the
    target acceptance and the ends of the mass-matrix windows (Stan's schedule)."""
    from hmc.adaptation import build_schedule

    fig = _figure(9, 5)
    acc_ax, eps_ax = fig.subplots(2, 1, sharex=True)
    acc = np.asarray(warmup["acceptance_rate"], np.float64)
    eps = np.asarray(warmup["step_size"], np.float64)
    it = np.arange(acc.shape[1])
    mean = acc.mean(axis=0)
    window = max(1, acc.shape[1] // 25)
    smooth = np.convolve(mean, np.ones(window) / window, mode="same")
    acc_ax.plot(it, mean, lw=0.4, alpha=0.4, color="gray", label="mean over chains")
    acc_ax.plot(it, smooth, lw=1.5, color=COLORS[0], label=f"running mean ({window} iterations)")
    if target_accept is not None:
        acc_ax.axhline(target_accept, color="black", ls="--", lw=1, label=f"target {target_accept:g}")
    ends = np.nonzero(build_schedule(acc.shape[1]).slow_window_end)[0]
    for ax in (acc_ax, eps_ax):
        for k, end in enumerate(ends):
            ax.axvline(end + 0.5, color="gray", ls=":", lw=0.8, label="mass matrix updated" if k == 0 and ax is acc_ax
                       else None)
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_ylabel("acceptance")
    acc_ax.legend(fontsize=8, loc="lower right")
    acc_ax.set_title(f"warmup: {acc.shape[1]} iterations x {acc.shape[0]} chains", fontsize=9, loc="left")
    if np.all(np.isclose(eps, eps[:1])):
        eps_ax.plot(it, eps[0], color=COLORS[1], lw=1.2, label="step size (pooled over chains)")
    else:
        for c in range(min(eps.shape[0], MAX_CHAINS_DRAWN)):
            eps_ax.plot(it, eps[c], lw=0.8, color=COLORS[c % len(COLORS)])
    if np.all(eps > 0):
        eps_ax.set_yscale("log")
    eps_ax.set_ylabel("step size")
    eps_ax.set_xlabel("warmup iteration")
    return fig


def guard_figure(warmup: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray], events: list[dict]) -> Any:
    """Tripped trajectories (iteration x chain) through warmup and sampling, and what the guard said."""
    fig = _figure(9, 4.2)
    ax, text_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    w = np.asarray(warmup.get("guard_tripped", np.zeros((0, 0), bool)), bool)
    s = np.asarray(stats.get("guard_tripped", np.zeros((0, 0), bool)), bool)
    n_w = w.shape[1] if w.ndim == 2 else 0
    total_trips = 0
    for grid, offset, color, label in ((w, 0, COLORS[1], "warmup"), (s, n_w, COLORS[3], "sampling")):
        if grid.ndim != 2 or not grid.size:
            continue
        chain, it = np.nonzero(grid)
        total_trips += chain.size
        ax.scatter(it + offset, chain, s=8, color=color, label=f"{label}: {chain.size} tripped")
    if n_w:
        ax.axvline(n_w - 0.5, color="gray", ls=":", lw=1)
    draws = s.shape[1] if s.ndim == 2 else 0
    chains = max(w.shape[0] if w.ndim == 2 else 0, s.shape[0] if s.ndim == 2 else 0)
    ax.set_xlim(-0.5, n_w + draws + 0.5)
    ax.set_ylim(-0.5, max(chains, 1) - 0.5)
    ax.set_xlabel("iteration (warmup, then draws)")
    ax.set_ylabel("chain")
    if total_trips:
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"guard trips: {total_trips} of {(n_w + draws) * chains} trajectories", fontsize=9, loc="left")
    else:
        ax.set_title(f"no guard trips in {(n_w + draws) * chains} trajectories", fontsize=9, loc="left")
    text_ax.axis("off")
    counts: dict[str, int] = {}
    for e in events:
        key = f"{e['phase']}: {e['kind']}" + (f" in {e['term']}" if e.get("term") else "") + \
              (f" ({e['primitive']}, {e['source']})" if e.get("primitive") else "")
        counts[key] = counts.get(key, 0) + 1
    lines = [f"{n} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:12]] or ["guard.jsonl: no findings"]
    text_ax.text(0, 1, "guard findings\n\n" + "\n".join(_wrap(line, 48) for line in lines),
                 va="top", ha="left", fontsize=8, family="monospace")
    return fig


def _wrap(line: str, width: int) -> str:
    return "\n   ".join(line[i:i + width] for i in range(0, len(line), width))


def autocorrelation_figure(scalars: Mapping[str, np.ndarray]) -> Any:
    """Normalised autocorrelation (averaged over chains) with the integrated time in the legend."""
    from numpyro.diagnostics import autocorrelation

    fig = _figure(8, 3.8)
    ax = fig.subplots()
    for i, (name, x) in enumerate(scalars.items()):
        if not np.all(np.isfinite(x)) or np.all(x == x[:, :1]):
            continue
        rho = np.mean(autocorrelation(x, axis=1), axis=0)
        max_lag = min(len(rho) - 1, max(10, min(200, len(rho) // 4)))
        ess = float(diagnostics.ess(x))
        tau = x.size / ess if ess > 0 else float("nan")
        ax.plot(np.arange(max_lag + 1), rho[: max_lag + 1], lw=1.2, color=COLORS[i % len(COLORS)],
                label=f"{name} (tau_int = {tau:.2f})")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("lag (draws)")
    ax.set_ylabel("autocorrelation")
    ax.set_title("autocorrelation, averaged over chains; tau_int = draws / ESS", fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="upper right")
    return fig
