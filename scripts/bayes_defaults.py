"""Which kernel a Bayesian potential gets by default: inference-gym targets at the defaults.

Each target is wrapped as a user would wrap it: the state is unconstrained, the
target's default event-space bijector maps it to the constrained parameters, and the
potential has two terms, ``target`` (``-log p`` at the constrained point) and
``jacobian`` (``-log |det J|`` of the bijector). ``hmc.sample(potential, num_chains=...)``
then runs with everything else at its defaults, once with each kernel named in
``--kernels`` (``default`` is what a user gets without naming one). Reported per run:
the largest |z| of the constrained posterior means against inference-gym's ground truth
(the difference over the Monte Carlo standard error), the largest rank-normalised split
R-hat, the divergences, gradients per effective sample (gradients spent on the draws
over the smallest bulk ESS of the constrained parameters), wall time, and the verdict.

    python scripts/bayes_defaults.py [--targets sv_small funnel] [--kernels default hmc nuts] [--chains 16]

Needs the test extra (inference-gym, tfp-nightly).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import hmc  # noqa: E402
from hmc import diagnostics  # noqa: E402

TARGETS = {
    "sv_small": "VectorizedStochasticVolatilitySP500Small",
    "sv": "VectorizedStochasticVolatilitySP500",
    "funnel": "NealsFunnel",
    "eight_schools": "EightSchools",
}


def gym_target(name: str) -> Any:
    from inference_gym import using_jax as gym

    return getattr(gym.targets, TARGETS[name])()


def gym_potential(target: Any, name: str) -> hmc.Potential:
    """The target as a two-term potential over its unconstrained state (a flat vector)."""
    bijector = target.default_event_space_bijector
    if not hasattr(bijector, "inverse"):  # a structure of bijectors, one per part of the state
        from tensorflow_probability.substrates import jax as tfp

        bijector = tfp.bijectors.JointMap(bijector)
    identity = target.sample_transformations["identity"]
    shapes = bijector.inverse_event_shape(target.event_shape)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(tuple(s)), shapes, is_leaf=lambda s: hasattr(s, "as_list"))
    flat, unflatten = ravel_pytree(zeros)
    dim = int(flat.size)

    def constrained(q: dict) -> jax.Array:
        return ravel_pytree(identity(bijector(unflatten(q["x"]))))[0]

    if hasattr(target, "log_likelihood"):  # a Bayesian model: its prior and likelihood as two terms
        terms = {"prior": lambda q: -target.prior_distribution().log_prob(bijector(unflatten(q["x"]))),
                 "likelihood": lambda q: -target.log_likelihood(bijector(unflatten(q["x"])))}
    else:
        terms = {"target": lambda q: -target.unnormalized_log_prob(bijector(unflatten(q["x"])))}
    terms["jacobian"] = lambda q: -bijector.forward_log_det_jacobian(unflatten(q["x"]))
    return hmc.Potential(
        terms=terms,
        init=lambda key: {"x": jax.random.uniform(key, (dim,), minval=-2.0, maxval=2.0)},
        observables={"theta": constrained}, name=name, kind="bayesian")


def truth(target: Any) -> tuple[np.ndarray, np.ndarray]:
    identity = target.sample_transformations["identity"]
    mean = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(identity.ground_truth_mean)])
    sd = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(identity.ground_truth_standard_deviation)])
    return mean, sd


def one_run(potential: hmc.Potential, kernel: str, chains: int, seed: int, extra: dict) -> tuple[Any, float]:
    kwargs = dict(extra) if kernel == "default" else {"kernel": kernel, **extra}
    start = time.perf_counter()
    result = hmc.sample(potential, seed=seed, num_chains=chains, progress=False, **kwargs)
    return result, time.perf_counter() - start


def report(result: Any, mean: np.ndarray, seconds: float) -> dict:
    theta = np.asarray(result.draws["theta"], np.float64)
    est = theta.mean(axis=(0, 1))
    ess = np.asarray(diagnostics.ess_bulk(theta), np.float64)
    mcse = np.asarray(diagnostics.mcse(theta), np.float64)
    z = np.abs(est - mean) / np.maximum(mcse, 1e-300)
    rhat = np.asarray(diagnostics.rhat(theta), np.float64)
    n_steps = np.asarray(result.stats["n_steps"], np.float64)
    return dict(max_z=float(np.nanmax(z)), max_rhat=float(np.nanmax(rhat)),
                divergent=int(np.asarray(result.stats["diverging"]).sum()),
                grads_per_ess=float(n_steps.sum() / max(float(ess.min()), 1e-9)),
                min_ess=float(ess.min()), seconds=seconds, warnings=len(result.warnings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["sv_small", "funnel"], choices=sorted(TARGETS))
    parser.add_argument("--kernels", nargs="+", default=["default", "hmc", "nuts"])
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more hmc.sample arguments, e.g. num_warmup=1000 precision=float64")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            extra[key] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            extra[key] = value
    print(f"settings {extra}")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, chains {args.chains}, seed {args.seed}")
    print(f"{'target':<14}{'kernel':<9}{'max|z|':>8}{'R-hat':>8}{'div':>6}{'grad/ESS':>10}{'min ESS':>9}"
          f"{'s':>8}{'warn':>6}")
    for name in args.targets:
        target = gym_target(name)
        mean, _ = truth(target)
        potential = gym_potential(target, name)
        for kernel in args.kernels:
            result, seconds = one_run(potential, kernel, args.chains, args.seed, extra)
            row = report(result, mean, seconds)
            print(f"{name:<14}{kernel:<9}{row['max_z']:>8.2f}{row['max_rhat']:>8.3f}{row['divergent']:>6d}"
                  f"{row['grads_per_ess']:>10.1f}{row['min_ess']:>9.0f}{row['seconds']:>8.1f}{row['warnings']:>6d}",
                  flush=True)
            for sentence in result.warnings:
                print("    " + sentence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
