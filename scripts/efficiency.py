"""Effective samples per gradient and per second: this package at a shipped config's
settings against numpyro's NUTS and blackjax's window-adapted NUTS on the same
potential, and against the best point of a fixed (step, length) grid.

Every sampler runs the same model from the same initial states (the config's
``model.init``), with the same chains, warmup and draws, in this one process. Each
is run twice and the second run is timed (compilation excluded for all three).
Gradients per effective sample = gradients spent on the draws / the smallest bulk
ESS over the observables (``magnetization`` left out: in a broken phase it
measures tunnelling between vacua, not the sampler's step). ESS per second = that
ESS / the wall time of the whole timed run (warmup included).

    python scripts/bench.py --efficiency                     # every case, table into BENCHMARKS.md
    python scripts/bench.py --efficiency --only oscillator   # some cases, printed only
    python scripts/efficiency.py --only phi4 --no-grid       # the same module run directly
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import hmc  # noqa: E402
import hmc.sampler  # noqa: E402
from hmc import config as _config  # noqa: E402
from hmc import diagnostics, integrators  # noqa: E402

CONFIGS = os.path.join(HERE, "..", "configs")
# the oscillator again, as a sweep; the Schwinger model's pseudofermions are drawn afresh
# every trajectory, which a NUTS energy cannot express (and each run costs minutes)
SKIP_CONFIGS = ("sweep_oscillator.yaml", "schwinger.yaml", "schwinger_fine.yaml")
LEFT_OUT = ("magnetization",)
#: extra sizes of the lattice models: name -> (config, model params)
SIZES = {
    "harmonic_oscillator 256": ("harmonic_oscillator.yaml", {"n_sites": 256}),
    "phi4 8x8": ("phi4.yaml", {"shape": [8, 8]}),
    "phi4 64x64": ("phi4.yaml", {"shape": [64, 64]}),
    # the same from a hot start (the config's is cold, one vacuum per chain): domain walls outlive the run
    "phi4 64x64 hot": ("phi4.yaml", {"shape": [64, 64], "start": "hot"}),
}


def cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Case name -> (config file, model parameter overrides)."""
    out = {}
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".yaml") and name not in SKIP_CONFIGS:
            out[name[: -len(".yaml")]] = (name, {})
    out.update(SIZES)
    return out


def selected(name: str, only: str) -> bool:
    """``only``: comma-separated parts; a case is selected when a part is in its name, or,
    for a part ``=name``, when it is that name."""
    return any(name == part[1:] if part.startswith("=") else part in name for part in only.split(","))


def smallest_ess(observables: dict[str, np.ndarray]) -> float:
    """The smallest bulk ESS over the observables' components (``(chain, draw, ...)`` arrays)."""
    values = [np.min(diagnostics.ess_bulk(np.asarray(v, np.float64))) for k, v in observables.items()
              if k not in LEFT_OUT]
    return float(np.nanmin(values))


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    run()  # compile
    t = time.perf_counter()
    out = run()
    return out, time.perf_counter() - t


class FlatStates:
    """A potential's energy and observables on flat state vectors (``self.unravel`` maps one
    back to the state), as numpyro's and blackjax's samplers take them."""

    potential: Any
    unravel: Callable

    def energy(self, flat: jax.Array) -> jax.Array:
        return self.potential.energy(self.unravel(flat))

    def observe(self, flat_draws: jax.Array) -> dict[str, np.ndarray]:
        """Observables of ``(chain, draw, d)`` flat draws."""
        fn = jax.jit(jax.vmap(jax.vmap(lambda x: self.potential.observe(self.unravel(x)))))
        return {k: np.asarray(v) for k, v in fn(flat_draws).items()}


