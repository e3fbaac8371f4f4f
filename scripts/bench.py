"""Throughput of guarded-hmc against the bare-gradient limit, numpyro and blackjax.

Every number is the steady-state time per gradient evaluation, measured in this
one process after compilation; ratios are medians over interleaved repeats, paired
within a repeat, to the *limit*: the vmapped gradient alone inside a ``lax.scan``.

All samplers run the same thing: leapfrog, fixed step size, ``L`` steps, unit
mass, float32. Per-gradient time of an HMC trajectory is its time divided by
``L`` (so the one energy evaluation per trajectory and the momentum draw count
against the sampler).

    python scripts/bench.py                 # full table, written to BENCHMARKS.md
    python scripts/bench.py --quick         # a smaller table, printed only
    python scripts/bench.py --only phi4 --chains 16,256   # some rows, printed only
    python scripts/bench.py --guard         # only the guard's costs (in-loop, preflight, probe)
    python scripts/bench.py --scaling       # throughput vs chains and lattice size, compile time
    python scripts/bench.py --memory        # peak memory of one run: this package, blackjax, numpyro
    python scripts/bench.py --defaults      # phi4 64x64 x 64 chains at the defaults a user gets
    python scripts/bench.py --efficiency    # effective samples per gradient and per second (efficiency.py)
    python scripts/bench.py --lengths       # the default trajectory length against 10 steps and the configs'
    python scripts/bench.py --timescales    # Schwinger model: nested against flat 2MN at equal acceptance
    python scripts/bench.py --timescales --scan 16 --beta 32 --mass 0.5 --production 1000 --seeds 3
                                            # one lattice's step-count scan, then cost per ESS at the defaults
    python scripts/bench.py --tempering     # replica exchange against plain HMC (tempering_validate.py)
    python scripts/bench.py --gauge         # SU(3) 4D: autodiff force against a staple force (gauge_bench.py)
    python scripts/bench.py --qcd           # SU(3) 4D with Wilson fermions: even-odd, timescales, fermion force
    python scripts/bench.py --qcd --part forces   # rerun one part of it (the others from out/qcd_bench/)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import hmc  # noqa: E402
import physics_models  # noqa: E402

L = 10


def targets() -> dict[str, tuple[Callable, tuple[int, ...], float]]:
    """name -> (U(flat array) -> scalar, state shape, step size)."""
    gauss = physics_models.gaussian(dim=100, condition_number=10.0)
    phi32 = physics_models.phi4(shape=(32, 32), m2=-1.0, lam=0.5)
    phi64 = physics_models.phi4(shape=(64, 64), m2=-1.0, lam=0.5)
    return {
        "gaussian 100-d": (lambda x: gauss.energy({"x": x}), (100,), 0.1),
        "phi4 32x32": (lambda x: phi32.energy({"phi": x}), (32, 32), 0.05),
        "phi4 64x64": (lambda x: phi64.energy({"phi": x}), (64, 64), 0.05),
    }


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return min(times)


def initial(shape: tuple[int, ...], chains: int) -> jax.Array:
    return 0.3 * jax.random.normal(jax.random.key(0), (chains, *shape), jnp.float32)


# -- the limit -------------------------------------------------------------------
def limit_runner(U: Callable, shape, chains: int, n_grads: int) -> Callable[[], object]:
    grad = jax.vmap(jax.grad(U))
    q0 = initial(shape, chains)

    @jax.jit
    def run(q):
        def body(q, _):
            return q - 1e-4 * grad(q), None

        return jax.lax.scan(body, q, None, length=n_grads)[0]

    jax.block_until_ready(run(q0))
    return lambda: run(q0)


# -- this package ------------------------------------------------------------------
def ours_runner(U: Callable, shape, eps: float, chains: int, n_traj: int, guard: str,
                guard_check: str = "trajectory", chunk: int | None = None) -> Callable[[], object]:
    """``hmc.sample`` with ``n_traj`` draws in chunks of ``chunk`` (default: one chunk)."""
    pot = hmc.Potential(terms={"U": lambda q: U(q["q"])}, init=lambda key: {"q": jnp.zeros(shape)})
    init = {"q": initial(shape, chains)}

    def run():
        r = hmc.sample(
            pot, seed=0, num_chains=chains, num_warmup=0, num_samples=n_traj, step_size=eps, num_steps=L,
            integrator="leapfrog", mass_matrix="identity", record=[], guard=guard, guard_check=guard_check,
            chunk_size=chunk or n_traj, init_positions=init, progress=False,
        )
        return r.stats["lp"]

    run()  # compile; later calls reuse the compiled chunk
    return run


# -- numpyro -----------------------------------------------------------------------
def numpyro_runners(U: Callable, shape, eps: float, chains: int, n_traj: int):
    from numpyro.infer import HMC, MCMC

    init = initial(shape, chains)

    def make(n):
        kernel = HMC(potential_fn=U, step_size=eps, num_steps=L, trajectory_length=None,
                     adapt_step_size=False, adapt_mass_matrix=False)
        mcmc = MCMC(kernel, num_warmup=0, num_samples=n, num_chains=chains, chain_method="vectorized",
                    progress_bar=False)
        return mcmc

    def per_call(n):
        mcmc = make(n)

        def run():
            mcmc.run(jax.random.key(1), init_params=init if chains > 1 else init[0])
            return mcmc.get_samples()

        return run

    return per_call(n_traj), per_call(3 * n_traj)


# -- blackjax ----------------------------------------------------------------------
def blackjax_runner(U: Callable, shape, eps: float, chains: int, n_traj: int) -> Callable[[], object]:
    import blackjax

    d = int(np.prod(shape))
    sampler = blackjax.hmc(lambda x: -U(x), step_size=eps, inverse_mass_matrix=jnp.ones(d),
                           num_integration_steps=L)
    states = jax.vmap(sampler.init)(initial(shape, chains))
    keys = jax.random.split(jax.random.key(2), n_traj)

    @jax.jit
    def run(states):
        def body(states, key):
            states, info = jax.vmap(sampler.step)(jax.random.split(key, chains), states)
            return states, info.acceptance_rate

        return jax.lax.scan(body, states, keys)

    jax.block_until_ready(run(states))
    return lambda: run(states)


def measure(name: str, U, shape, eps, chains, repeats, budget) -> dict[str, float]:
    # size the run so the limit takes about `budget` seconds
    probe = limit_runner(U, shape, chains, 20)
    per_grad = best_of(probe, 2) / 20
    n_traj = int(np.clip(budget / (per_grad * L), 10, 2000))
    n_grads = n_traj * L
    runners = {
        "limit": limit_runner(U, shape, chains, n_grads),
        "ours_1": ours_runner(U, shape, eps, chains, n_traj, "reject"),
        "ours_3": ours_runner(U, shape, eps, chains, 3 * n_traj, "reject", chunk=n_traj),
        "ours_noguard_1": ours_runner(U, shape, eps, chains, n_traj, "off"),
        "ours_noguard_3": ours_runner(U, shape, eps, chains, 3 * n_traj, "off", chunk=n_traj),
        "blackjax": blackjax_runner(U, shape, eps, chains, n_traj),
    }
    numpyro_1, numpyro_3 = numpyro_runners(U, shape, eps, chains, n_traj)
    runners["numpyro_1"], runners["numpyro_3"] = numpyro_1, numpyro_3
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):  # interleaved: each repeat runs every method once, back to back
        for k, run in runners.items():
            times[k].append(best_of(run, 1))
    t = {k: np.asarray(v) for k, v in times.items()}
    # medians of ratios paired within a repeat: load changes on a shared machine cancel
    # steady state of a sampler called per run: the extra time of a 3x longer call (fixed
    # per-call costs such as preflight, and numpyro's recompilation, cancel)
    for k in ("ours", "ours_noguard", "numpyro"):
        t[k] = (t[k + "_3"] - t[k + "_1"]) / 2
    ratio = {k: float(np.median(t[k] / t["limit"])) for k in ("ours", "ours_noguard", "blackjax")}
    ratio["numpyro_per_run"] = float(np.median(t["numpyro_1"] / t["limit"]))
    ratio["numpyro_steady"] = float(np.median(t["numpyro"] / t["limit"]))
    ratio["ours_per_call"] = float(np.median(t["ours_1"] / t["limit"]))
    ratio["guard_cost"] = float(np.median(t["ours"] / t["ours_noguard"]) - 1.0)
    ratio["limit_per_grad"] = float(np.min(t["limit"]) / n_grads)
    ratio["n_traj"] = n_traj
    return ratio


def versions() -> str:
    import numpyro

    try:
        import blackjax

        bj = blackjax.__version__
    except Exception:  # pragma: no cover
        bj = "missing"
    dev = jax.devices()[0]
    return (
        f"python {platform.python_version()}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"blackjax {bj}, device {dev.platform}:{getattr(dev, 'device_kind', '?')}, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer configurations, print only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of limit time per configuration")
    parser.add_argument("--guard", action="store_true", help="only the guard section")
    parser.add_argument("--scaling", action="store_true", help="only the scaling section (chains, lattice size, "
                        "float64/float32, compile time, memory)")
    parser.add_argument("--memory", action="store_true", help="only the peak-memory section")
    parser.add_argument("--defaults", action="store_true", help="only the throughput-at-the-defaults section")
    parser.add_argument("--efficiency", action="store_true", help="only the effective-samples section "
                        "(scripts/efficiency.py: grad/ESS and ESS/s against numpyro and blackjax NUTS)")
    parser.add_argument("--grid-check", action="store_true", help="with --efficiency: only ours (3 seeds) against "
                        "the best fixed grid point rerun with 3 fresh seeds, median to median")
    parser.add_argument("--grid-seeds", type=int, default=3, help="--grid-check: seeds of ours and of the rerun "
                        "grid point (other than 3: printed only)")
    parser.add_argument("--draws", type=int, default=1000, help="--grid-check: draws per run (other than 1000: "
                        "printed only; for rows whose 1000 draws do not sample their slowest process)")
    parser.add_argument("--lengths", action="store_true", help="only the default-trajectory-length section "
                        "(scripts/efficiency.py: no length given, 10 steps and each config's own length)")
    parser.add_argument("--timescales", action="store_true", help="only the nested-timescales section "
                        "(the Schwinger model: flat against nested 2MN, cost per trajectory and per effective sample)")
    parser.add_argument("--size", type=int, default=8, help="--timescales: the lattice size L")
    parser.add_argument("--scan", type=int, default=None, metavar="L", help="--timescales: only the step-count "
                        "scan on L x L from 16 configurations (4 chains), rows printed, nothing written "
                        "(for lattices too large for the whole section)")
    parser.add_argument("--beta", type=float, default=16.0, help="--scan: the gauge coupling")
    parser.add_argument("--mass", type=float, default=0.1, help="--scan: the quark mass")
    parser.add_argument("--hasenbusch", default="1.0", help="--scan: comma-separated Hasenbusch masses")
    parser.add_argument("--inner", type=int, default=4, help="--scan: gauge steps per outer drift")
    parser.add_argument("--outer", default="minimum_norm", help="--scan: the outermost level's integrator in the "
                        "nested schemes (e.g. force_gradient; adds a flat row with it)")
    parser.add_argument("--production", type=int, default=0, metavar="DRAWS", help="--scan: then sampling runs "
                        "(8 chains, DRAWS draws each, measuring the plaquette and the topological charge only) at the "
                        "defaults: cost per effective sample")
    parser.add_argument("--warmup", type=int, default=200, help="--production: warmup iterations")
    parser.add_argument("--fixed", action="store_true", help="--production: also at the scan's fixed step counts")
    parser.add_argument("--seeds", type=int, default=1, help="--production: sampler seeds 0, 1, ...")
    parser.add_argument("--middle", type=int, default=1, help="--scan: Hasenbusch heavy steps per outer drift")
    parser.add_argument("--tempering", action="store_true", help="only the replica-exchange section "
                        "(scripts/tempering_validate.py: tempered against plain HMC at equal gradient cost; "
                        "writes VALIDATION.md and BENCHMARKS.md)")
    parser.add_argument("--nuts", action="store_true", help="only the NUTS section (scripts/nuts_bench.py: our "
                        "NUTS against numpyro's and blackjax's on the same models, and NUTS's cost under vmap)")
    parser.add_argument("--gauge", action="store_true", help="only the gauge-field section (scripts/gauge_bench.py: "
                        "SU(3) 4D trajectories with our autodiff force against a hand-written staple force, the "
                        "bare-force limit and hmc.sample, float32 and float64, and where the time goes)")
    parser.add_argument("--qcd", action="store_true", help="only the dynamical-fermion section (scripts/qcd_bench.py: "
                        "SU(3) 4D Wilson fermions, even-odd against unpreconditioned CG, flat against nested "
                        "timescales and Hasenbusch per effective sample, autodiff against a hand-written fermion force)")
    parser.add_argument("--part", default=None, help="--qcd: comma-separated parts to rerun (even_odd, forces, "
                        "schemes; default all); the others come from their last run's cache")
    parser.add_argument("--memory-worker", nargs=3, metavar=("SAMPLER", "TARGET", "CHAINS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help="rows whose target contains this text (printed only; "
                        "comma: any of several; =name: that case only)")
    parser.add_argument("--update", action="store_true", help="with --only and --efficiency or --lengths: "
                        "replace those rows of the table in BENCHMARKS.md (the other rows are kept)")
    parser.add_argument("--chains", default=None, help="comma-separated chain counts (printed only)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return 0
    if args.efficiency and args.grid_check:
        if args.grid_seeds != 3 or args.draws != 1000:  # the table's rows are at 3 seeds x 1000 draws
            if not args.only:
                parser.error("--grid-seeds other than 3 or --draws other than 1000 needs --only (its rows are "
                             "printed, not written)")
            return grid_check_section(args.only, args.out, False, args.grid_seeds, args.draws)
        return grid_check_section(args.only, args.out, args.update)
    if args.efficiency:
        return efficiency_section(args.only, args.out, args.update)
    if args.lengths:
        return lengths_section(args.only, args.out, args.update)
    if args.tempering:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tempering_validate

        sys.argv = [sys.argv[0]]
        tempering_validate.main()
        return 0
    if args.nuts:
        return nuts_section(args.only, args.out)
    if args.gauge:
        return gauge_section(args.out, min(args.repeats, 3))
    if args.qcd:
        return qcd_section(args.out, args.part)
    if args.timescales and args.scan:
        masses = tuple(float(m) for m in args.hasenbusch.split(",") if m)
        schemes = timescale_schemes(args.inner, masses, args.outer, args.middle)
        rows, chosen = scan_table(args.scan, (args.beta,), args.mass, schemes, 0.8, thermal_chains=4)
        print("\n".join(rows))
        for seed in range(args.seeds if args.production else 0):
            modes = (True, False) if args.fixed else (False,)
            print("\n".join(production_table(args.scan, args.beta, args.mass, schemes, chosen, 8, args.warmup,
                                             args.production, seed, modes, ("plaquette", "topological_charge"))),
                  flush=True)
        return 0
    if args.timescales:
        write(args.out, timescales_section(args.size), TIMESCALES_BEGIN, TIMESCALES_END,
              "Nested timescales (`scripts/bench.py --timescales`)")
        return 0
    if args.defaults:
        write(args.out, defaults_section(), DEFAULTS_BEGIN, DEFAULTS_END,
              "Throughput at the defaults (`scripts/bench.py --defaults`)")
        return 0
    if args.memory:
        lines = memory_section()
        write(args.out, lines, MEMORY_BEGIN, MEMORY_END, "Peak memory (`scripts/bench.py --memory`)")
        return 0
    if args.scaling:
        lines = scaling_section(min(args.repeats, 3), args.budget)
        write(args.out, lines, SCALING_BEGIN, SCALING_END, "Scaling (`scripts/bench.py --scaling`)")
        return 0
    if args.guard:
        lines = guard_section(args.repeats)
        write(args.out, lines, GUARD_BEGIN, GUARD_END, "Guard costs (`scripts/bench.py --guard`)")
        return 0
    chain_counts = (16,) if args.quick else (1, 16, 256)
    if args.chains:
        chain_counts = tuple(int(c) for c in args.chains.split(","))
    print_only = args.quick or args.only is not None or args.chains is not None
    rows = []
    header = (
        "| target | chains | limit ns per chain-gradient | ours (guard) | ours (no guard) | guard cost "
        "| ours per call | numpyro steady | numpyro per run() | blackjax |"
    )
    print(versions())
    print(header)
    for name, (U, shape, eps) in targets().items():
        if (args.quick and name == "phi4 64x64") or (args.only and args.only not in name):
            continue
        for chains in chain_counts:
            m = measure(name, U, shape, eps, chains, args.repeats, args.budget)
            row = (
                f"| {name} | {chains} | {m['limit_per_grad'] * 1e9 / chains:.0f} | {m['ours']:.2f}x "
                f"| {m['ours_noguard']:.2f}x | {100 * m['guard_cost']:+.1f} % | {m['ours_per_call']:.2f}x "
                f"| {m['numpyro_steady']:.2f}x | {m['numpyro_per_run']:.2f}x | {m['blackjax']:.2f}x |"
            )
            rows.append(row)
            print(row, flush=True)
    if not print_only:
        lines = [
            f"Command: `python scripts/bench.py` ({time.strftime('%Y-%m-%d')}). {versions()}.",
            "",
            "Time per gradient evaluation relative to the limit (the vmapped gradient alone in a `lax.scan`); "
            f"leapfrog, L = {L}, fixed step size, unit mass, float32; medians of ratios paired within interleaved "
            "repeats. Steady state of `hmc.sample` and numpyro's `run()` = the extra time of a 3x longer call, so "
            "per-call costs (our preflight, numpyro's recompilation) cancel; per call = one call of L x n "
            "trajectories, everything included.",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
        write(args.out, lines, MARK_BEGIN, MARK_END, "Throughput (`scripts/bench.py`)")
    return 0


def defaults_section(repeats: int = 7) -> list[str]:
    """Marginal time per gradient of ``hmc.sample`` on phi4 64x64 x 64 chains (the model's own
    terms, leapfrog, fixed step, L = 10, chunks of 100) at the defaults a user gets (diagonal
    metric, ``record="auto"``) and variants, against the limit (the vmapped gradient in a scan)."""
    side, chains, n = 64, 64, 100
    pot = physics_models.phi4(shape=(side, side), m2=-1.0, lam=0.5)
    init = {"phi": initial((side, side), chains)}
    variants = {
        "defaults (diagonal metric, record auto)": dict(),
        "record every leaf (the old default)": dict(record=None),
        "identity metric, record []": dict(mass_matrix="identity", record=[]),
    }

    def runner(extra: dict, draws: int) -> Callable[[], object]:
        def run():
            r = hmc.sample(pot, seed=0, num_chains=chains, num_warmup=0, num_samples=draws, step_size=0.05,
                           num_steps=L, integrator="leapfrog", chunk_size=100, init_positions=init,
                           progress=False, **extra)
            return r.stats["lp"]

        run()
        return run

    limit = limit_runner(lambda x: pot.energy({"phi": x}), (side, side), chains, n * L)
    rows = [f"Command: `python scripts/bench.py --defaults` ({time.strftime('%Y-%m-%d')}). {versions()}.", "",
            f"phi4 {side}x{side} ({len(pot.terms)} terms), {chains} chains, leapfrog, step 0.05, L = {L}, chunks of "
            f"100, guard on: the marginal time per gradient of `hmc.sample` (a {3 * n}-draw call minus a {n}-draw "
            "call) over the limit's (the vmapped gradient alone in a `lax.scan`); medians over "
            f"{repeats} interleaved repeats. Target (issue 13): <= 1.3x with the defaults.", "",
            "| variant | ratio to the limit |", "|---|---|"]
    for name, extra in variants.items():
        short, long = runner(extra, n), runner(extra, 3 * n)
        ratios = []
        for _ in range(repeats):
            t_limit = best_of(limit, 1) / (n * L)
            marginal = (best_of(long, 1) - best_of(short, 1)) / (2 * n * L)
            ratios.append(marginal / t_limit)
        rows.append(f"| {name} | {np.median(ratios):.2f}x |")
        print(rows[-1], flush=True)
    return rows


def efficiency_section(only: str | None, out: str, update: bool = False) -> int:
    """The table of :mod:`efficiency` (every case into BENCHMARKS.md; ``--only``: printed only,
    or with ``update`` put in place of the same cases' rows)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import efficiency

    chains, warmup, draws = 8, 500, 1000
    print(versions())
    rows = efficiency.table(only, chains, warmup, draws, with_grid=True)
    about = (f"{chains} chains, {warmup} warmup + {draws} draws each, every shipped config at its own sampler "
             "settings (our column), from the same initial states; see `scripts/efficiency.py` for the "
             "definitions. Target (issue 13): grad/ESS <= numpyro's and s/ESS <= 0.5x numpyro's.")
    put_table(out, rows, only, update, "--efficiency", about, efficiency.HEADER, (EFFICIENCY_BEGIN, EFFICIENCY_END),
              "Effective samples (`scripts/bench.py --efficiency`)")
    return 0


def put_table(out: str, rows: list[str], only: str | None, update: bool, flag: str, about: str, header: str,
              markers: tuple[str, str], title: str) -> None:
    """The whole table into ``out`` (no ``only``), or with ``update`` the rows in place of the
    same cases' (:func:`replace_rows`)."""
    if only is not None:
        if update:
            replace_rows(out, rows, *markers)
        return
    lines = [f"Command: `python scripts/bench.py {flag}` ({time.strftime('%Y-%m-%d')}). {versions()}.", "", about, "",
             header, "|" + "---|" * header.count(" | ") + "---|", *rows]
    write(out, lines, *markers, title)


GRIDCHECK_BEGIN, GRIDCHECK_END = "<!-- bench.py --grid-check:begin -->", "<!-- bench.py --grid-check:end -->"


def grid_check_section(only: str | None, out: str, update: bool = False, seeds: int = 3, draws: int = 1000) -> int:
    """The table of :func:`efficiency.grid_check_table` (into BENCHMARKS.md; ``--only``: printed
    only, or with ``update`` put in place of the same cases' rows, the section made if absent)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import efficiency

    chains, warmup = 8, 500
    print(versions())
    rows = efficiency.grid_check_table(only, chains, warmup, draws, seeds)
    about = (f"{chains} chains, {warmup} warmup + {draws} draws, every shipped config at its own settings, {seeds} "
             "sampler seeds (each with its own warmup), from the same initial states. The grid is that of "
             "`--efficiency` (steps 0.7, 1, 1.3x the adapted one; lengths 0.5, 1, 2x the config's, or the "
             "adapted one with jitter 0.2 for `auto`), run from seed 0's adapted states and metric. The best of "
             "nine noisy points is biased low (the winner's curse), so that point is run again with "
             f"{seeds} fresh seeds from the same states, and the criterion of issue 13 (ours within 1.2x of the "
             "best grid point) is decided median to median.")
    text = open(out).read() if os.path.exists(out) else ""
    if only is not None and update and GRIDCHECK_BEGIN not in text:
        only = None  # the first rows make the section
    put_table(out, rows, only, update, "--efficiency --grid-check", about, efficiency.GRID_CHECK_HEADER,
              (GRIDCHECK_BEGIN, GRIDCHECK_END), "Ours against the best fixed grid point (`scripts/bench.py "
              "--efficiency --grid-check`)")
    return 0


LENGTHS_BEGIN, LENGTHS_END = "<!-- bench.py --lengths:begin -->", "<!-- bench.py --lengths:end -->"


def lengths_section(only: str | None, out: str, update: bool = False) -> int:
    """The table of :func:`efficiency.lengths_table` (into BENCHMARKS.md; ``--only``: printed
    only, or with ``update`` put in place of the same cases' rows)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import efficiency

    chains, warmup, draws = 8, 500, 1000
    print(versions())
    rows = efficiency.lengths_table(only, chains, warmup, draws)
    about = (f"{chains} chains, {warmup} warmup + {draws} draws, every shipped `kernel: hmc` config without "
             "tempering, its model and sampler settings but the trajectory's, from the same initial states: the "
             "config's own length, the old default of `hmc.sample` (10 steps, no jitter), and no length given "
             "(now `auto`, with the adapted T). grad/ESS = gradients on the draws / the smallest bulk ESS "
             "(`magnetization` left out); R-hat the largest over the observables.")
    put_table(out, rows, only, update, "--lengths", about, efficiency.LENGTHS_HEADER, (LENGTHS_BEGIN, LENGTHS_END),
              "Default trajectory length (`scripts/bench.py --lengths`)")
    return 0


NUTS_BEGIN, NUTS_END = "<!-- bench.py --nuts:begin -->", "<!-- bench.py --nuts:end -->"


def nuts_section(only: str | None, out: str) -> int:
    """The tables of :mod:`nuts_bench` (every model into BENCHMARKS.md; ``--only``: printed only)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nuts_bench

    chains, warmup, draws = 8, 500, 1000
    print(versions())
    rows, waste = nuts_bench.tables(only, chains, warmup, draws)
    if only is None:
        lines = [
            f"Command: `python scripts/bench.py --nuts` ({time.strftime('%Y-%m-%d')}). {versions()}.",
            "",
            f"{chains} chains, {warmup} warmup + {draws} draws each, every sampler at its defaults; see "
            "`scripts/nuts_bench.py` for the definitions. Target (issue 16): at least numpyro's ESS per second on "
            "every model.",
            "",
            nuts_bench.HEADER,
            "|" + "---|" * nuts_bench.HEADER.count(" | ") + "---|",
            *rows,
            "",
            f"NUTS under `vmap` ({warmup} warmup + {draws} draws):",
            "",
            nuts_bench.WASTE_HEADER,
            "|" + "---|" * nuts_bench.WASTE_HEADER.count(" | ") + "---|",
            *waste,
        ]
        write(out, lines, NUTS_BEGIN, NUTS_END, "NUTS (`scripts/bench.py --nuts`)")
    return 0


GAUGE_BEGIN, GAUGE_END = "<!-- bench.py --gauge:begin -->", "<!-- bench.py --gauge:end -->"


def gauge_section(out: str, repeats: int = 3) -> int:
    """The tables of :mod:`gauge_bench` (each precision in its own process) into BENCHMARKS.md."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gauge_bench

    print(versions())
    result = gauge_bench.tables(repeats)
    checks = "; ".join(f"{p}: max |F_staple - F_autodiff| = {c['max_difference']:.1e} (opposite sign "
                       f"{c['max_difference_opposite_sign']:.1f}, max |F| {c['max_force']:.2f})"
                       for p, c in result["check"].items())
    lines = [
        f"Command: `python scripts/bench.py --gauge` ({time.strftime('%Y-%m-%d')}). {versions()}.",
        "",
        f"SU(3) Wilson action, beta = {gauge_bench.BETA}, 4D periodic lattice, Haar-random links; one trajectory = "
        f"2MN, step {gauge_bench.STEP_SIZE}, {gauge_bench.NUM_STEPS} steps ({gauge_bench.GRADIENTS} gradients), unit "
        "mass, fresh momentum, Metropolis test, jitted and vmapped over chains, the same integrator code "
        "(`hmc.integrators._trajectory`, the sampler's group drift) with either force: autodiff = "
        "`jax.grad(potential.energy)`; staple = `beta/(2N) Pi(U_mu Sigma_mu)` with the 3x3 products written out "
        "(`scripts/gauge_bench.py`). Limit = the vmapped autodiff force alone in a `lax.scan`; hmc.sample = the "
        "sampler (guard on, the plaquette as the only observable, chunks of one trajectory, the first chunk "
        "dropped; the model's six default observables add the per-draw time in the second table). Times are "
        f"medians, ratios medians of ratios within {repeats} interleaved repeats. Targets: autodiff / staple <= 1.5x, "
        "autodiff / limit <= 1.3x.",
        "",
        f"Staple force against autodiff on a random 4^4 configuration: {checks}.",
        "",
        gauge_bench.HEADER,
        "|" + "---|" * (gauge_bench.HEADER.count(" | ") + 1),
        *result["rows"],
        "",
        "Where the time goes (8^4, 1 chain; each part on all 4 V links, 10 times in a `lax.scan` as the limit, "
        "medians of 5 interleaved runs, ms per call; trajectories: 3 runs, ms per gradient, i.e. per trajectory / 20):",
        "",
        gauge_bench.PARTS_HEADER,
        "|---|---|---|",
        *result["parts"],
    ]
    write(out, lines, GAUGE_BEGIN, GAUGE_END, "Gauge fields (`scripts/bench.py --gauge`)")
    return 0


QCD_BEGIN, QCD_END = "<!-- bench.py --qcd:begin -->", "<!-- bench.py --qcd:end -->"


def qcd_section(out: str, parts: str | None = None) -> int:
    """The tables of :mod:`qcd_bench` (each part in its own float64 process) into BENCHMARKS.md."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import qcd_bench as qb

    print(versions())
    chosen = qb.PARTS if parts is None else tuple(p for p in parts.split(",") if p)
    results = qb.tables(chosen)
    dates = ", ".join(f"{p} {results[p]['date']}" for p in qb.PARTS)
    schemes = results["schemes"]["result"]
    lines = [
        f"Command: `python scripts/bench.py --qcd` (parts run on: {dates}). {versions()}. Machine: 2-core AMD EPYC, "
        "no GPU, shared with other sessions' processes.",
        "",
        f"`physics_models.qcd(\"SU(3)\", (L, L, L, L), beta={qb.BETA}, mass={qb.MASS})`, two flavours of Wilson "
        f"pseudofermions (no clover), CG on `M^dag M` to relative residual {qb.CG_TOL:g}, one solve per force, float64. "
        f"Links: a quenched run (`yang_mills`, beta {qb.BETA}) from a cold start, {qb.THERMAL_TRAJECTORIES} trajectories "
        "of length 1, the last state (the same configuration in every part; plaquette below). Times are medians over "
        "interleaved repeats, ratios medians of ratios within a repeat (`scripts/qcd_bench.py`).",
        "",
        "**(a) Even-odd preconditioning.** Same links; 4 pseudofermion sources `phi = M^dag eta` from the model's heat "
        "bath with the same `eta` (complex Gaussian, keys `fold_in(key(5), i)`) for `M = D` and for the Schur "
        "complement `M = D_hat`; ms / force: `jax.grad` of the fermion term (the solve included), averaged over the 4 "
        "sources; ms / M, ms / M^dag M: one application at fixed links, chained 10 times in a `lax.scan` as the CG "
        "applies it.",
        "",
        *qb.even_odd_lines(results["even_odd"]["result"]),
        "",
        f"**(b) Flat against nested timescales and Hasenbusch, 4^4, at equal acceptance.** {schemes['chains']} "
        f"configurations of the dynamical theory (the quenched start, then {schemes['equilibration']} trajectories of a "
        f"flat run; plaquettes {', '.join(f'{p:.3f}' for p in schemes['plaquette_start'])}), one per chain. Trajectory "
        "length 1 in every scheme, 2MN at every level, unit mass, even-odd on (the model's default), the plaquette as "
        "the only observable. Inner step counts fixed: gauge x 4 per drift of the level above, one heavy step per ratio "
        "step (see the reading for what `hmc summary` suggests instead). Then a scan of the outer "
        f"step count n (`hmc.sample` with the step fixed at 1/n, {schemes['scan_draws']} trajectories per chain, "
        "acceptance `<min(1, exp(-dH))>`), and a run at each scheme's cheapest n with acceptance at least "
        f"{schemes['target']:g} (equal acceptance: the same threshold for all, as in the Schwinger scan), "
        f"{schemes['samples']} trajectories per chain. ESS of the plaquette: pooled bulk, and each chain's own summed "
        "(+- from the spread of the chains' own ESS, carried to s / ESS and the ratios); ms / traj: a chunk's time over its trajectories (chains vmapped, so per chain), "
        "from the chunks after the first; light = `fermion` or `fermion_ratio` (a mass-0.1 solve), heavy = "
        "`fermion_heavy`.",
        "",
        *qb.schemes_lines(schemes),
        "",
        "**(c) The fermion force: autodiff against hand-written, unpreconditioned D.** Autodiff = `jax.grad` of the "
        "model's fermion term (the solver's custom VJP, then the lift to the algebra); hand = `qcd_bench.hand_force`, "
        "`F = -(s/2) Pi(U_mu sum_s X(x+mu) [(1-gamma_mu) Y(x)]^dag - sum_s X(x) [(1+gamma_mu) Y(x+mu)]^dag U_mu^dag)`, "
        "`Y = D X`, after the same CG solve. Given X: the force part alone (autodiff: `jax.grad` of "
        "`-X . M^dag M(U) X` through the lift, what the custom rule does after the solve). Checked against autodiff "
        "at one heat-bath source before timing (last column). Target: autodiff / hand <= 1.5x.",
        "",
        *qb.forces_lines(results["forces"]["result"]),
    ]
    write(out, lines, QCD_BEGIN, QCD_END, "Dynamical fermions (QCD) (`scripts/bench.py --qcd`)")
    return 0


def guard_section(repeats: int) -> list[str]:
    """In-loop guard cost on phi4 64x64 x 128 chains, preflight time per model, probe cost."""
    U, shape, eps = targets()["phi4 64x64"]
    chains, n_traj = 128, 1000
    variants = {"off": ("off", "trajectory"), "trajectory": ("reject", "trajectory"), "step": ("reject", "step")}
    runs = {name: ours_runner(U, shape, eps, chains, n_traj, g, check, chunk=100)
            for name, (g, check) in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(best_of(run, 1))
    t = {k: np.asarray(v) for k, v in times.items()}
    traj = t["trajectory"] / t["off"]
    step = t["step"] / t["off"]
    lines = [
        f"Command: `python scripts/bench.py --guard` ({time.strftime('%Y-%m-%d')}). {versions()}.",
        "",
        f"In-loop guard on phi4 64x64, {chains} chains, leapfrog L = {L}: one `hmc.sample` call of {n_traj} "
        f"trajectories in chunks of 100 ({np.median(t['off']):.1f} s unguarded), {repeats} interleaved repeats, "
        "guarded / unguarded (the guarded call also runs preflight on the 128 initial states):",
        "",
        f"- `guard_check=\"trajectory\"` (default: end-of-trajectory check, replay of tripped trajectories): "
        f"median {np.median(traj):.3f} (min {traj.min():.3f}, max {traj.max():.3f})",
        f"- `guard_check=\"step\"` (isfinite(sum(g)) at every gradient, first failing position carried): "
        f"median {np.median(step):.3f} (min {step.min():.3f}, max {step.max():.3f})",
        "",
        "| model | preflight, first call (s) | preflight, again (s) |",
        "|---|---|---|",
    ]
    models = {
        "gaussian (dim 100)": physics_models.gaussian(dim=100, condition_number=10.0, correlation=0.2),
        "harmonic_oscillator (64 sites)": physics_models.harmonic_oscillator(n_sites=64),
        "phi4 (32x32)": physics_models.phi4(shape=(32, 32), m2=-1.0, lam=0.5),
    }
    for name, pot in models.items():
        q = pot.init(jax.random.key(0))
        t0 = time.perf_counter()
        report = hmc.guard.preflight(pot, q)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        hmc.guard.preflight(pot, q)
        again = time.perf_counter() - t0
        assert report.ok, name
        lines.append(f"| {name} | {first:.2f} | {again:.3f} |")
    pot = physics_models.phi4(shape=(32, 32), m2=-1.0, lam=0.5)
    kw = dict(num_chains=64, num_warmup=500, num_samples=3000, chunk_size=100, progress=False)
    first = hmc.sample(pot, seed=0, **kw)
    again = hmc.sample(pot, seed=1, **kw)
    lines += [
        "",
        "Host-side guard work between chunks (element probe: all chains computed, 4 reported per chunk in "
        "rotation; attribution of trips) on a "
        "phi4 32x32 run, 64 chains, 3500 iterations, chunks of 100: "
        f"{first.timing['guard_host_seconds']:.2f} s of {first.timing['total_seconds']:.1f} s "
        f"({100 * first.timing['guard_host_seconds'] / first.timing['total_seconds']:.1f} %) in the first call "
        f"(compilation included), {again.timing['guard_host_seconds']:.2f} s of {again.timing['total_seconds']:.1f} s "
        f"({100 * again.timing['guard_host_seconds'] / again.timing['total_seconds']:.1f} %) in a second call.",
    ]
    for line in lines:
        print(line)
    return lines


MARK_BEGIN = "<!-- bench.py:begin -->"
MARK_END = "<!-- bench.py:end -->"
GUARD_BEGIN = "<!-- bench.py --guard:begin -->"
GUARD_END = "<!-- bench.py --guard:end -->"


SCALING_BEGIN = "<!-- bench.py --scaling:begin -->"
SCALING_END = "<!-- bench.py --scaling:end -->"
DEFAULTS_BEGIN = "<!-- bench.py --defaults:begin -->"
DEFAULTS_END = "<!-- bench.py --defaults:end -->"
EFFICIENCY_BEGIN = "<!-- bench.py --efficiency:begin -->"
EFFICIENCY_END = "<!-- bench.py --efficiency:end -->"


MEMORY_BEGIN = "<!-- bench.py --memory:begin -->"
MEMORY_END = "<!-- bench.py --memory:end -->"
MEMORY_TRAJECTORIES = 200


def memory_worker(sampler: str, target: str, chains: str) -> None:
    """One sampler, one run of MEMORY_TRAJECTORIES trajectories in this fresh process;
    prints the peak RSS before and after the run (MiB)."""
    U, shape, eps = targets()[target]
    n = int(chains)
    if sampler == "blackjax":
        import blackjax  # noqa: F401  (imported before the baseline, like ours)
    if sampler == "numpyro":
        import numpyro  # noqa: F401
    jax.block_until_ready(initial(shape, n))
    before = _peak_rss_mib()
    if sampler == "ours":
        run = ours_runner(U, shape, eps, n, MEMORY_TRAJECTORIES, "reject")
    elif sampler == "blackjax":
        run = blackjax_runner(U, shape, eps, n, MEMORY_TRAJECTORIES)
    else:
        run = numpyro_runners(U, shape, eps, n, MEMORY_TRAJECTORIES)[0]
    jax.block_until_ready(run())
    print(f"{before:.1f} {_peak_rss_mib():.1f}")


def memory_section() -> list[str]:
    """Peak resident memory of the same run (compile + MEMORY_TRAJECTORIES trajectories,
    scalar statistics kept) in a fresh process per sampler."""
    import subprocess

    lines = [
        f"Command: `python scripts/bench.py --memory` ({time.strftime('%Y-%m-%d')}). {versions()}.",
        "",
        f"One process per sampler and configuration: import, build the initial states, then compile and run "
        f"{MEMORY_TRAJECTORIES} trajectories (leapfrog, L = {L}, fixed step, unit mass, float32, guard on for "
        "this package; every sampler keeps only per-trajectory scalars). Peak RSS is the process high-water "
        "mark; *run* is its growth over the baseline after imports and initial states.",
        "",
        "| target | chains | ours peak / run (MiB) | blackjax peak / run (MiB) | numpyro peak / run (MiB) |",
        "|---|---|---|---|---|",
    ]
    for target, chains in (("gaussian 100-d", 1), ("phi4 64x64", 16), ("phi4 64x64", 256)):
        cells = []
        for sampler in ("ours", "blackjax", "numpyro"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-worker", sampler, target, str(chains)],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            before, peak = float(out[-2]), float(out[-1])
            cells.append(f"{peak:.0f} / {peak - before:.0f}")
        lines.append(f"| {target} | {chains} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _phi4(side: int) -> tuple[Callable, tuple[int, int]]:
    pot = physics_models.phi4(shape=(side, side), m2=-1.0, lam=0.5)
    return (lambda x: pot.energy({"phi": x})), (side, side)


def _scaling_point(side: int, chains: int, repeats: int, budget: float) -> dict[str, float]:
    """Steady-state time per trajectory of ``hmc.sample`` (guard on) against the limit,
    paired within repeats; the first call's extra time (compilation, preflight)."""
    U, shape = _phi4(side)
    probe = limit_runner(U, shape, chains, 20)
    per_grad = best_of(probe, 2) / 20
    n_traj = int(np.clip(budget / (per_grad * L), 5, 1000))
    limit = limit_runner(U, shape, chains, n_traj * L)
    t0 = time.perf_counter()
    one = ours_runner(U, shape, 0.05, chains, n_traj, "reject")  # includes the first (compiling) call
    first_call = time.perf_counter() - t0
    three = ours_runner(U, shape, 0.05, chains, 3 * n_traj, "reject", chunk=n_traj)
    ratios, steady = [], []
    for _ in range(repeats):
        t_limit = best_of(limit, 1)
        t1, t3 = best_of(one, 1), best_of(three, 1)
        steady.append((t3 - t1) / 2)
        ratios.append(steady[-1] / t_limit)
    per_traj = float(np.median(steady)) / n_traj
    return dict(ratio=float(np.median(ratios)), traj_per_s=chains / per_traj, compile=first_call - float(np.median(steady)),
                rss=_peak_rss_mib(), state_kib=4 * side * side * 3 / 1024)


def scaling_section(repeats: int, budget: float) -> list[str]:
    lines = [f"Command: `python scripts/bench.py --scaling` ({time.strftime('%Y-%m-%d')}). {versions()}. "
             f"One device, {jax.process_count()} process (the multi-device and multi-process paths are exercised "
             "by tests/test_devices.py on 4 forced CPU devices and 2 local processes; no timing of them here).",
             "",
             "phi4 2D (m2 = -1, lam = 0.5), leapfrog L = 10, fixed step size, float32, guard on "
             "(end-of-trajectory check); steady state = extra time of a 3x longer `hmc.sample` call; "
             f"medians over {repeats} paired repeats. First call = the extra wall time of the first call "
             "(tracing, XLA compilation, preflight). Peak RSS is the process high-water mark after the point "
             "(cumulative, so read its growth).",
             "",
             "| lattice | chains | trajectories x chains / s | vs gradient limit | first call extra (s) | "
             "state per chain (KiB) | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|"]
    points = [(32, 1), (32, 16), (32, 256), (32, 1024), (16, 16), (64, 16), (128, 16), (256, 16)]
    for side, chains in points:
        m = _scaling_point(side, chains, repeats, budget)
        row = (f"| {side}x{side} | {chains} | {m['traj_per_s']:.0f} | {m['ratio']:.2f}x | {m['compile']:.2f} | "
               f"{m['state_kib']:.0f} | {m['rss']:.0f} |")
        print(row, flush=True)
        lines.append(row)
    # float64 / float32: the same run in both precisions, paired (x64 on for both)
    jax.config.update("jax_enable_x64", True)
    U, shape = _phi4(64)
    pot = hmc.Potential(terms={"U": lambda q: U(q["q"])}, init=lambda key: {"q": jnp.zeros(shape)})

    def runner(dtype: str) -> Callable[[], object]:
        init = {"q": initial(shape, 16).astype(dtype)}

        def run() -> object:
            return hmc.sample(pot, seed=0, num_chains=16, num_warmup=0, num_samples=40, step_size=0.05,
                              num_steps=L, integrator="leapfrog", mass_matrix="identity", record=[],
                              chunk_size=40, init_positions=init, precision=dtype, progress=False).stats["lp"]

        run()
        return run

    r32, r64 = runner("float32"), runner("float64")
    ratio = float(np.median([best_of(r64, 1) / best_of(r32, 1) for _ in range(max(repeats, 3))]))
    lines += ["", f"float64 / float32 time per call (phi4 64x64, 16 chains, 40 trajectories, x64 on for both): "
                  f"**{ratio:.2f}x**."]
    print(lines[-1])
    return lines


TIMESCALES_BEGIN, TIMESCALES_END = "<!-- bench.py --timescales:begin -->", "<!-- bench.py --timescales:end -->"


def thermal_links(pot, seed: int, chains: int = 8, draws: int = 4) -> np.ndarray:
    """Configurations of the model's own distribution: ``chains x draws`` link fields from a
    short nested run (``(n, 2, L, L)``)."""
    r = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=80, num_samples=draws, thin=5,
                   precision="float64", mass_matrix="identity", trajectory_length=1.0, progress=False, record=None,
                   timescales=[{"terms": ["fermion"], "steps": 1}, {"terms": ["gauge"], "steps": 4}])
    return np.asarray(r.draws["theta"]).reshape(-1, *np.asarray(r.draws["theta"]).shape[2:])


def delta_energy_scan(pot, thetas: np.ndarray, levels: list | None, counts, seed: int = 7) -> list[tuple]:
    """``[(n, acceptance, <dH>, seconds per trajectory)]``: one trajectory of length 1 in ``n``
    2MN steps from each configuration, with fresh auxiliary fields and momentum, flat
    (``levels=None``: every term at every sub-step) or nested (``levels``, a ``timescales``
    list, outermost first). The acceptance is ``<min(1, exp(-dH))>``; the time is that of
    the compiled, vmapped batch."""
    integ = hmc.integrators

    def one(theta, key, eps, n):
        k_aux, k_p = jax.random.split(key)
        fields = pot.refresh(k_aux, {"theta": theta})

        def part(names):
            return lambda q: sum(pot.terms[t]({"theta": q["theta"], **fields}) for t in names)

        q, p = {"theta": theta}, {"theta": jax.random.normal(k_p, theta.shape, theta.dtype)}
        if levels is None:
            total = part(list(pot.terms))
            u0, g0 = jax.value_and_grad(total)(q)
            end, _, u1 = integ.integrate_to_energy("minimum_norm", total, lambda p: p, integ.IntegratorState(q, p, g0),
                                                   eps, n, guard=False)
        else:
            split = integ.Split(tuple(part(level["terms"]) for level in levels),
                                tuple(level["steps"] for level in levels),
                                tuple(level.get("integrator") for level in levels))
            u0, g0 = split.value_and_grads(q)
            end, _, u1 = integ.integrate_to_energy("minimum_norm", None, lambda p: p, integ.IntegratorState(q, p, g0),
                                                   eps, n, guard=False, split=split)
        return u1 - u0 + 0.5 * jnp.sum(end.momentum["theta"] ** 2) - 0.5 * jnp.sum(p["theta"] ** 2)

    batch = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))
    keys = jax.random.split(jax.random.key(seed), len(thetas))
    rows = []
    for n in counts:
        args = (jnp.asarray(thetas), keys, jnp.asarray(1.0 / n, thetas.dtype), jnp.asarray(n))
        batch(*args).block_until_ready()
        t0 = time.perf_counter()
        dh = np.asarray(batch(*args))
        seconds = (time.perf_counter() - t0) / len(thetas)
        acc = float(np.mean(np.minimum(1.0, np.exp(-np.where(np.isfinite(dh), dh, np.inf)))))
        rows.append((n, acc, float(np.mean(dh)), seconds))
        print(f"  levels={levels} n={n}: acceptance {acc:.3f} <dH> {np.mean(dh):.3g} {seconds * 1e3:.1f} ms", flush=True)
        if acc > 0.97:
            break
    return rows


