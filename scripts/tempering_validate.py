"""Replica exchange against plain HMC at equal gradient cost, on targets where plain HMC
stays in one mode. Writes a section of VALIDATION.md (the tempered estimates against the
exact values, plain HMC as the contrast) and one of BENCHMARKS.md (the cost per effective
sample of each row's slowest observable).

    python scripts/tempering_validate.py            # every row
    python scripts/tempering_validate.py --quick    # shorter runs, printed only
    python scripts/tempering_validate.py --auto     # beta_min and replicas "auto" against the hand-set ladders
    python scripts/tempering_validate.py --schwinger  # the gauge term tempered under dynamical fermions

Equal cost: a tempered transition moves all R replicas, so plain HMC gets R times the
transitions (``thin = R``: the same number of draws, each R trajectories apart). The
z-scores bound |estimate - exact| by the Monte Carlo standard error; |z| < 4 passes.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hmc  # noqa: E402
import physics_models  # noqa: E402
from hmc import diagnostics  # noqa: E402

VALIDATION = ("<!-- tempering_validate.py:begin -->", "<!-- tempering_validate.py:end -->")
BENCH = ("<!-- bench.py --tempering:begin -->", "<!-- bench.py --tempering:end -->")


def sign_changes(x: np.ndarray) -> float:
    """Sign changes per chain of a scalar trace ``(chains, draws)`` (mode switches)."""
    return float(np.mean(np.sum(np.diff(np.sign(x), axis=1) != 0, axis=1)))


def tau_int(x: np.ndarray) -> float:
    """Integrated autocorrelation time in draws: draws per effective sample."""
    return float(x.size / max(float(diagnostics.ess(np.asarray(x, np.float64))), 1e-12))


def pair(pot, tempering: dict, *, chains: int, warmup: int, samples: int, seed: int, **kw) -> tuple:
    """A tempered run and a plain one with R times the transitions; their seconds."""
    R = tempering["replicas"]
    t0 = time.perf_counter()
    tempered = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=samples, progress=False,
                          tempering=tempering, **kw)
    t1 = time.perf_counter()
    plain = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=samples, thin=R,
                       progress=False, **kw)
    t2 = time.perf_counter()
    return tempered, plain, t1 - t0, t2 - t1


def gradients(result) -> int:
    return int(np.sum(result.stats["n_steps"])) * (result.settings["thin"])


def z_row(name: str, observable: str, x: np.ndarray, exact: float) -> tuple:
    x = np.asarray(x, np.float64)
    mean, err = float(np.mean(x)), float(diagnostics.mcse(x))
    return name, observable, mean, err, exact, (mean - exact) / err, float(diagnostics.rhat(x))


def classical(quick: bool) -> tuple[list, list]:
    h = 12.0
    pot = physics_models.classical_double_well(height=h, dim=1)
    exact = physics_models.exact.classical_double_well_moments(h)
    tempered, plain, ts, tp = pair(pot, {"replicas": 6, "beta_min": 0.05}, chains=8, warmup=300,
                                   samples=500 if quick else 2000, seed=1, trajectory_length=1.0)
    rows, costs = [], []
    label = f"classical_double_well(height={h:g})"
    for run, kind in ((tempered, "tempered, 6 replicas"), (plain, "plain HMC, thin 6")):
        x = np.asarray(run.draws["x"])[..., 0]
        for obs, values, ex in (("x", x, 0.0), ("x2", x ** 2, exact["x2"]), ("x4", x ** 4, exact["x4"])):
            rows.append((*z_row(label, obs, values, ex), kind, sign_changes(x)))
        costs.append((label, kind, "x", x, gradients(run), ts if run is tempered else tp, run.tempering))
    return rows, costs


def quantum(quick: bool) -> tuple[list, list]:
    n, a, eta = 100, 0.1, 1.7
    pot = physics_models.double_well(n_sites=n, a=a, eta=eta)
    tempered, plain, ts, tp = pair(pot, {"replicas": 16, "beta_min": 0.1}, chains=4, warmup=400,
                                   samples=400 if quick else 1500, seed=2)
    rows, costs = [], []
    label = f"double_well(n_sites={n}, a={a:g}, eta={eta:g})"
    for run, kind in ((tempered, "tempered, 16 replicas"), (plain, "plain HMC, thin 16")):
        mean_x = np.asarray(run.draws["mean_x"])
        rows.append((*z_row(label, "mean_x", mean_x, 0.0), kind, sign_changes(mean_x)))
        rows.append((*z_row(label, "x2", np.asarray(run.draws["x2"]), float(pot.exact["x2"])), kind,
                     sign_changes(mean_x)))
        costs.append((label, kind, "mean_x", mean_x, gradients(run), ts if run is tempered else tp, run.tempering))
    return rows, costs


def u1(quick: bool) -> tuple[list, list]:
    L, beta = 8, 8.0
    pot = physics_models.u1_gauge(L=L, beta=beta)
    # link angles are periodic: the mass matrix stays the identity (a variance of raw angles,
    # which wind freely in the hot replicas, is no metric)
    tempered, plain, ts, tp = pair(pot, {"replicas": 8, "beta_min": 0.2}, chains=4, warmup=300,
                                   samples=400 if quick else 1500, seed=3, trajectory_length=1.0,
                                   mass_matrix="identity")
    rows, costs = [], []
    label = f"u1_gauge(L={L}, beta={beta:g})"
    chi = float(pot.exact["topological_susceptibility"])
    for run, kind in ((tempered, "tempered, 8 replicas"), (plain, "plain HMC, thin 8")):
        q2 = np.asarray(run.draws["topological_charge"]) ** 2 / (L * L)
        rows.append((*z_row(label, "Q^2 / V (chi_t)", q2, chi), kind, tau_int(q2)))
        costs.append((label, kind, "Q^2", q2, gradients(run), ts if run is tempered else tp, run.tempering))
    return rows, costs


LJ13_MIN = -44.326801  # the Cambridge Cluster Database's global minimum


def lj(quick: bool) -> list[tuple]:
    """LJ13 at T = 0.05 from the lattice start: the fraction of draws whose L-BFGS quench
    reaches the global minimum (the icosahedron), tempered (the pair term only: the wall
    and the centre-of-mass tie stay at beta = 1) against plain HMC at equal cost."""
    T = 0.05
    pot = physics_models.lennard_jones(n_atoms=13, temperature=T)
    tempered, plain, ts, tp = pair(pot, {"replicas": 8, "beta_min": 0.1, "terms": ["pair"]}, chains=4,
                                   warmup=300, samples=100 if quick else 400, seed=4, trajectory_length=1.0)
    out = []
    for run, kind, seconds in ((tempered, "tempered, 8 replicas (pair term)", ts), (plain, "plain HMC, thin 8", tp)):
        r = np.asarray(run.draws["r"])
        picks = [(c, d) for c in range(r.shape[0]) for d in range(r.shape[1] // 2, r.shape[1], max(1, r.shape[1] // 40))]
        hits = [abs(physics_models.quench(r[c, d])[0] - LJ13_MIN) < 1e-3 for c, d in picks]
        per_chain = [np.mean([h for (c, _), h in zip(picks, hits) if c == k]) for k in range(r.shape[0])]
        out.append((f"lennard_jones(n_atoms=13, temperature={T:g})", kind, float(np.mean(hits)), per_chain, len(hits),
                    gradients(run), seconds))
    return out


AUTO = ("<!-- tempering_validate.py --auto:begin -->", "<!-- tempering_validate.py --auto:end -->")
SCHWINGER = ("<!-- tempering_validate.py --schwinger:begin -->", "<!-- tempering_validate.py --schwinger:end -->")


def schwinger_rows(samples: int) -> list[str]:
    """Two-flavour Schwinger model (pseudofermions) at beta 8 on 8x8: the gauge term
    tempered (every replica keeps the fermion determinant at full power) against plain HMC
    at the same sampling-phase cost (thin = R). Topology, not a distribution check: no
    exact <Q^2> is known here (the 4x4 agreement with the exact determinant is a test)."""
    L, beta, mass, R = 8, 8.0, 0.1, 6
    pot = physics_models.schwinger(L=L, beta=beta, mass=mass)
    kw = dict(seed=5, num_chains=4, num_warmup=300, num_samples=samples, trajectory_length=1.0,
              mass_matrix="identity", progress=False)
    lines = []
    for kind, extra in ((f"tempered gauge term, {R} replicas to beta_min 0.2",
                         dict(tempering={"replicas": R, "beta_min": 0.2, "terms": ["gauge"]})),
                        (f"plain HMC, thin {R}", dict(thin=R))):
        t0 = time.perf_counter()
        r = hmc.sample(pot, **kw, **extra)
        seconds = time.perf_counter() - t0
        q = np.asarray(r.draws["topological_charge"], np.float64)
        q2, plaq = q ** 2, np.asarray(r.draws["plaquette"], np.float64)
        changes = np.sum(np.abs(np.diff(np.round(q), axis=1)) > 0.5, axis=1)
        moved = bool(np.any(changes))
        ess = float(diagnostics.ess(q2)) if moved else float("nan")
        rep = r.tempering
        info = "" if rep is None else (f"swap acc. {min(rep['swap_acceptance']):.2f}-{max(rep['swap_acceptance']):.2f}, "
                                       f"round trips per chain {rep['round_trips']}")
        lines.append(f"| schwinger(L={L}, beta={beta:g}, mass={mass:g}) | {kind} | {np.mean(changes):.1f} | "
                     f"{q2.mean():.3g} +- {float(diagnostics.mcse(q2)) if moved else 0.0:.2g} | "
                     f"{(q2.size / ess) if moved else float('inf'):.3g} | {plaq.mean():.5f} +- {float(diagnostics.mcse(plaq)):.1g} | "
                     f"{hmc.kernels.tempering.pilot_gradients(r)} | {seconds:.0f} | {info} |")
        print(lines[-1], flush=True)
    return lines


def auto_cases() -> list[tuple]:
    """(label, potential, hand-set tempering, sample arguments, slowest observable and its
    values from a result, exact value) for the rows of :func:`auto_rows`."""
    dw = physics_models.classical_double_well(height=12.0, dim=1)
    qdw = physics_models.double_well(n_sites=100, a=0.1, eta=1.7)
    u1 = physics_models.u1_gauge(L=8, beta=8.0)
    chi = float(u1.exact["topological_susceptibility"])
    return [
        ("classical_double_well(height=12)", dw, {"replicas": 6, "beta_min": 0.05},
         dict(num_chains=8, num_warmup=300, trajectory_length=1.0), "x", lambda r: np.asarray(r.draws["x"])[..., 0], 0.0),
        ("double_well(n_sites=100, a=0.1, eta=1.7)", qdw, {"replicas": 16, "beta_min": 0.1},
         dict(num_chains=4, num_warmup=400), "mean_x", lambda r: np.asarray(r.draws["mean_x"]), 0.0),
        ("u1_gauge(L=8, beta=8)", u1, {"replicas": 8, "beta_min": 0.2},
         dict(num_chains=4, num_warmup=300, trajectory_length=1.0, mass_matrix="identity"), "Q^2 / V",
         lambda r: np.asarray(r.draws["topological_charge"]) ** 2 / 64.0, chi),
    ]


def auto_rows(samples: int, seeds: list[int]) -> list[tuple]:
    """``beta_min: "auto"`` (with ``replicas: "auto"``) against the hand-set ladder of the
    rows above, per seed: the chosen beta_min and replicas, the estimate's z, and gradients
    per effective sample of the slowest observable, the auto run's pilots included."""
    rows = []
    for label, pot, hand, kw, obs, values, exact in auto_cases():
        for seed in seeds:
            runs = {}
            for kind, tempering in (("hand-set", hand), ("auto", {"replicas": "auto", "beta_min": "auto"})):
                t0 = time.perf_counter()
                r = hmc.sample(pot, seed=seed, num_samples=samples, progress=False, tempering=tempering, **kw)
                runs[kind] = (r, time.perf_counter() - t0)
            for kind, (r, seconds) in runs.items():
                x = np.asarray(values(r), np.float64)
                mean, err = float(np.mean(x)), float(diagnostics.mcse(x))
                ess = float(diagnostics.ess(x))
                search = r.tempering.get("beta_min_search") or []
                pilots = r.tempering.get("pilot_gradients", 0)
                grads = hmc.kernels.tempering.pilot_gradients(r)
                rows.append((label, seed, kind, r.tempering["ladder"][-1], r.tempering["replicas"], obs, mean, err,
                             exact, (mean - exact) / err, ess, grads / max(ess, 1e-9), (grads + pilots) / max(ess, 1e-9),
                             seconds,
                             "; ".join(f"{t['beta_min']:.3g}: {t['tau']:.3g}" for t in search)))
                print(rows[-1], flush=True)
    return rows


