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
"""

from __future__ import annotations

import argparse
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
def ours_runner(U: Callable, shape, eps: float, chains: int, n_traj: int, guard: str) -> Callable[[], object]:
    pot = hmc.Potential(terms={"U": lambda q: U(q["q"])}, init=lambda key: {"q": jnp.zeros(shape)})
    init = {"q": initial(shape, chains)}

    def run():
        r = hmc.sample(
            pot, seed=0, num_chains=chains, num_warmup=0, num_samples=n_traj, step_size=eps, num_steps=L,
            integrator="leapfrog", mass_matrix="identity", record=[], guard=guard, chunk_size=n_traj,
            init_positions=init, progress=False,
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
        "ours": ours_runner(U, shape, eps, chains, n_traj, "reject"),
        "ours_noguard": ours_runner(U, shape, eps, chains, n_traj, "off"),
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
    ratio = {k: float(np.median(t[k] / t["limit"])) for k in ("ours", "ours_noguard", "blackjax")}
    ratio["numpyro_per_run"] = float(np.median(t["numpyro_1"] / t["limit"]))
    ratio["numpyro_steady"] = float(np.median((t["numpyro_3"] - t["numpyro_1"]) / (2 * t["limit"])))
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
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    args = parser.parse_args(argv)

    chain_counts = (16,) if args.quick else (1, 16, 256)
    rows = []
    header = (
        "| target | chains | limit ns per chain-gradient | ours (guard) | ours (no guard) | guard cost | numpyro steady "
        "| numpyro per run() | blackjax |"
    )
    print(versions())
    print(header)
    for name, (U, shape, eps) in targets().items():
        if args.quick and name == "phi4 64x64":
            continue
        for chains in chain_counts:
            m = measure(name, U, shape, eps, chains, args.repeats, args.budget)
            row = (
                f"| {name} | {chains} | {m['limit_per_grad'] * 1e9 / chains:.0f} | {m['ours']:.2f}x "
                f"| {m['ours_noguard']:.2f}x | {100 * m['guard_cost']:+.1f} % "
                f"| {m['numpyro_steady']:.2f}x | {m['numpyro_per_run']:.2f}x | {m['blackjax']:.2f}x |"
            )
            rows.append(row)
            print(row, flush=True)
    if not args.quick:
        write(args.out, header, rows)
    return 0


MARK_BEGIN = "<!-- bench.py:begin -->"
MARK_END = "<!-- bench.py:end -->"


def write(path: str, header: str, rows: list[str]) -> None:
    block = "\n".join(
        [
            MARK_BEGIN,
            f"Command: `python scripts/bench.py` ({time.strftime('%Y-%m-%d')}). {versions()}.",
            "",
            "Time per gradient evaluation relative to the limit (the vmapped gradient alone in a `lax.scan`); "
            f"leapfrog, L = {L}, fixed step size, unit mass, float32; medians of ratios paired within interleaved "
            "repeats. numpyro steady = the extra time of a 3x longer `run()`; per run() includes its recompilation.",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            MARK_END,
        ]
    )
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Throughput (`scripts/bench.py`)\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