def production(pot, extra: dict, chains: int, warmup: int, samples: int, chunk: int = 50, seed: int = 0) -> dict:
    """One sampling run; seconds per trajectory from the sampling chunks after the first
    (which carries the compilation), ESS of the plaquette over the draws."""
    records = []
    r = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=samples, precision="float64",
                   mass_matrix="identity", integrator="minimum_norm", progress=False, chunk_size=chunk,
                   on_chunk=lambda end: records.append(end.record), **extra)
    sampling = [rec for rec in records if rec["phase"] == "sampling"][1:]
    per_traj = sum(rec["seconds"] for rec in sampling) / sum(rec["trajectories"] for rec in sampling)
    ess = float(np.min(r.summary().observables["plaquette"].ess_bulk))
    # each chain's own ESS, summed: the mixing within a topological sector, blind to the
    # differences between the sectors the chains sit in (which dominate the pooled ESS)
    plaquette = np.asarray(r.draws["plaquette"], np.float64)
    within = float(sum(hmc.diagnostics.ess(plaquette[c:c + 1]) for c in range(chains)))
    steps = float(np.mean(r.stats["n_steps"]))
    light, heavy = solves_per_step(extra.get("timescales"))
    return dict(acceptance=float(np.mean(r.stats["acceptance_rate"])), step=float(np.mean(r.step_size)),
                light=steps * light, heavy=steps * heavy, per_traj=per_traj, per_ess=per_traj * chains * samples / ess,
                ess=ess, light_per_ess=steps * light * chains * samples / ess, within=within,
                per_within=per_traj * chains * samples / within)