def auto_section(rows: list[tuple], versions: str, samples: int) -> list[str]:
    lines = [
        f"Command: `python scripts/tempering_validate.py --auto` ({time.strftime('%Y-%m-%d')}); {versions}; float32; "
        f"{samples} draws per chain. `tempering: {{replicas: auto, beta_min: auto}}` against the hand-set ladder "
        "of the rows above, on the same seeds. The auto run's cost counts its pilots: per candidate beta_min, warmup "
        "and 200 draws of a replica at 1 and one at the candidate without swaps; then warmup and 200 draws of 8 "
        "swapping replicas whose barrier sets the replica count. 'search': each candidate beta_min with the "
        "tau_int of the hot replica's slowest observable there. Seconds: the whole call, compilation included on "
        "the first seed. z = (estimate - "
        "exact) / MCSE; pass at |z| < 4.",
        "",
        "| target | seed | ladder | beta_min | replicas | observable | estimate | MCSE | exact | z | pass | ESS | "
        "gradients / ESS | with the pilots | seconds | search (beta_min: tau_int) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, seed, kind, bmin, R, obs, mean, err, exact, z, ess, run_cost, cost, seconds, search) in rows:
        lines.append(f"| {label} | {seed} | {kind} | {bmin:.3g} | {R} | {obs} | {mean:.4g} | {err:.2g} | {exact:.5g} | "
                     f"{z:+.2f} | {'yes' if abs(z) < 4 else 'NO'} | {ess:.0f} | {run_cost:.3g} | {cost:.3g} | {seconds:.0f} | "
                     f"{search} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, printed only")
    parser.add_argument("--auto", action="store_true", help="beta_min and replicas 'auto' against the hand-set "
                        "ladders (its own VALIDATION.md section)")
    parser.add_argument("--schwinger", action="store_true", help="the Schwinger model with its gauge term tempered "
                        "against plain HMC (its own BENCHMARKS.md section)")
    args = parser.parse_args()
    versions = (f"jax {__import__('jax').__version__}, numpy {np.__version__}, {platform.machine()}, "
                f"{__import__('os').cpu_count()} CPU cores")
    if args.schwinger:
        samples = 200 if args.quick else 600
        lines = [f"Command: `python scripts/tempering_validate.py --schwinger` ({time.strftime('%Y-%m-%d')}); "
                 f"{versions}; float32; 4 chains, 300 warmup, {samples} draws. Two flavours of Wilson fermions "
                 "(pseudofermions, CG), the gauge action tempered and the fermion action at beta = 1 in every "
                 "replica, against plain HMC with R times the transitions per draw (as many trajectories in "
                 "sampling). Gradients count every trajectory, warmup included: the tempered warmup moves R replicas, "
                 "and its adapted step can differ. Q changes: draws at which the rounded "
                 "charge changes, per chain; tau_int of Q^2 in draws (infinite where Q never moved). No exact "
                 "<Q^2> is known here; the tempered scheme agrees with the exact determinant on 4x4 "
                 "(`tests/test_tempering.py`, slow tier).", "",
                 "| target | run | Q changes per chain | <Q^2> | tau_int(Q^2) | plaquette | gradients | seconds | "
                 "tempering |", "|---|---|---|---|---|---|---|---|---|", *schwinger_rows(samples)]
        print("\n".join(lines))
        if not args.quick:
            write(ROOT / "BENCHMARKS.md", lines, SCHWINGER, "Replica exchange under dynamical fermions "
                  "(`scripts/tempering_validate.py --schwinger`)")
        return
    if args.auto:
        samples = 300 if args.quick else 1000
        lines = auto_section(auto_rows(samples, [1] if args.quick else [1, 2]), versions, samples)
        print("\n".join(lines))
        if not args.quick:
            write(ROOT / "VALIDATION.md", lines, AUTO, "Replica exchange: beta_min and replicas 'auto' "
                  "(`scripts/tempering_validate.py --auto`)")
        return
    rows, costs = [], []
    for case in (classical, quantum, u1):
        r, c = case(args.quick)
        rows += r
        costs += c
        for row in r:
            print(row, flush=True)
    lj_rows = lj(args.quick)
    for row in lj_rows:
        print(row, flush=True)
    v_lines = [
        f"Command: `python scripts/tempering_validate.py` ({time.strftime('%Y-%m-%d')}); {versions}; float32. "
        "Each tempered run is paired with plain HMC at the same gradient cost (thin = R: each draw R "
        "trajectories apart). z = (estimate - exact) / MCSE; a tempered row passes at |z| < 4. The plain rows "
        "are the contrast: chains that never leave their modes disagree (R-hat far above 1), and the error bar "
        "of their pooled mean only says so because the chains started in different modes. "
        "'mode switches': sign changes of the mode coordinate per chain; for U(1), tau_int of Q^2 in draws.",
        "",
        "| target | observable | run | estimate | MCSE | exact | z | R-hat | pass | mode switches / tau_int |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, obs, mean, err, exact, z, rhat, kind, extra in rows:
        tempered = kind.startswith("tempered")
        verdict = ("yes" if abs(z) < 4 else "NO") if tempered else ("contrast" if abs(z) >= 4 else "contrast (passes)")
        v_lines.append(f"| {name} | {obs} | {kind} | {mean:.5g} | {err:.2g} | {exact:.6g} | {z:+.2f} | {rhat:.3f} | "
                       f"{verdict} | {extra:.3g} |")
    v_lines += ["", "LJ13 from the lattice start: the fraction of draws (second half of each chain) whose L-BFGS "
                "quench reaches the global minimum -44.326801, per chain and pooled (no exact value: the "
                "contrast is whether chains find the icosahedron at all).", "",
                "| target | run | quenched draws | at the global minimum | per chain | gradients |", "|---|---|---|---|---|---|"]
    for name, kind, frac, per_chain, n, grads, _ in lj_rows:
        v_lines.append(f"| {name} | {kind} | {n} | {frac:.2f} | {', '.join(f'{p:.2f}' for p in per_chain)} | "
                       f"{grads} |")
    b_lines = [
        f"Command: `python scripts/bench.py --tempering` (runs `scripts/tempering_validate.py`; "
        f"{time.strftime('%Y-%m-%d')}); {versions}; float32. The slowest observable of each target (the mode "
        "coordinate, or Q^2), tempered against plain HMC at equal gradient cost. Gradients count every "
        "replica's steps; seconds are whole runs (warmup and compilation included, the same for both). The plain "
        "runs' ESS is the multi-chain estimate for chains that switch modes rarely or never (about one effective "
        "sample per chain); what they deliver is less, so the ratios are lower bounds.",
        "",
        "| target | run | observable | ESS | gradients / ESS | ESS / s | tempering | cost per ESS vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (name, kind, obs, x, grads, seconds, rep) in enumerate(costs):
        ess = float(diagnostics.ess(np.asarray(x, np.float64)))
        info = "" if rep is None else (f"barrier {rep['barrier']:.2f}, swap acc. {min(rep['swap_acceptance']):.2f}-"
                                       f"{max(rep['swap_acceptance']):.2f}, round trips/transition "
                                       f"{rep['round_trip_rate']:.3g} (DEO {rep['predicted_round_trip_rate']:.3g})")
        gain = ""
        if rep is None:
            t_name, t_kind, t_obs, t_x, t_grads, _, _ = costs[i - 1]
            t_ess = float(diagnostics.ess(np.asarray(t_x, np.float64)))
            gain = f"tempered {(grads / max(ess, 1e-9)) / (t_grads / max(t_ess, 1e-9)):.2g}x cheaper"
        b_lines.append(f"| {name} | {kind} | {obs} | {ess:.0f} | {grads / max(ess, 1e-9):.3g} | "
                       f"{ess / seconds:.3g} | {info} | {gain} |")
    print("\n".join(v_lines + [""] + b_lines))
    if not args.quick:
        write(ROOT / "VALIDATION.md", v_lines, VALIDATION, "Replica exchange (`scripts/tempering_validate.py`)")
        write(ROOT / "BENCHMARKS.md", b_lines, BENCH, "Replica exchange (`scripts/bench.py --tempering`)")


def write(path: pathlib.Path, lines: list[str], marks: tuple[str, str], title: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = "\n".join([marks[0], *lines, marks[1]])
    if marks[0] in text and marks[1] in text:
        text = text[: text.index(marks[0])] + block + text[text.index(marks[1]) + len(marks[1]):]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
