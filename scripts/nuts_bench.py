"""kernel="nuts" against numpyro's NUTS and blackjax's NUTS on the same models.

Bayesian models (configs/numpyro_models.py): numpyro runs the numpyro model itself,
as its users do (``MCMC(NUTS(model))``); we run the same model through
``Potential.from_numpyro``; blackjax runs the same log density on a flat vector.
Physics models: all three sample the same potential from the same initial states.
Every sampler runs at its defaults (target acceptance 0.8, diagonal metric, window
adaptation), with the same chains, warmup and draws, in this one process; each run is
repeated and the second one timed (compilation excluded for all). Columns:

- gradients per effective sample: gradients spent on the draws / the smallest bulk ESS
  over the observables' components (the sites, for a numpyro model);
- ESS per second: that ESS / the wall time of the whole timed run, warmup included;
- ESS per second steady: the ESS per draw over the time per extra draw of a run 3x as
  long (per-call costs cancel: numpyro traces its loop again on every ``run()``, we
  run preflight); "n/a" where the extra draws took less than 5 % of the longer run (the
  per-call cost hides them);
- microseconds per gradient: wall time / every gradient of the run, warmup included;
- ours with ``kernel="hmc", trajectory_length="auto"``, for the choice between the two;
- meets target: our NUTS's ESS per second per call at least numpyro's.

A second table measures what NUTS costs under ``vmap``: every chain's tree loop runs
until the deepest chain's tree is done, so the gradient work of a transition is set by
the largest number of leaves over the chains. ``wasted`` = 1 - mean leaves / largest
leaves, per transition, averaged over the sampling phase (a lower bound: the tree's
inner loops synchronise too).

    python scripts/bench.py --nuts          # both tables into BENCHMARKS.md
    python scripts/nuts_bench.py --only eight  # some rows, printed only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import bayes_validate  # noqa: E402
import efficiency  # noqa: E402

import hmc  # noqa: E402
import hmc.sampler  # noqa: E402
import physics_models  # noqa: E402

PHYSICS = {
    "gaussian(dim=100, cond=100)": ("gaussian", dict(dim=100, condition_number=100.0)),
    "harmonic_oscillator(64, a=0.5)": ("harmonic_oscillator", dict(n_sites=64, a=0.5)),
    "phi4(8x8, m2=-1, lam=0.5)": ("phi4", dict(shape=(8, 8), m2=-1.0, lam=0.5)),
}
BAYES = ("eight_schools", "eight_schools_noncentered", "logistic_regression", "hierarchical_binomial")
HEADER = ("| model | grad/ESS: ours NUTS | numpyro NUTS | blackjax NUTS | ours hmc auto | ours / numpyro "
          "| ESS/s per call / steady: ours NUTS | numpyro | blackjax | ours hmc auto | ours / numpyro "
          "| us/grad per call, ours / numpyro | meets target |")


class Model(efficiency.FlatStates):
    """A potential with flat initial states, its observables on flat draws, and (for a
    numpyro model) the model and its data for numpyro's own NUTS."""

    def __init__(self, name: str, chains: int, seed: int = 0) -> None:
        self.name, self.chains = name, chains
        self.numpyro_model = None
        if name in BAYES:
            self.numpyro_model, self.data = bayes_validate.load_model(name)
            self.potential = hmc.Potential.from_numpyro(self.numpyro_model, **self.data)
        else:
            factory, params = PHYSICS[name]
            self.potential = physics_models.get(factory)(**params)
        self.positions = hmc.sampler.initial_positions(self.potential, seed, chains)
        _, self.unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x[0], self.positions))
        self.flat = jax.vmap(lambda q: ravel_pytree(q)[0])(self.positions)


