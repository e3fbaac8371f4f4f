"""Wilson fermions (physics_models.qcd): pseudofermions against the exact determinant on tiny
lattices, heavy quarks against the quenched exact values, and the U(1) case against the
Schwinger model. Prints a markdown table for VALIDATION.md ("Dynamical fermions").

    python scripts/qcd_validate.py                  # every case (about 30 min on 2 cores)
    python scripts/qcd_validate.py --only pseudo    # pseudofermion vs exact only
    python scripts/qcd_validate.py --only pseudo --case "SU(3) 6x6"   # one case (group and shape)

Each pseudofermion/exact row: two flavours at m = 0.1 (even-odd pseudofermions, the
determinant by dense elimination), 4 chains x 400 draws after 150 warmup, trajectory
length 1, different seeds;
z is the difference over the combined Monte Carlo standard error (|z| < 4.5 passes); the
quenched plaquette at the same beta shows that the fermions move it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hmc  # noqa: E402
import physics_models as pm  # noqa: E402

CASES = [("SU(2)", (2, 2, 2, 2), 1.5), ("SU(2)", (2, 2, 2, 4), 1.5), ("SU(3)", (2, 2, 2, 2), 3.0),
         ("SU(3)", (2, 2, 2, 4), 3.0), ("SU(2)", (4, 4), 1.5), ("SU(3)", (6, 6), 3.0)]


def sample(pot, seed, chains=4, warmup=150, draws=400):
    t0 = time.perf_counter()
    result = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=draws, progress=False,
                        precision="float64", trajectory_length=1.0)
    return result.summary(), time.perf_counter() - t0


def row(summary, name):
    r = summary.observables[name]
    return r.mean, r.mcse


def case_name(group: str, shape: tuple[int, ...]) -> str:
    return f"{group} {'x'.join(map(str, shape))}"


def pseudo_vs_exact(only: str | None = None) -> list[str]:
    lines = ["| group | shape | beta | observable | pseudofermion | exact det | z | quenched plaquette | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    cases = [c for c in CASES if only is None or case_name(c[0], c[1]) == only]
    if not cases:
        raise SystemExit(f"--case {only!r}: not one of {[case_name(g, s) for g, s, _ in CASES]}")
    for group, shape, beta in cases:
        common = dict(group=group, shape=shape, beta=beta, mass=0.1, measure=("condensate",), n_noise=2)
        pseudo, t1 = sample(pm.qcd(fermions="pseudofermion", **common), 1)
        exact, t2 = sample(pm.qcd(fermions="exact", **common), 2)
        quenched, _ = sample(pm.qcd(fermions="none", group=group, shape=shape, beta=beta), 3)
        for name in ("plaquette", "condensate"):
            (a, ea), (b, eb) = row(pseudo, name), row(exact, name)
            q = "%.5f(%.0f)" % (row(quenched, "plaquette")[0], 1e5 * row(quenched, "plaquette")[1]) \
                if name == "plaquette" else ""
            lines.append(f"| {group} | {'x'.join(map(str, shape))} | {beta} | {name} | {a:.5f}({1e5 * ea:.0f}) | "
                         f"{b:.5f}({1e5 * eb:.0f}) | {(a - b) / np.hypot(ea, eb):+.2f} | {q} | {t1 + t2:.0f} |")
        print("\n".join(lines[-2:]), flush=True)
    return lines


def heavy_and_u1() -> list[str]:
    from scipy.special import iv

    lines = ["| case | estimate | reference | z |", "|---|---|---|---|"]
    exact2d = pm.qcd(group="SU(2)", shape=(4, 4), beta=2.0, fermions="none").exact["plaquette"]
    s, _ = sample(pm.qcd(group="SU(2)", shape=(4, 4), beta=2.0, mass=20.0, measure=()), 4, chains=8, draws=800)
    m, e = row(s, "plaquette")
    lines.append(f"| SU(2) 4x4 beta 2, m = 20: plaquette | {m:.5f}({1e5 * e:.0f}) | {exact2d:.5f} (torus, exact) | "
                 f"{(m - exact2d) / e:+.2f} |")
    s, _ = sample(pm.qcd(group="SU(2)", shape=(4, 4, 4, 4), beta=0.5, mass=20.0, measure=()), 5, draws=300)
    m, e = row(s, "plaquette")
    strong = iv(2, 0.5) / iv(1, 0.5)
    lines.append(f"| SU(2) 4^4 beta 0.5, m = 20: plaquette | {m:.5f}({1e5 * e:.0f}) | {strong:.5f} (strong coupling) | "
                 f"{(m - strong) / e:+.2f} |")
    ours, _ = sample(pm.qcd(group="U(1)", shape=(6, 6), beta=2.0, mass=0.1, measure=("condensate",)), 6, chains=8,
                     draws=500)
    theirs, _ = sample(pm.schwinger(L=6, beta=2.0, mass=0.1), 7, chains=8, draws=500)
    for name in ("plaquette", "condensate"):
        (a, ea), (b, eb) = row(ours, name), row(theirs, name)
        lines.append(f"| qcd U(1) 6x6 vs schwinger L=6 (beta 2, m 0.1): {name} | {a:.5f}({1e5 * ea:.0f}) | "
                     f"{b:.5f}({1e5 * eb:.0f}) | {(a - b) / np.hypot(ea, eb):+.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["pseudo", "heavy"], default=None)
    parser.add_argument("--case", default=None, help='one pseudofermion/exact case, e.g. "SU(3) 2x2x2x4"')
    args = parser.parse_args()
    if args.only in (None, "pseudo"):
        print("\n".join(pseudo_vs_exact(args.case)))
    if args.only in (None, "heavy"):
        print("\n".join(heavy_and_u1()))


if __name__ == "__main__":
    main()