class Case(FlatStates):
    """One model at one config's settings: the potential, the flat energy, initial states."""

    def __init__(self, config_file: str, params: dict[str, Any], chains: int, warmup: int, draws: int):
        overrides = [f"{k}={v}" if "." in k else f"model.params.{k}={v}" for k, v in params.items()]
        self.cfg = _config.load(os.path.join(CONFIGS, config_file), overrides)
        self.potential = _config.make_potential(self.cfg.model, CONFIGS)
        self.chains, self.warmup, self.draws = chains, warmup, draws
        kwargs = _config.sample_kwargs(self.cfg)
        kwargs.update(num_chains=chains, num_warmup=warmup, num_samples=draws, record=[], devices=None)
        self.kwargs = kwargs
        positions = hmc.sampler.initial_positions(self.potential, kwargs["seed"], chains)
        dtype = jnp.float64 if kwargs.get("precision") == "float64" else jnp.float32
        self.positions = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), positions)
        one = jax.tree_util.tree_map(lambda x: x[0], self.positions)
        _, self.unravel = ravel_pytree(one)
        self.flat = jax.vmap(lambda q: ravel_pytree(q)[0])(self.positions)


def ours(case: Case, seed_offset: int = 0) -> dict[str, Any]:
    kwargs = dict(case.kwargs, seed=case.kwargs["seed"] + seed_offset)
    (result, seconds) = timed(lambda: hmc.sample(case.potential, progress=False, init_positions=case.positions,
                                                 **kwargs))
    grads = hmc.sampler.num_gradient_evaluations(result.settings, result.stats["n_steps"]) * result.settings["thin"]
    ess = smallest_ess({k: v for k, v in result.draws.items() if k in case.potential.observables})
    return dict(result=result, grads=grads, ess=ess, seconds=seconds,
                acceptance=float(result.stats["acceptance_rate"].mean()))


def numpyro_nuts(case: Case) -> dict[str, Any]:
    from numpyro.infer import MCMC, NUTS

    def run():
        mcmc = MCMC(NUTS(potential_fn=case.energy), num_warmup=case.warmup, num_samples=case.draws,
                    num_chains=case.chains, chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.key(3), init_params=case.flat, extra_fields=("num_steps", "accept_prob"))
        return mcmc

    mcmc, seconds = timed(run)
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    ess = smallest_ess(case.observe(samples))
    return dict(grads=float(np.sum(extra["num_steps"])), ess=ess, seconds=seconds,
                acceptance=float(np.mean(extra["accept_prob"])))


def blackjax_nuts(case: Case) -> dict[str, Any]:
    import blackjax

    def logdensity(x):
        return -case.energy(x)

    @jax.jit
    def run(keys):
        def one_chain(key, x0):
            warm_key, sample_key = jax.random.split(key)
            adaptation = blackjax.window_adaptation(blackjax.nuts, logdensity)
            (state, params), _ = adaptation.run(warm_key, x0, num_steps=case.warmup)
            step = blackjax.nuts(logdensity, **params).step

            def body(state, k):
                state, info = step(k, state)
                return state, (state.position, info.num_integration_steps, info.acceptance_rate)

            _, out = jax.lax.scan(body, state, jax.random.split(sample_key, case.draws))
            return out

        return jax.vmap(one_chain)(keys, case.flat)

    keys = jax.random.split(jax.random.key(4), case.chains)
    (draws, steps, acc), seconds = timed(lambda: jax.block_until_ready(run(keys)))
    ess = smallest_ess(case.observe(draws))
    return dict(grads=float(np.sum(steps)), ess=ess, seconds=seconds, acceptance=float(np.mean(acc)))


def grid(case: Case, adapted: hmc.SampleResult) -> dict[str, Any]:
    """The best point of a 3 x 3 grid of fixed steps (0.7, 1, 1.3 x the adapted one) and
    lengths (0.5, 1, 2 x the config's, or x the adapted one with jitter 0.2 for ``auto``),
    from the adapted run's final states and metric."""
    best = None
    base = dict(case.kwargs, num_warmup=0)
    if base.get("trajectory_length") == "auto":  # the grid is around the adapted length, jittered +-20 %
        base.update(trajectory_length=float(adapted.warmup_stats["trajectory_length"][0, -1]), jitter=0.2)
    length_key = "trajectory_length" if base.get("trajectory_length") is not None else "num_steps"
    for length_factor in (0.5, 1.0, 2.0):
        for step_factor in (0.7, 1.0, 1.3):
            kwargs = dict(base, step_size=float(np.max(adapted.step_size)) * step_factor)
            if length_key == "trajectory_length":
                kwargs["trajectory_length"] = base["trajectory_length"] * length_factor
            else:
                kwargs["num_steps"] = max(1, int(round(base["num_steps"] * length_factor)))
            grads, ess = fixed_point(case, adapted, kwargs)
            point = dict(grads=grads, ess=ess, step=step_factor, length=length_factor, kwargs=kwargs)
            if best is None or grads / ess < best["grads"] / best["ess"]:
                best = point
    return best


