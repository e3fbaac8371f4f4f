"""Deliberately broken numpyro models: the ways a Bayesian model's gradient breaks.

Each factory returns ``Potential.from_numpyro(model, data)``; the line that breaks the
model is marked ``# fault`` (the guard's tests compare it with the line the guard names).
Configs name them as ``model.factory: "physics_models.broken_bayes:rounded_site"``.

- :func:`rounded_site`: a parameter through ``jnp.round`` (the likelihood feels no force
  from it: ``disconnected``, found before the first step);
- :func:`factor_where_trap`: a user ``factor`` whose ``jnp.where`` hides a singular
  branch (finite energy, NaN gradient once the chain crosses zero: a mid-run trip);
- :func:`underflowing_scale`: a scale ``exp(log_s)`` that underflows to 0 in float32
  (``log`` of zero inside the Normal's log-density);
- :func:`orphan_latent`: a latent site that no likelihood uses (its draws are its prior's).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hmc.potential import Potential

DATA = np.array([0.3, -0.5, 1.2, -2.0, 0.1, -0.7])


def _numpyro():
    import numpyro
    import numpyro.distributions as dist

    return numpyro, dist


def rounded_site() -> Potential:
    """``y ~ Normal(mu + round(shift), 1)``: the rounding cuts ``shift``'s force."""
    numpyro, dist = _numpyro()

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        shift = numpyro.sample("shift", dist.Normal(0.0, 3.0))
        numpyro.sample("y", dist.Normal(mu + jnp.round(shift), 1.0), obs=y)  # fault

    return Potential.from_numpyro(model, DATA, name="broken_bayes.rounded_site")


def factor_where_trap() -> Potential:
    """A soft constraint ``factor(-sqrt(mu))`` for ``mu > 0`` written with one ``where``:
    for ``mu < 0`` the unselected ``sqrt`` has a NaN derivative that ``where`` passes on.
    Chains start at ``mu = 1`` and cross zero while sampling."""
    numpyro, dist = _numpyro()
    from numpyro.infer import init_to_value

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        numpyro.factor("penalty", jnp.where(mu > 0, -jnp.sqrt(mu), 0.0))  # fault
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return Potential.from_numpyro(model, DATA, init_strategy=init_to_value(values={"mu": 1.0}),
                                  name="broken_bayes.factor_where_trap")


def underflowing_scale() -> Potential:
    """``y ~ Normal(0, exp(log_s))`` started at ``log_s = -110``: ``exp`` underflows to 0
    in float32 and the Normal's ``log(scale)`` is ``log(0)``."""
    numpyro, dist = _numpyro()
    from numpyro.infer import init_to_value

    def model(y):
        log_s = numpyro.sample("log_s", dist.Normal(0.0, 100.0))
        numpyro.sample("y", dist.Normal(0.0, jnp.exp(log_s)), obs=y)  # fault

    return Potential.from_numpyro(model, DATA, init_strategy=init_to_value(values={"log_s": -110.0}),
                                  name="broken_bayes.underflowing_scale")


def orphan_latent() -> Potential:
    """``z`` is sampled and never used: no data inform it."""
    numpyro, dist = _numpyro()

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        numpyro.sample("z", dist.Normal(0.0, 1.0))  # fault
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return Potential.from_numpyro(model, DATA, name="broken_bayes.orphan_latent")


FAULTS = ("rounded_site", "factor_where_trap", "underflowing_scale", "orphan_latent")
