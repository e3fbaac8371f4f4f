"""Classic Bayesian models written in numpyro, run unchanged by guarded-hmc.

Each is a plain numpyro model; ``model.kind: numpyro`` in a config turns it into a
potential with one term per site (:meth:`hmc.Potential.from_numpyro`). The data are
in ``configs/data``:

- ``eight_schools.csv``: the SAT coaching experiments (Rubin, J. Educ. Stat. 6 (1981)
  377; Gelman et al., Bayesian Data Analysis, section 5.5);
- ``challenger.csv``: O-ring damage against launch temperature, 23 shuttle flights
  before 1986 (Dalal, Fowlkes & Hoadley, JASA 84 (1989) 945);
- ``efron_morris.csv``: hits in the first 45 at-bats of the 1970 season, 18 players
  (Efron & Morris, JASA 70 (1975) 311).
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def eight_schools(sigma, y=None):
    """Centred: theta_j ~ Normal(mu, tau) (a funnel in (theta, tau) that NUTS meets as divergences)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma, y=None):
    """Non-centred: theta_j = mu + tau * eta_j, eta_j ~ Normal(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * eta)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def logistic_regression(temperature, damaged=None):
    """P(damage) = sigmoid(alpha + beta * (T - 70) / 7), weakly informative priors."""
    x = (jnp.asarray(temperature) - 70.0) / 7.0
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5))
    with numpyro.plate("flight", len(temperature)):
        numpyro.sample("damaged", dist.Bernoulli(logits=alpha + beta * x), obs=damaged)


def hierarchical_binomial(at_bats, hits=None):
    """logit p_i ~ Normal(mu, tau), tau ~ HalfCauchy(1), hits_i ~ Binomial(at_bats_i, p_i) (partial pooling)."""
    mu = numpyro.sample("mu", dist.Normal(-1.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    with numpyro.plate("player", len(at_bats)):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        logit_p = mu + tau * eta
        numpyro.deterministic("p", jnp.reciprocal(1.0 + jnp.exp(-logit_p)))
        numpyro.sample("hits", dist.Binomial(jnp.asarray(at_bats), logits=logit_p),
                       obs=None if hits is None else jnp.asarray(hits))