def fixed_point(case: Case, adapted: hmc.SampleResult, kwargs: dict[str, Any]) -> tuple[float, float]:
    """``(gradients, ESS)`` of one fixed-settings run (``kwargs``, no warmup) from the adapted
    run's final states and metric."""
    r = hmc.sample(case.potential, progress=False, init_positions=adapted.final_positions,
                   inverse_mass_matrix=adapted.inverse_mass_matrix, **kwargs)
    grads = hmc.sampler.num_gradient_evaluations(r.settings, r.stats["n_steps"]) * r.settings["thin"]
    return grads, smallest_ess({k: v for k, v in r.draws.items() if k in case.potential.observables})


GRID_CHECK_HEADER = ("| case | ours: grad/ESS per seed | ours: median | grid best as picked (seed 0) | grid best rerun: "
                     "grad/ESS per fresh seed | grid best rerun: median | ours / grid best (medians) | within 1.2x |")


def grid_check_row(name: str, case: Case, seeds: int = 3) -> str:
    """Ours against the best fixed grid point without the winner's curse: the grid's best of
    nine noisy points is biased low, so that point is run again with ``seeds`` fresh sampler
    seeds (from the same adapted states and metric) and compared, median to median, with
    ours over ``seeds`` seeds (each with its own warmup)."""
    runs = [ours(case, offset) for offset in range(seeds)]
    mine = [r["grads"] / r["ess"] for r in runs]
    best = grid(case, runs[0]["result"])
    base = best["kwargs"]
    again = [fixed_point(case, runs[0]["result"], dict(base, seed=base["seed"] + 1000 + offset))
             for offset in range(seeds)]
    theirs = [g / e for g, e in again]
    ratio = float(np.median(mine) / np.median(theirs))
    return (f"| {name} | {', '.join(f'{v:.1f}' for v in mine)} | {np.median(mine):.1f} | "
            f"{best['grads'] / best['ess']:.1f} (eps x{best['step']}, L x{best['length']}) | "
            f"{', '.join(f'{v:.1f}' for v in theirs)} | {np.median(theirs):.1f} | {ratio:.2f} | "
            f"{'yes' if ratio <= 1.2 else 'no'} |")


def grid_check_table(only: str | None, chains: int, warmup: int, draws: int, seeds: int = 3) -> list[str]:
    rows = []
    print(GRID_CHECK_HEADER, flush=True)
    for name, (config_file, params) in cases().items():
        if only and not selected(name, only):
            continue
        rows.append(grid_check_row(name, Case(config_file, params, chains, warmup, draws), seeds))
        print(rows[-1], flush=True)
    return rows


def row(name: str, case: Case, with_grid: bool) -> tuple[str, dict[str, Any]]:
    o = ours(case)
    n = numpyro_nuts(case)
    b = blackjax_nuts(case)
    g = grid(case, o["result"]) if with_grid else None
    gpe = {k: v["grads"] / v["ess"] for k, v in (("ours", o), ("numpyro", n), ("blackjax", b))}
    tpe = {k: v["seconds"] / v["ess"] for k, v in (("ours", o), ("numpyro", n), ("blackjax", b))}
    grid_text = "" if g is None else f"{g['grads'] / g['ess']:.1f} (eps x{g['step']}, L x{g['length']})"
    meets = gpe["ours"] <= gpe["numpyro"] and tpe["ours"] <= 0.5 * tpe["numpyro"]
    text = (f"| {name} | {o['acceptance']:.2f} | {gpe['ours']:.1f} | {grid_text} | {gpe['numpyro']:.1f} "
            f"({n['acceptance']:.2f}) | {gpe['blackjax']:.1f} ({b['acceptance']:.2f}) "
            f"| {gpe['ours'] / gpe['numpyro']:.2f} | {o['ess'] / o['seconds']:.0f} | {n['ess'] / n['seconds']:.0f} "
            f"| {b['ess'] / b['seconds']:.0f} | {tpe['ours'] / tpe['numpyro']:.2f} | {'yes' if meets else 'no'} |")
    return text, dict(ours=o, numpyro=n, blackjax=b, grid=g)


