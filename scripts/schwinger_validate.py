"""The two-flavour Schwinger model: pseudofermions against the exact determinant, and the
quenched plaquette against its Bessel sum. Writes a section of VALIDATION.md.

    python scripts/schwinger_validate.py                 # 4x4 and 6x6
    python scripts/schwinger_validate.py --sizes 4 6 8   # 8x8 too (slower)
    python scripts/schwinger_validate.py --hasenbusch 0.4  # Hasenbusch's split (three
                                                          # timescales) against the exact determinant

Each row: the same seed, chains and trajectory settings for both treatments of the
fermions; the difference of the two estimates over the combined Monte Carlo error is
the z-score (|z| < 4 passes).
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

BEGIN, END = "<!-- schwinger_validate.py:begin -->", "<!-- schwinger_validate.py:end -->"
HB_BEGIN, HB_END = "<!-- schwinger_validate.py --hasenbusch:begin -->", "<!-- schwinger_validate.py --hasenbusch:end -->"
THREE_LEVELS = [{"terms": ["fermion_ratio"], "steps": 1}, {"terms": ["fermion_heavy"], "steps": 1},
                {"terms": ["gauge"], "steps": 4}]
RUN = dict(seed=1, num_chains=8, num_warmup=200, precision="float64", mass_matrix="identity",
           trajectory_length=1.0, progress=False)


def _one(size: int, fermions: str, beta: float, mass: float, samples: int, hasenbusch: float | None = None) -> tuple:
    pot = physics_models.schwinger(L=size, beta=beta, mass=mass, fermions=fermions, hasenbusch_mass=hasenbusch)
    t0 = time.perf_counter()
    result = hmc.sample(pot, num_samples=samples, timescales=THREE_LEVELS if hasenbusch else None, **RUN)
    return result.summary(), float(np.mean(result.stats["acceptance_rate"])), time.perf_counter() - t0


def run(size: int, fermions: str, beta: float, mass: float, samples: int, hasenbusch: float | None = None) -> tuple:
    """``(summary, mean acceptance, seconds)`` of one run, in a fresh process (each run's
    compiled programs and memory are released with it; a stuck run can be told apart)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_one, size, fermions, beta, mass, samples, hasenbusch).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--mass", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--hasenbusch", type=float, default=None, metavar="M_H",
                        help="only Hasenbusch's split at heavy mass M_H (three timescales) against the exact "
                             "determinant, in a section of its own")
    parser.add_argument("--out", default=str(ROOT / "VALIDATION.md"))
    args = parser.parse_args()
    if args.hasenbusch is not None:
        write(args.out, hasenbusch_lines(args), HB_BEGIN, HB_END)
        return
    lines = [
        "## The Schwinger model: pseudofermions against the exact determinant",
        "",
        f"Command: `python scripts/schwinger_validate.py --sizes {' '.join(map(str, args.sizes))}` "
        f"({time.strftime('%Y-%m-%d')}); jax {__import__('jax').__version__}, {platform.machine()}, float64. "
        f"Two flavours of Wilson fermions, beta = {args.beta}, m = {args.mass}; 8 chains x {args.samples} draws "
        "after 200 warmup, 2MN, trajectory length 1, unit mass matrix. z: the difference of the two "
        "estimates over their combined MCSE (the quenched row: against the Bessel sum).",
        "",
        "| lattice | observable | pseudofermion | exact det | z | pass | acceptance (pf / exact) | seconds (pf / exact) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        s_pf, acc_pf, t_pf = run(size, "pseudofermion", args.beta, args.mass, args.samples)
        s_ex, acc_ex, t_ex = run(size, "exact", args.beta, args.mass, args.samples)
        for name in ("plaquette", "condensate"):
            a, b = s_pf.observables[name], s_ex.observables[name]
            z = (float(a.mean) - float(b.mean)) / np.hypot(float(a.mcse), float(b.mcse))
            lines.append(
                f"| {size}x{size} | {name} | {float(a.mean):.5f} +- {float(a.mcse):.5f} | {float(b.mean):.5f} +- "
                f"{float(b.mcse):.5f} | {z:+.2f} | {'yes' if abs(z) < 4 else 'NO'} | "
                f"{acc_pf:.3f} / {acc_ex:.3f} | "
                f"{t_pf:.0f} / {t_ex:.0f} |")
        # the pion correlator: every time slice t = 0 .. L/2 (C(t) = C(L - t)); the row shows the
        # middle slice and the largest |z| over the slices
        a, b = s_pf.observables["pion"], s_ex.observables["pion"]
        half = size // 2 + 1
        zs = (np.asarray(a.mean) - np.asarray(b.mean))[:half] / np.hypot(np.asarray(a.mcse), np.asarray(b.mcse))[:half]
        worst = int(np.argmax(np.abs(zs)))
        t = size // 2
        lines.append(
            f"| {size}x{size} | pion C(t), t = 0..{t} (shown: C({t})) | {float(a.mean[t]):.5f} +- {float(a.mcse[t]):.5f} | "
            f"{float(b.mean[t]):.5f} +- {float(b.mcse[t]):.5f} | max {zs[worst]:+.2f} (t = {worst}) | "
            f"{'yes' if np.all(np.abs(zs) < 4) else 'NO'} | | |")
        print("\n".join(lines[-3:]), flush=True)
    size = args.sizes[-1]
    s_q, _, _ = run(size, "none", args.beta, args.mass, args.samples)
    pot = physics_models.schwinger(L=size, beta=args.beta, mass=args.mass, fermions="none")
    q = s_q.observables["plaquette"]
    exact = float(pot.exact["plaquette"])
    z = (float(q.mean) - exact) / float(q.mcse)
    lines.append(f"| {size}x{size} quenched | plaquette | {float(q.mean):.5f} +- {float(q.mcse):.5f} | "
                 f"{exact:.5f} (Bessel sum) | {z:+.2f} | {'yes' if abs(z) < 4 else 'NO'} | | |")
    lines += ["", "The validation is internal (two treatments of the same determinant); published HMC "
              "numbers for these parameters are not quoted here."]
    write(args.out, lines, BEGIN, END)
    print("\n".join(lines))


def write(path: str, lines: list[str], begin: str, end: str) -> None:
    """Replace the block between ``begin`` and ``end`` in ``path`` (append it if absent)."""
    out = pathlib.Path(path)
    text = out.read_text() if out.exists() else ""
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.write_text(text)


def hasenbusch_lines(args) -> list[str]:
    """Hasenbusch's split (``fermion_ratio`` outer, ``fermion_heavy``, ``gauge`` inner) against
    the exact determinant: the plaquette and the condensate."""
    lines = [
        "## The Schwinger model: Hasenbusch's split against the exact determinant",
        "",
        f"Command: `python scripts/schwinger_validate.py --hasenbusch {args.hasenbusch:g} --sizes "
        f"{' '.join(map(str, args.sizes))}` ({time.strftime('%Y-%m-%d')}); jax {__import__('jax').__version__}, "
        f"{platform.machine()}, float64. Two flavours, beta = {args.beta}, m = {args.mass}, heavy mass "
        f"{args.hasenbusch:g}; the split run nests three levels (ratio outer, heavy x 1, gauge x 4); otherwise "
        f"as above (8 chains x {args.samples} draws after 200 warmup, 2MN, trajectory length 1).",
        "",
        "| lattice | observable | Hasenbusch split | exact det | z | pass | acceptance (split / exact) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        s_hb, acc_hb, _ = run(size, "pseudofermion", args.beta, args.mass, args.samples, args.hasenbusch)
        s_ex, acc_ex, _ = run(size, "exact", args.beta, args.mass, args.samples)
        for name in ("plaquette", "condensate"):
            a, b = s_hb.observables[name], s_ex.observables[name]
            z = (float(a.mean) - float(b.mean)) / np.hypot(float(a.mcse), float(b.mcse))
            lines.append(f"| {size}x{size} | {name} | {float(a.mean):.5f} +- {float(a.mcse):.5f} | {float(b.mean):.5f} "
                         f"+- {float(b.mcse):.5f} | {z:+.2f} | {'yes' if abs(z) < 4 else 'NO'} | "
                         f"{acc_hb:.3f} / {acc_ex:.3f} |")
        print("\n".join(lines[-2:]), flush=True)
    return lines


if __name__ == "__main__":
    main()
