"""tfp's (JAX substrate) continuous distributions as priors: the corpus on which preflight
must find nothing (tests/test_real_code.py). Each is used as a user uses a tfp prior in a
hand-written potential: an unconstrained state, the distribution's default event-space
bijector, ``-log p(bijector(x)) - log|det J|`` as the term ``prior`` and a normal
likelihood of the constrained value's sum as the term ``likelihood``.

``PRIORS``: name -> a function returning the distribution. ``NOT_A_PRIOR``: the
distributions left out, each with the reason.
"""

import jax
import jax.numpy as jnp
import numpy as np
from tensorflow_probability.substrates import jax as tfp

import hmc

tfd = tfp.distributions

PRIORS = {
    "Beta": lambda: tfd.Beta(2.0, 3.0),
    "Cauchy": lambda: tfd.Cauchy(0.0, 1.0),
    "Chi2": lambda: tfd.Chi2(3.0),
    "Dirichlet": lambda: tfd.Dirichlet(jnp.array([1.5, 2.0, 3.0])),
    "Exponential": lambda: tfd.Exponential(1.5),
    "Gamma": lambda: tfd.Gamma(2.0, 1.0),
    "GeneralizedNormal": lambda: tfd.GeneralizedNormal(0.0, 1.0, 1.5),
    "Gumbel": lambda: tfd.Gumbel(0.0, 1.0),
    "HalfCauchy": lambda: tfd.HalfCauchy(0.0, 1.0),
    "HalfNormal": lambda: tfd.HalfNormal(1.0),
    "HalfStudentT": lambda: tfd.HalfStudentT(4.0, 0.0, 1.0),
    "InverseGamma": lambda: tfd.InverseGamma(3.0, 2.0),
    "InverseGaussian": lambda: tfd.InverseGaussian(1.0, 2.0),
    "JohnsonSU": lambda: tfd.JohnsonSU(0.5, 2.0, 0.0, 1.0),
    "Kumaraswamy": lambda: tfd.Kumaraswamy(2.0, 3.0),
    "Laplace": lambda: tfd.Laplace(0.0, 1.0),
    "LKJ": lambda: tfd.LKJ(3, 2.0),
    "CholeskyLKJ": lambda: tfd.CholeskyLKJ(3, 2.0),
    "Logistic": lambda: tfd.Logistic(0.0, 1.0),
    "LogNormal": lambda: tfd.LogNormal(0.0, 1.0),
    "LogLogistic": lambda: tfd.LogLogistic(0.0, 0.5),
    "Moyal": lambda: tfd.Moyal(0.0, 1.0),
    "MultivariateNormalTriL": lambda: tfd.MultivariateNormalTriL(jnp.zeros(3), jnp.linalg.cholesky(jnp.eye(3) + 0.3)),
    "MultivariateStudentTLinearOperator": lambda: tfd.MultivariateStudentTLinearOperator(
        4.0, jnp.zeros(3), tfp.tf2jax.linalg.LinearOperatorLowerTriangular(jnp.eye(3))),
    "Normal": lambda: tfd.Normal(0.0, 1.0),
    "Pareto": lambda: tfd.Pareto(3.0, 1.0),
    "PowerSpherical": lambda: tfd.PowerSpherical(jnp.array([0.0, 0.6, 0.8]), 2.0),
    "SinhArcsinh": lambda: tfd.SinhArcsinh(0.0, 1.0, skewness=0.3, tailweight=1.2),
    "SkewNormal" if hasattr(tfd, "SkewNormal") else "TwoPieceNormal": lambda: tfd.TwoPieceNormal(0.0, 1.0, 1.5),
    "StudentT": lambda: tfd.StudentT(4.0, 0.0, 1.0),
    "Triangular": lambda: tfd.Triangular(0.0, 2.0, 0.7),
    "TruncatedCauchy": lambda: tfd.TruncatedCauchy(0.0, 1.0, -1.0, 2.0),
    "TruncatedNormal": lambda: tfd.TruncatedNormal(0.0, 1.0, -1.0, 2.0),
    "Uniform": lambda: tfd.Uniform(-1.0, 2.0),
    "VonMises": lambda: tfd.VonMises(0.5, 2.0),
    "VonMisesFisher": lambda: tfd.VonMisesFisher(jnp.array([0.0, 0.6, 0.8]), 2.0),
    "Weibull": lambda: tfd.Weibull(1.5, 1.0),
    "WishartTriL": lambda: tfd.WishartTriL(5.0, jnp.eye(2)),
}

#: open findings, each with the reason: the test expects exactly these. (LKJ's
#: ``clip_by_value_preserve_gradient``, ``x + stop_gradient(clip(x) - x)``, was one until
#: preflight learnt that a ``stop_gradient`` whose operand does not move at the state cuts nothing.)
KNOWN_FINDINGS: dict[str, str] = {}

NOT_A_PRIOR = {
    "Empirical": "a point mass on samples: no density between them",
    "Deterministic": "a point mass: no density",
    "Horseshoe": "its log_prob is an approximation whose gradient tfp documents as unreliable",
    "StoppingRatioLogistic": "discrete",
}


def prior_potential(make) -> hmc.Potential:
    """The distribution as the prior of a normal likelihood over its unconstrained space."""
    prior = make()
    bijector = prior.experimental_default_event_space_bijector()
    shape = tuple(bijector.inverse_event_shape(prior.event_shape))

    def constrained(q):
        return bijector(q["x"])

    def init(key):
        return {"x": jax.random.uniform(key, shape, minval=-1.5, maxval=1.5)}

    return hmc.Potential(
        terms={"prior": lambda q: -prior.log_prob(constrained(q)) - bijector.forward_log_det_jacobian(q["x"]),
               "likelihood": lambda q: 0.5 * (jnp.sum(constrained(q)) - 0.3) ** 2},
        init=init, name=type(prior).__name__, kind="bayesian")


def check(name: str, key: int = 0) -> list:
    """Preflight's findings on the ``name`` potential at the state ``init(key(key))``."""
    pot = prior_potential(PRIORS[name])
    report = hmc.guard.preflight(pot, pot.init(jax.random.key(key)))
    return [] if report.ok and not report.events else [str(e) for e in report.events] or [str(report)]


__all__ = ["KNOWN_FINDINGS", "NOT_A_PRIOR", "PRIORS", "check", "prior_potential", "np"]