HEADER = ("| case | ours: acceptance | ours: grad/ESS | best fixed grid: grad/ESS | numpyro NUTS: grad/ESS (acc.) "
          "| blackjax NUTS: grad/ESS (acc.) | grad/ESS ours / numpyro | ESS/s ours | ESS/s numpyro | ESS/s blackjax "
          "| s/ESS ours / numpyro | meets target |")


def table(only: str | None, chains: int, warmup: int, draws: int, with_grid: bool) -> list[str]:
    rows = []
    print(HEADER, flush=True)
    for name, (config_file, params) in cases().items():
        if only and not selected(name, only):
            continue
        case = Case(config_file, params, chains, warmup, draws)
        text, _ = row(name, case, with_grid)
        rows.append(text)
        print(text, flush=True)
    return rows


#: more cases for the length table: a diagonal Gaussian, scales 1..10, with the diagonal metric
LENGTH_CASES = {"gaussian 100-d, diagonal": ("gaussian.yaml", {"dim": 100, "condition_number": 100.0,
                                                               "correlation": 0.0, "sampler.mass_matrix": "diagonal"})}
LENGTHS_HEADER = ("| case | config's length: grad/ESS | 10 steps, no jitter (the old default): grad/ESS, R-hat "
                  "| no length given (now auto): T, grad/ESS, R-hat |")


def length_run(case: Case, **trajectory: Any) -> tuple[hmc.SampleResult, float, float]:
    """One run of ``case`` with its trajectory settings replaced: the result, gradients per
    effective sample and the largest R-hat over the observables."""
    kwargs = dict(case.kwargs, num_steps=None, trajectory_length=None, jitter=0.0, warmup_trajectory_length=None)
    kwargs.update(trajectory)
    r = hmc.sample(case.potential, progress=False, init_positions=case.positions, **kwargs)
    grads = hmc.sampler.num_gradient_evaluations(r.settings, r.stats["n_steps"]) * r.settings["thin"]
    observables = {k: np.asarray(v, np.float64) for k, v in r.draws.items()
                   if k in case.potential.observables and k not in LEFT_OUT}
    rhat = max(float(np.nanmax(diagnostics.rhat(v))) for v in observables.values())
    return r, grads / smallest_ess(observables), rhat


def lengths_table(only: str | None, chains: int, warmup: int, draws: int) -> list[str]:
    """Per shipped ``kernel: hmc`` config (tempered ones left out): gradients per effective
    sample with the config's own length, with the old default (10 steps, no jitter) and
    with no length given (``auto`` since it became the default)."""
    rows = []
    print(LENGTHS_HEADER, flush=True)
    for name, (config_file, params) in {**cases(), **LENGTH_CASES}.items():
        if only and not selected(name, only):
            continue
        case = Case(config_file, params, chains, warmup, draws)
        if case.kwargs.get("kernel", "hmc") != "hmc" or case.kwargs.get("tempering"):
            continue
        own = {k: case.kwargs.get(k) for k in ("num_steps", "trajectory_length", "jitter", "warmup_trajectory_length")}
        _, own_cost, _ = length_run(case, **{k: v for k, v in own.items() if v is not None})
        _, old_cost, old_rhat = length_run(case, num_steps=10)
        r, new_cost, new_rhat = length_run(case)
        length = float(r.warmup_stats["trajectory_length"][0, -1])
        text = (f"| {name} | {own_cost:.1f} | {old_cost:.1f}, {old_rhat:.2f} | {length:.2f}, {new_cost:.1f}, "
                f"{new_rhat:.2f} |")
        rows.append(text)
        print(text, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="cases whose name contains this text (comma: any of several)")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--no-grid", action="store_true", help="skip the fixed (step, length) grid")
    args = parser.parse_args(argv)
    table(args.only, args.chains, args.warmup, args.draws, not args.no_grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