def timescale_schemes(inner: int, hasenbusch_masses, outer: str = "minimum_norm",
                      middle: int = 1) -> list[tuple[str, dict, list | None]]:
    """``[(name, model keywords, timescales)]``: flat 2MN, nested 2MN (fermion outer, gauge
    inner) and the Hasenbusch split on three levels (ratio outer, heavy x ``middle``, gauge
    inner) at each of ``hasenbusch_masses``. ``outer``: the outermost level's integrator in
    the nested schemes (anything but 2MN adds a flat row with that integrator, the time ratios
    staying against flat 2MN)."""
    head, tag = {"terms": ["fermion"], "steps": 1}, ""
    schemes = [("flat 2MN", {}, None)]
    if outer != "minimum_norm":
        head, tag = dict(head, integrator=outer), f" ({outer} outside)"
        schemes.append((f"flat {outer}", {}, [{"terms": ["gauge", "fermion"], "steps": 1, "integrator": outer}]))
    schemes.append((f"nested 2MN, gauge x {inner}{tag}", {}, [head, {"terms": ["gauge"], "steps": inner}]))
    for m_h in hasenbusch_masses:
        schemes.append((f"Hasenbusch m_h = {m_h:g}: ratio / heavy x {middle} / gauge x {inner}{tag}",
                        {"hasenbusch_mass": m_h},
                        [dict(head, terms=["fermion_ratio"]), {"terms": ["fermion_heavy"], "steps": middle},
                         {"terms": ["gauge"], "steps": inner}]))
    return schemes


