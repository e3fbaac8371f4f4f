"""Every continuous numpyro distribution, with parameters that make a proper prior: the
corpus on which preflight must find nothing (tests/test_numpyro.py).

``PRIORS``: name -> a function returning the distribution. ``NOT_A_PRIOR``: the
continuous distributions left out, each with the reason.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

PRIORS = {
    "AsymmetricLaplace": lambda: dist.AsymmetricLaplace(0.2, 1.0, 2.0),
    "AsymmetricLaplaceQuantile": lambda: dist.AsymmetricLaplaceQuantile(0.0, 1.0, 0.3),
    "Beta": lambda: dist.Beta(2.0, 3.0),
    "BetaProportion": lambda: dist.BetaProportion(0.3, 8.0),
    "Cauchy": lambda: dist.Cauchy(0.0, 1.0),
    "Chi2": lambda: dist.Chi2(3.0),
    "CirculantNormal": lambda: dist.CirculantNormal(jnp.zeros(4), jnp.array([1.0, 0.3, 0.1, 0.3])),
    "Dagum": lambda: dist.Dagum(2.0, 3.0, 1.0),
    "Dirichlet": lambda: dist.Dirichlet(jnp.array([1.5, 2.0, 3.0])),
    "DoublyTruncatedPowerLaw": lambda: dist.DoublyTruncatedPowerLaw(-1.5, 0.5, 4.0),
    "Exponential": lambda: dist.Exponential(1.5),
    "Gamma": lambda: dist.Gamma(2.0, 1.0),
    "GaussianRandomWalk": lambda: dist.GaussianRandomWalk(1.0, num_steps=4),
    "Gompertz": lambda: dist.Gompertz(1.0, 1.0),
    "Gumbel": lambda: dist.Gumbel(0.0, 1.0),
    "HalfCauchy": lambda: dist.HalfCauchy(1.0),
    "HalfNormal": lambda: dist.HalfNormal(1.0),
    "InverseGamma": lambda: dist.InverseGamma(3.0, 2.0),
    "InverseWishart": lambda: dist.InverseWishart(5.0, jnp.eye(2)),
    "InverseWishartCholesky": lambda: dist.InverseWishartCholesky(5.0, scale_tril=jnp.eye(2)),
    "Kumaraswamy": lambda: dist.Kumaraswamy(2.0, 3.0),
    "Laplace": lambda: dist.Laplace(0.0, 1.0),
    "CAR": lambda: dist.CAR(jnp.zeros(3), 0.5, 2.0, jnp.array([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]])),
    "LeftTruncatedGamma": lambda: dist.LeftTruncatedGamma(dist.Gamma(2.0, 1.0), low=0.5),
    "Levy": lambda: dist.Levy(0.0, 1.0),
    "LKJ": lambda: dist.LKJ(3, 2.0),
    "LKJCholesky": lambda: dist.LKJCholesky(3, 2.0),
    "Logistic": lambda: dist.Logistic(0.0, 1.0),
    "LogNormal": lambda: dist.LogNormal(0.0, 1.0),
    "LogUniform": lambda: dist.LogUniform(0.1, 10.0),
    "LowerTruncatedPowerLaw": lambda: dist.LowerTruncatedPowerLaw(-2.5, 1.0),
    "LowRankMultivariateNormal": lambda: dist.LowRankMultivariateNormal(
        jnp.zeros(3), jnp.array([[1.0], [0.5], [0.2]]), jnp.ones(3)),
    "MatrixNormal": lambda: dist.MatrixNormal(jnp.zeros((2, 2)), jnp.eye(2), jnp.eye(2)),
    "MultivariateNormal": lambda: dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3) + 0.3),
    "MultivariateStudentT": lambda: dist.MultivariateStudentT(4.0, jnp.zeros(3), jnp.eye(3)),
    "Normal": lambda: dist.Normal(0.0, 1.0),
    "Pareto": lambda: dist.Pareto(1.0, 3.0),
    "RelaxedBernoulliLogits": lambda: dist.RelaxedBernoulliLogits(0.5, 0.3),
    "RightTruncatedGamma": lambda: dist.RightTruncatedGamma(dist.Gamma(2.0, 1.0), high=4.0),
    "SineBivariateVonMises": lambda: dist.SineBivariateVonMises(0.0, 0.5, 2.0, 3.0, 0.5),
    "SineSkewed": lambda: dist.SineSkewed(dist.VonMises(jnp.zeros(2), jnp.ones(2)).to_event(1), jnp.array([0.2, -0.1])),
    "SoftLaplace": lambda: dist.SoftLaplace(0.0, 1.0),
    "StudentT": lambda: dist.StudentT(4.0, 0.0, 1.0),
    "TruncatedNormal": lambda: dist.TruncatedNormal(0.0, 1.0, low=-1.0, high=2.0),
    "TruncatedPolyaGamma": lambda: dist.TruncatedPolyaGamma(),
    "TwoSidedTruncatedGamma": lambda: dist.TwoSidedTruncatedGamma(dist.Gamma(2.0, 1.0), low=0.5, high=4.0),
    "Uniform": lambda: dist.Uniform(-1.0, 2.0),
    "VonMises": lambda: dist.VonMises(0.5, 2.0),
    "Weibull": lambda: dist.Weibull(1.5, 2.0),
    "Wishart": lambda: dist.Wishart(4.0, jnp.eye(2)),
    "WishartCholesky": lambda: dist.WishartCholesky(4.0, scale_tril=jnp.eye(2)),
    "ZeroSumNormal": lambda: dist.ZeroSumNormal(1.0, event_shape=(3,)),
}

NOT_A_PRIOR = {
    "ProjectedNormal": "numpyro itself refuses it for continuous inference (a spherical site) "
                       "and asks for a reparameterizer (ProjectedNormalReparam)",
    "EulerMaruyama": "an SDE path defined by user functions for drift and diffusion, not parameters",
    "GaussianStateSpace": "a linear-Gaussian state-space model: a MultivariateNormal in disguise, "
                          "which the corpus covers",
    "HurdleGamma": "a point mass at 0 plus a Gamma: not a density HMC can sample",
    "HurdleLogNormal": "a point mass at 0 plus a LogNormal: not a density HMC can sample",
    "LeftTruncatedDistribution": "a wrapper: covered by LeftTruncatedGamma",
    "RightTruncatedDistribution": "a wrapper: covered by RightTruncatedGamma",
    "TwoSidedTruncatedDistribution": "a wrapper: covered by TwoSidedTruncatedGamma and TruncatedNormal",
}


#: continuous distributions that make no sense as a likelihood here, with the reason
NOT_A_LIKELIHOOD = {
    "TruncatedPolyaGamma": "it has no parameters: there is nothing for the data to inform",
}


def with_parameters_scaled(distribution, theta):
    """``distribution`` with every float parameter (and cached derived value) multiplied by
    ``exp(theta)``: at ``theta = 0`` the distribution itself, and a path from a latent
    ``theta`` into its log density through its parameters."""
    import jax

    def scale(p):
        if isinstance(p, float) or (hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.floating)):
            return p * jnp.exp(theta)
        return p

    return jax.tree_util.tree_map(scale, distribution)