def ours(model: Model, warmup: int, draws: int, **kwargs: Any) -> dict[str, Any]:
    def run():
        return hmc.sample(model.potential, seed=1, num_chains=model.chains, num_warmup=warmup, num_samples=draws,
                          init_positions=model.positions, progress=False, **kwargs)

    result, seconds = efficiency.timed(run)
    grads = hmc.sampler.num_gradient_evaluations(result.settings, result.stats["n_steps"])
    all_grads = grads + hmc.sampler.num_gradient_evaluations(result.settings, result.warmup_stats["n_steps"])
    ess = efficiency.smallest_ess({k: v for k, v in result.draws.items() if k in model.potential.observables})
    return dict(grads=grads, all_grads=all_grads, ess=ess, seconds=seconds, result=result)


def numpyro_nuts(model: Model, warmup: int, draws: int) -> dict[str, Any]:
    """numpyro's ``MCMC.run`` (warmup and draws), the second call on the same MCMC object
    timed (its compiled program cached, as a user's repeated runs are); the warmup's
    gradients counted by a separate ``MCMC.warmup`` from the same key."""
    from numpyro.infer import MCMC, NUTS

    def mcmc_of() -> Any:
        kernel = NUTS(model.numpyro_model) if model.numpyro_model is not None else NUTS(potential_fn=model.energy)
        return MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=model.chains,
                    chain_method="vectorized", progress_bar=False)

    arguments = model.data if model.numpyro_model is not None else {"init_params": model.flat}
    mcmc = mcmc_of()
    _, seconds = efficiency.timed(lambda: mcmc.run(jax.random.key(3), **arguments, extra_fields=("num_steps",)))
    samples = mcmc.get_samples(group_by_chain=True)
    grads = float(np.sum(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]))
    counter = mcmc_of()
    counter.warmup(jax.random.key(3), **arguments, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = float(np.sum(counter.get_extra_fields()["num_steps"]))
    if model.numpyro_model is not None:
        observed = {k: np.asarray(v) for k, v in samples.items()}
    else:
        observed = model.observe(samples)
    ess = efficiency.smallest_ess(observed)
    return dict(grads=grads, all_grads=grads + warm_steps, ess=ess, seconds=seconds)


def blackjax_nuts(model: Model, warmup: int, draws: int) -> dict[str, Any]:
    import blackjax

    def logdensity(x):
        return -model.energy(x)

    @jax.jit
    def run(keys):
        def one_chain(key, x0):
            warm_key, sample_key = jax.random.split(key)
            adaptation = blackjax.window_adaptation(blackjax.nuts, logdensity)
            (state, params), warm_info = adaptation.run(warm_key, x0, num_steps=warmup)
            step = blackjax.nuts(logdensity, **params).step

            def body(state, k):
                state, info = step(k, state)
                return state, (state.position, info.num_integration_steps)

            _, out = jax.lax.scan(body, state, jax.random.split(sample_key, draws))
            return out, jnp.sum(warm_info.info.num_integration_steps)

        return jax.vmap(one_chain)(keys, model.flat)

    keys = jax.random.split(jax.random.key(4), model.chains)
    ((positions, steps), warm_steps), seconds = efficiency.timed(lambda: jax.block_until_ready(run(keys)))
    ess = efficiency.smallest_ess(model.observe(positions))
    grads = float(np.sum(steps))
    return dict(grads=grads, all_grads=grads + float(np.sum(warm_steps)), ess=ess, seconds=seconds)


SAMPLERS = {
    "nuts": lambda m, w, d: ours(m, w, d, kernel="nuts"),
    "numpyro": lambda m, w, d: numpyro_nuts(m, w, d),
    "blackjax": lambda m, w, d: blackjax_nuts(m, w, d),
    "auto": lambda m, w, d: ours(m, w, d, trajectory_length="auto"),
}


def row(name: str, chains: int, warmup: int, draws: int) -> str:
    """One model: each sampler at ``draws`` and at ``3 draws``. Per call: the ESS per second
    of the whole ``draws`` run; steady: the ESS per draw over the time per extra draw of
    the longer run (per-call costs cancel: numpyro's re-tracing, our preflight)."""
    model = Model(name, chains)
    runs, steady = {}, {}
    for key, run in SAMPLERS.items():
        runs[key] = run(model, warmup, draws)
        longer = run(model, warmup, 3 * draws)
        extra = longer["seconds"] - runs[key]["seconds"]
        # timing noise larger than the extra draws' time: no steady-state number
        steady[key] = runs[key]["ess"] / draws / (extra / (2 * draws)) if extra > 0.05 * longer["seconds"] \
            else float("nan")
    gpe = {k: v["grads"] / v["ess"] for k, v in runs.items()}
    eps = {k: v["ess"] / v["seconds"] for k, v in runs.items()}
    upg = {k: v["seconds"] / v["all_grads"] * 1e6 for k, v in runs.items()}
    meets = eps["nuts"] >= eps["numpyro"]  # the target is per call: what a user's run() costs
    both = lambda k: f"{eps[k]:.0f} / {_steady_text(steady[k])}"  # noqa: E731
    return (f"| {name} | {gpe['nuts']:.1f} | {gpe['numpyro']:.1f} | {gpe['blackjax']:.1f} | {gpe['auto']:.1f} "
            f"| {gpe['nuts'] / gpe['numpyro']:.2f} | {both('nuts')} | {both('numpyro')} | {both('blackjax')} "
            f"| {both('auto')} | {eps['nuts'] / eps['numpyro']:.2f} / {_steady_text(steady['nuts'] / steady['numpyro'], 2)} "
            f"| {upg['nuts'] / upg['numpyro']:.2f} | {'yes' if meets else 'no'} |")


def _steady_text(value: float, digits: int = 0) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def vmap_waste(name: str, chains: int, warmup: int, draws: int) -> dict[str, float]:
    """The share of gradient work lost to chains waiting for the deepest tree, and the
    time per useful gradient of NUTS against fixed-length HMC at the same chains."""
    model = Model(name, chains)
    nuts = ours(model, warmup, draws, kernel="nuts")
    steps = np.asarray(nuts["result"].stats["n_steps"], np.float64)  # (chain, draw)
    wasted = 1.0 - float(np.mean(steps.mean(axis=0) / steps.max(axis=0)))
    auto = ours(model, warmup, draws, trajectory_length="auto")
    useful = {k: r["seconds"] / r["all_grads"] for k, r in (("nuts", nuts), ("auto", auto))}
    return dict(wasted=wasted, mean_leaves=float(steps.mean()), max_leaves=float(steps.max(axis=0).mean()),
                time_ratio=useful["nuts"] / useful["auto"], nuts_ess_s=nuts["ess"] / nuts["seconds"],
                auto_ess_s=auto["ess"] / auto["seconds"])


WASTE_HEADER = ("| model | chains | mean leaves | largest leaves (mean over transitions) | wasted gradient work "
                "| time per gradient, NUTS / hmc auto | ESS/s NUTS | ESS/s hmc auto |")


def waste_rows(names: list[str], chain_counts: tuple[int, ...], warmup: int, draws: int) -> list[str]:
    rows = []
    for name in names:
        for chains in chain_counts:
            w = vmap_waste(name, chains, warmup, draws)
            text = (f"| {name} | {chains} | {w['mean_leaves']:.1f} | {w['max_leaves']:.1f} | {100 * w['wasted']:.0f} % "
                    f"| {w['time_ratio']:.2f} | {w['nuts_ess_s']:.0f} | {w['auto_ess_s']:.0f} |")
            rows.append(text)
            print(text, flush=True)
    return rows


def tables(only: str | None, chains: int, warmup: int, draws: int) -> tuple[list[str], list[str]]:
    names = [n for n in (*BAYES, *PHYSICS) if only is None or any(p in n for p in only.split(","))]
    print(HEADER, flush=True)
    rows = []
    for name in names:
        rows.append(row(name, chains, warmup, draws))
        print(rows[-1], flush=True)
    print(WASTE_HEADER, flush=True)
    waste_names = [n for n in ("eight_schools", "harmonic_oscillator(64, a=0.5)") if n in names]
    return rows, waste_rows(waste_names, (16, 256), warmup, draws)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args(argv)
    tables(args.only, args.chains, args.warmup, args.draws)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