def solves_per_step(timescales: list | None) -> tuple[int, int]:
    """Fermion forces per 2MN step: ``(light, heavy)``, light those of the light-mass operator
    (``fermion`` or ``fermion_ratio``), heavy those of ``fermion_heavy`` (Hasenbusch)."""
    if not timescales:
        return hmc.integrators.gradient_evaluations_per_step("minimum_norm"), 0
    steps = tuple(level["steps"] for level in timescales)
    tables = tuple(level.get("integrator") or "minimum_norm" for level in timescales)
    counts = hmc.integrators.evaluations_per_step("minimum_norm", steps, tables)
    heavy = sum(c for c, level in zip(counts, timescales) if "fermion_heavy" in level["terms"])
    light = sum(c for c, level in zip(counts, timescales) if {"fermion", "fermion_ratio"} & set(level["terms"]))
    return light, heavy


def scan_table(size: int, betas, mass: float, schemes, target: float,
               thermal_chains: int = 8) -> tuple[list[str], dict]:
    """The step-count scan at equal acceptance: table rows and each scheme's ``n`` per beta,
    from ``4 * thermal_chains`` configurations."""
    rows, chosen = [], {}
    for beta in betas:
        thetas = thermal_links(physics_models.schwinger(L=size, beta=beta, mass=mass), seed=3, chains=thermal_chains)
        flat_cost = None
        for i, (name, model, levels) in enumerate(schemes):
            pot = physics_models.schwinger(L=size, beta=beta, mass=mass, **model)
            scan = delta_energy_scan(pot, thetas, levels, range(1, 16))
            ok = [row for row in scan if row[1] >= target]
            n, acc, dh, sec = ok[0] if ok else scan[-1]
            chosen[(beta, name)] = n
            light, heavy = (n * c for c in solves_per_step(levels))
            flat_cost = sec if i == 0 else flat_cost
            gain = "" if i == 0 else f"{flat_cost / sec:.2f}x"
            accs = " ".join(f"{a:.2f}" for _, a, _, _ in scan)
            rows.append(f"| {size}x{size} | {beta:g} | {name} | {n} | {acc:.3f} | {dh:.3f} | {light} | {heavy} | "
                        f"{sec * 1e3:.1f} | {gain} | {accs} |")
    return rows, chosen


