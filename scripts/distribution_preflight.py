"""Preflight on every continuous numpyro distribution as a prior (tests/distribution_corpus.py):
one markdown row per distribution with the findings at three random interior states.

    python scripts/distribution_preflight.py [NAME ...]
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

import hmc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from distribution_corpus import NOT_A_PRIOR, PRIORS  # noqa: E402


def prior_with_a_normal_likelihood(make):
    def model():
        x = numpyro.sample("x", make())
        numpyro.sample("y", dist.Normal(jnp.sum(jnp.asarray(x, jnp.result_type(float))), 1.0), obs=0.3)

    return model


def findings(make, states=3):
    pot = hmc.Potential.from_numpyro(prior_with_a_normal_likelihood(make))
    seen = set()
    for k in range(states):
        report = hmc.guard.preflight(pot, pot.init(jax.random.key(k)))
        seen.update(f"{e.kind} {e.primitive} {e.source}" for e in report.events)
    return sorted(seen)


def main(names):
    print("| distribution | findings at 3 states | seconds |")
    print("|---|---|---|")
    for name, make in PRIORS.items():
        if names and name not in names:
            continue
        start = time.perf_counter()
        try:
            got = "; ".join(findings(make)) or "nothing"
        except Exception as err:  # a distribution this numpyro cannot build: say so
            got = f"error: {type(err).__name__}: {err}"[:160]
        print(f"| {name} | {got} | {time.perf_counter() - start:.1f} |", flush=True)
    for name, why in NOT_A_PRIOR.items():
        if not names or name in names:
            print(f"| {name} | not in the corpus: {why} | |")


if __name__ == "__main__":
    main(sys.argv[1:])