def timescales_section(size: int, betas=(2.0, 8.0, 16.0), mass: float = 0.1, inner: int = 4,
                       target: float = 0.8, chains: int = 8, warmup: int = 100, samples: int = 400,
                       hasenbusch_masses=(0.4, 1.0), large=(16, 32)) -> list[str]:
    """The two-flavour Schwinger model with pseudofermions: flat 2MN (every force at every
    sub-step) against nested 2MN (fermion outer, gauge ``inner`` steps per outer drift) and
    the Hasenbusch split on three levels.

    1. At each ``beta`` on ``size x size`` and at the largest on each of the ``large`` sizes:
       trajectories of length 1 in ``n`` steps from configurations of the model's own
       distribution (a ``dH`` scan); each scheme's cheapest ``n`` with acceptance at least
       ``target`` (equal acceptance: all at the same threshold).
    2. At the largest ``beta`` on ``size x size``: sampling runs at those fixed step counts
       (cost per effective sample of the plaquette), and runs at the defaults (the step
       adapted to ``target`` under the stability cap)."""
    schemes = timescale_schemes(inner, hasenbusch_masses)
    scan_rows, chosen = scan_table(size, betas, mass, schemes, target)
    for big in large:
        if big != size:
            scan_rows += scan_table(big, betas[-1:], mass, schemes, target)[0]
    lines = [f"Command: `python scripts/bench.py --timescales --size {size}` ({time.strftime('%Y-%m-%d')}). {versions()}.",
             "",
             f"Schwinger model, two flavours (pseudofermions, CG to 1e-8; one solve per fermion force), m = {mass}, "
             f"float64, unit mass matrix, trajectory length 1, Omelyan 2MN at every level. Light forces are those of "
             f"the light-mass operator (`fermion`, or Hasenbusch's `fermion_ratio`); heavy ones those of "
             f"`fermion_heavy` (mass m_h, a solve that converges in fewer iterations).",
             "",
             f"**Step counts at equal acceptance.** Trajectories from configurations of the model's own "
             f"distribution (a short nested run), with fresh momenta and pseudofermion fields; each scheme at "
             f"its cheapest step count `n` with acceptance >= {target}; the time is per trajectory, vmapped over "
             "32 configurations.",
             "",
             "| lattice | beta | scheme | n | acceptance | <dH> | light forces / trajectory | heavy forces / trajectory "
             "| ms / trajectory | time vs flat | acceptance at n = 1, 2, ... |",
             "|---|---|---|---|---|---|---|---|---|---|---|"] + scan_rows
    return lines + production_table(size, betas[-1], mass, schemes, chosen, chains, warmup, samples)


def production_table(size, beta, mass, schemes, chosen, chains, warmup, samples, seed: int = 0,
                     modes=(True, False), observables: tuple[str, ...] | None = None) -> list[str]:
    """Sampling runs of every scheme: at the scan's fixed step counts (``True`` in ``modes``)
    and at the defaults (``False``). ``observables``: measure only these (the condensate and
    the pion correlator cost three solves per draw, the same for every scheme)."""
    runs = {}
    for fixed in modes:
        for name, model, levels in schemes:
            pot = physics_models.schwinger(L=size, beta=beta, mass=mass, **model)
            if observables is not None:
                pot = dataclasses.replace(pot, observables={k: pot.observables[k] for k in observables})
            extra = {} if levels is None else {"timescales": levels}
            if fixed:
                n = chosen[(beta, name)]
                label, extra = f"{name}, n = {n} (scan)", dict(extra, step_size=1.0 / n, num_steps=n)
            else:
                label, extra = f"{name}, defaults (step adapted)", dict(extra, trajectory_length=1.0)
            runs[label] = production(pot, extra, chains, warmup, samples, seed=seed)
            print(label, runs[label], flush=True)
    return production_lines(runs, len(schemes), size, beta, chains, warmup, samples, seed)


def production_lines(runs: dict, n_schemes: int, size, beta, chains, warmup, samples, seed: int = 0) -> list[str]:
    """The table of :func:`production_table` from its runs (the flat scheme first in each
    group of ``n_schemes``)."""
    lines = ["", f"**Cost per effective sample at beta = {beta:g}, {size}x{size}.** {chains} chains x ({warmup} warmup + "
             f"{samples} draws), seed {seed}; ESS of the plaquette (bulk, the smallest over chains pooled); seconds per "
             "trajectory from the sampling chunks after the first (which carries the compilation). Rows `(scan)`: the "
             "scan's fixed step counts; rows `defaults`: what a user gets (step adapted to acceptance 0.8 under the "
             "stability cap, trajectory length 1). ESS within chains: each chain's own ESS, summed (blind to the differences "
             "between the topological sectors the chains sit in). The ratios are flat's seconds per ESS over the "
             "scheme's (above 1: the scheme is cheaper).",
             "",
             "| run | acceptance | step | light forces / trajectory | heavy forces / trajectory | ms / trajectory "
             "| ESS | light forces / ESS | s / ESS | flat / this | ESS within chains | s / ESS within "
             "| flat / this, within |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = list(runs)
    for i, name in enumerate(names):
        r, flat = runs[name], runs[names[i - i % n_schemes]]
        gain = "" if r is flat else f"{flat['per_ess'] / r['per_ess']:.2f}x"
        gain_within = "" if r is flat else f"{flat['per_within'] / r['per_within']:.2f}x"
        lines.append(f"| {name} | {r['acceptance']:.3f} | {r['step']:.3f} | {r['light']:.1f} | {r['heavy']:.1f} | "
                     f"{r['per_traj'] * 1e3:.1f} | {r['ess']:.0f} | {r['light_per_ess']:.1f} | {r['per_ess']:.3f} | "
                     f"{gain} | {r['within']:.0f} | {r['per_within']:.3f} | {gain_within} |")
    return lines


def replace_rows(path: str, rows: list[str], begin: str, end: str) -> None:
    """Put each of ``rows`` in place of the row of the same case (its first cell) in the
    table between ``begin`` and ``end`` of ``path``, and say below the table which rows
    were rerun when."""
    head, rest = open(path).read().split(begin, 1)
    block, tail = rest.split(end, 1)
    lines = block.split("\n")
    for row in rows:
        name = row.split("|")[1].strip()
        at = [i for i, line in enumerate(lines) if line.startswith("|") and line.split("|")[1].strip() == name]
        if at:
            lines[at[0]] = row
        else:  # a new case: after the last row
            last = max(i for i, line in enumerate(lines) if line.startswith("|"))
            lines.insert(last + 1, row)
    names = ", ".join(row.split("|")[1].strip() for row in rows)
    note = f"Rerun on {time.strftime('%Y-%m-%d')} with `--only ... --update`: {names}."
    lines[len(lines) - 1 if lines[-1] == "" else len(lines):] = ["", note, ""]
    with open(path, "w") as fh:
        fh.write(head + begin + "\n".join(lines) + end + tail)
    print(f"updated {names} in {path}")


def write(path: str, lines: list[str], begin: str, end: str, title: str) -> None:
    """Replace the block between ``begin`` and ``end`` in ``path`` (append it if absent)."""
    block = "\n".join([begin, *lines, end])
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head + block + tail
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
