"""numpyro models and plain log densities as guarded potentials (Potential.from_numpyro,
Potential.from_logdensity), their configs, and the guard on broken Bayesian models."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from hmc import config, guard
from physics_models import broken_bayes

numpyro = pytest.importorskip("numpyro")
dist = numpyro.distributions
ROOT = pathlib.Path(__file__).parents[1]
SIGMA = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
Y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])


def _examples():
    spec = importlib.util.spec_from_file_location("numpyro_models", ROOT / "configs" / "numpyro_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _states(pot, n=5):
    return [pot.init(k) for k in jax.random.split(jax.random.key(3), n)]


def test_terms_are_the_sites_and_sum_to_numpyros_potential_energy():
    from numpyro.infer.util import potential_energy

    model = _examples().eight_schools
    pot = hmc.Potential.from_numpyro(model, SIGMA, y=Y)
    assert list(pot.terms) == ["mu", "tau", "theta", "y"]
    assert {t: pot.sites[t]["kind"] for t in pot.terms} == {"mu": "latent", "tau": "latent", "theta": "latent",
                                                             "y": "observed"}
    assert pot.sites["tau"]["distribution"] == "HalfCauchy"
    line = inspect.getsource(model).splitlines().index(
        '    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))') + inspect.getsourcelines(model)[1]
    assert pot.sites["tau"]["source"] == f"numpyro_models.py:{line}"
    for q in _states(pot):
        expected = potential_energy(model, (SIGMA,), {"y": Y}, q)
        np.testing.assert_allclose(pot.energy(q), expected, rtol=1e-6)
        terms = pot.term_energies(q)
        np.testing.assert_allclose(sum(terms.values()), expected, rtol=1e-6)
        # the joint pass and the per-term functions the guard checks are the same numbers
        for name, fn in pot.terms.items():
            np.testing.assert_allclose(fn(q), terms[name], rtol=1e-6)
        np.testing.assert_allclose(jax.grad(pot.energy)(q)["tau"],
                                   jax.grad(lambda u: potential_energy(model, (SIGMA,), {"y": Y}, u))(q)["tau"],
                                   rtol=1e-5)


def test_a_latent_term_is_its_prior_plus_its_own_log_jacobian():
    pot = hmc.Potential.from_numpyro(_examples().eight_schools, SIGMA, y=Y)
    for q in _states(pot):
        u, tau = q["tau"], jnp.exp(q["tau"])  # HalfCauchy's support is positive: tau = exp(u)
        prior = dist.HalfCauchy(5.0).log_prob(tau)
        np.testing.assert_allclose(pot.term_energies(q)["tau"], -(prior + u), rtol=1e-6)
        likelihood = dist.Normal(q["theta"], SIGMA).log_prob(Y).sum()
        np.testing.assert_allclose(pot.term_energies(q)["y"], -likelihood, rtol=1e-6)
        theta_prior = dist.Normal(q["mu"], tau).log_prob(q["theta"]).sum()  # real support: no Jacobian
        np.testing.assert_allclose(pot.term_energies(q)["theta"], -theta_prior, rtol=1e-6)


def test_observables_are_constrained_latents_and_deterministic_sites():
    pot = hmc.Potential.from_numpyro(_examples().eight_schools_noncentered, SIGMA, y=Y)
    assert sorted(pot.observables) == ["eta", "mu", "tau", "theta"]
    q = pot.init(jax.random.key(0))
    seen = pot.observe(q)
    np.testing.assert_allclose(seen["tau"], np.exp(q["tau"]), rtol=1e-6)
    np.testing.assert_allclose(seen["theta"], q["mu"] + np.exp(q["tau"]) * q["eta"], rtol=1e-6)
    for name, fn in pot.observables.items():
        np.testing.assert_allclose(fn(q), seen[name], rtol=1e-6)


def test_init_strategies():
    model = _examples().eight_schools
    for strategy in ("uniform", "median", "feasible"):
        pot = hmc.Potential.from_numpyro(model, SIGMA, y=Y, init_strategy=strategy)
        q = jax.vmap(pot.init)(jax.random.split(jax.random.key(0), 3))
        assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(q))
    pot = hmc.Potential.from_numpyro(model, SIGMA, y=Y, init_strategy="feasible")
    np.testing.assert_allclose(pot.observe(pot.init(jax.random.key(0)))["tau"], 1.0, rtol=1e-6)  # exp(0)
    uniform = hmc.Potential.from_numpyro(model, SIGMA, y=Y)
    u = uniform.init(jax.random.key(1))["theta"]
    assert np.all(np.abs(u) <= 2.0) and np.std(u) > 0.1  # numpyro's init_to_uniform: U(-2, 2) unconstrained
    from numpyro.infer import init_to_value

    pot = hmc.Potential.from_numpyro(model, SIGMA, y=Y, init_strategy=init_to_value(values={"tau": 2.0}))
    np.testing.assert_allclose(pot.observe(pot.init(jax.random.key(0)))["tau"], 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="init_strategy must be one of"):
        hmc.Potential.from_numpyro(model, SIGMA, y=Y, init_strategy="middle")


def test_discrete_latent_is_refused_by_name():
    def mixture(y):
        k = numpyro.sample("component", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(3.0 * k, 1.0), obs=y)

    with pytest.raises(ValueError, match="latent site 'component' \\(BernoulliProbs\\) is discrete"):
        hmc.Potential.from_numpyro(mixture, 1.0)


@pytest.mark.slow
def test_sampling_gives_constrained_draws_under_site_names():
    pot = hmc.Potential.from_numpyro(_examples().eight_schools_noncentered, SIGMA, y=Y)
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=100, num_samples=100, progress=False)
    assert set(r.draws) == {"mu", "tau", "eta", "theta"} and r.draws["theta"].shape == (2, 100, 8)
    assert np.all(r.draws["tau"] > 0)
    np.testing.assert_allclose(r.draws["theta"], r.draws["mu"][..., None] + r.draws["tau"][..., None]
                               * r.draws["eta"], rtol=1e-5, atol=1e-5)


def _unit_gaussian_logdensity(x):
    return -0.5 * jnp.sum((x - 1.0) ** 2)


@pytest.mark.slow
def test_from_logdensity_samples_its_target_with_nuts():
    pot = hmc.Potential.from_logdensity(_unit_gaussian_logdensity, lambda key: jax.random.normal(key, (3,)))
    r = hmc.sample(pot, kernel="nuts", seed=0, num_chains=4, num_warmup=200, num_samples=400, progress=False)
    s = r.summary()
    mean, err = np.asarray(s.observables["q"].mean), np.asarray(s.observables["q"].mcse)
    assert np.all(np.abs(mean - 1.0) < 4.5 * err)


def test_from_logdensity():
    def logdensity(x):
        return -0.5 * jnp.sum((x - 1.0) ** 2)

    pot = hmc.Potential.from_logdensity(logdensity, lambda key: jax.random.normal(key, (3,)))
    assert list(pot.terms) == ["log_density"] and list(pot.observables) == ["q"]
    x = jnp.array([0.5, 2.0, -1.0])
    np.testing.assert_allclose(pot.energy(x), -logdensity(x))
    # states with a chain axis: chain c starts from row c
    starts = np.array([[10.0, 0, 0], [0, 10.0, 0]], np.float32)
    pot = hmc.Potential.from_logdensity(logdensity, starts)
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=0, num_samples=1, step_size=1e-4, num_steps=1,
                   progress=False)
    np.testing.assert_allclose(r.draws["q"][:, 0], starts, atol=1e-2)
    with pytest.raises(ValueError, match="brings 2 initial positions .* num_chains=3"):
        hmc.sample(pot, num_chains=3, progress=False)
    with pytest.raises(TypeError, match="callable log density"):
        hmc.Potential.from_logdensity(3.0, starts)


def _write_config(tmp_path, params, extra=""):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "schools.csv").write_text("y,sigma\n" + "\n".join(f"{a},{b}" for a, b in zip(Y, SIGMA)))
    np.savez(tmp_path / "data" / "schools.npz", sigma=SIGMA)
    (tmp_path / "model.py").write_text("import numpyro\nimport numpyro.distributions as dist\n\n\n"
                                       + inspect.getsource(_examples().eight_schools))
    text = textwrap.dedent(f"""
        model:
          factory: "model.py:eight_schools"
          kind: numpyro
          params: {json.dumps(params)}
        sampler: {{kernel: nuts, num_chains: 2, num_warmup: 50, num_samples: 30}}
        output: {{dir: {tmp_path / 'run'}}}
        """) + extra
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_config_numpyro_model_with_data_files(tmp_path):
    path = _write_config(tmp_path, {"sigma": "data/schools.npz", "y": "data/schools.csv:y"})
    cfg = config.load(str(path))
    pot = config.make_potential(cfg.model, str(tmp_path))
    assert list(pot.terms) == ["mu", "tau", "theta", "y"]
    resolved = config.resolved(cfg, str(tmp_path))  # saved with the run: absolute data paths
    assert resolved["model"]["params"]["y"] == f"{tmp_path / 'data' / 'schools.csv'}:y"


@pytest.mark.slow
def test_config_numpyro_model_with_data_files_runs(tmp_path):
    path = _write_config(tmp_path, {"sigma": "data/schools.npz", "y": "data/schools.csv:y"})
    from hmc import cli

    assert cli.main(["run", str(path), "--no-progress"]) == 0
    import xarray as xr

    tree = xr.open_datatree(tmp_path / "run" / "draws.nc")
    assert {"mu", "tau", "theta"} <= set(tree["posterior"].data_vars)
    assert "tree_depth" in tree["sample_stats"].data_vars
    assert float(tree["posterior"]["tau"].min()) > 0


@pytest.mark.parametrize("params,message", [
    ({"sigma": "data/missing.csv:sigma", "y": "data/schools.csv:y"}, "model.params.sigma: data file"),
    ({"sigma": "data/schools.csv:width", "y": "data/schools.csv:y"}, "model.params.sigma: .* has no column 'width'"),
    ({"sigma": "data/schools.npz:s", "y": "data/schools.csv:y"}, "model.params.sigma: .* has no array 's'"),
    ({"sigmas": "data/schools.npz", "y": "data/schools.csv:y"}, "model.params: .*sigma"),
])
def test_config_numpyro_errors_name_the_key(tmp_path, params, message):
    path = _write_config(tmp_path, params)
    cfg = config.load(str(path))
    with pytest.raises(config.ConfigError, match=message):
        config.make_potential(cfg.model, str(tmp_path))


def test_config_numpyro_settings_are_checked(tmp_path):
    path = _write_config(tmp_path, {"sigma": "data/schools.npz"})
    with pytest.raises(config.ConfigError, match="num_steps does not apply to kernel nuts"):
        config.load(str(path), ["sampler.num_steps=5"])
    with pytest.raises(config.ConfigError, match="max_tree_depth applies to kernel nuts only"):
        config.load(str(path), ["sampler.kernel=hmc", "sampler.max_tree_depth=5"])
    with pytest.raises(config.ConfigError, match="init_strategy applies to model.kind: numpyro"):
        config.load(str(path), ["model.kind=potential", "model.init_strategy=median"])


# -- the guard on broken Bayesian models -------------------------------------------------

def fault_line(factory) -> str:
    """``broken_bayes.py:N`` of the line marked ``# fault`` in a factory."""
    lines, start = inspect.getsourcelines(factory)
    for offset, line in enumerate(lines):
        if "# fault" in line:
            return f"broken_bayes.py:{start + offset}"
    raise AssertionError(f"no fault marker in {factory.__name__}")


def test_rounded_site_is_disconnected_before_the_first_step():
    pot = broken_bayes.rounded_site()
    with pytest.raises(hmc.GuardRefused) as refused:
        hmc.sample(pot, num_chains=2, num_warmup=10, num_samples=10, progress=False)
    (event,) = [e for e in refused.value.events if e.kind == "disconnected"]
    assert (event.term, event.leaf, event.primitive, event.source) == ("y", "shift", "round",
                                                                      fault_line(broken_bayes.rounded_site))
    assert "observed site 'y' (Normal" in event.message
    assert not [e for e in refused.value.events if e.kind == "orphan_leaf"]  # used, only its force is cut


@pytest.mark.slow
def test_factor_where_trap_trips_mid_run_named_by_site():
    pot = broken_bayes.factor_where_trap()
    assert guard.preflight(pot, pot.init(jax.random.key(0))).ok
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=100, num_samples=100, max_trip_fraction=1.0,
                   progress=False)
    events = [e for e in r.guard_events if e.kind == "nonfinite_gradient"]
    assert events and int(r.stats["guard_tripped"].sum() + r.warmup_stats["guard_tripped"].sum()) > 0
    for e in events:
        assert (e.term, e.leaf, e.primitive, e.source) == ("penalty", "mu", "sqrt",
                                                          fault_line(broken_bayes.factor_where_trap))
        assert e.phase in ("warmup", "sampling") and e.action == "rejected" and e.leapfrog_step >= 0
        assert "factor site 'penalty'" in e.message and "where-trap" in e.message
    assert np.all(np.isfinite(r.draws["mu"]))


def test_underflowing_scale_is_named_with_the_log_hint():
    pot = broken_bayes.underflowing_scale()
    with pytest.raises(hmc.GuardRefused) as refused:
        hmc.sample(pot, num_chains=2, num_warmup=10, num_samples=10, progress=False)
    events = [e for e in refused.value.events if e.kind == "nonfinite_gradient"]
    assert events
    for e in events:
        assert (e.term, e.leaf, e.primitive) == ("y", "log_s", "log")
        # the log is inside numpyro's Normal; the guard blames the line that declared the site
        assert e.source == fault_line(broken_bayes.underflowing_scale)
        assert "log of zero" in e.message and "inside the distribution" in e.message


def test_orphan_latent_is_found_before_the_first_step():
    pot = broken_bayes.orphan_latent()
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    (event,) = report.events
    assert (event.kind, event.term, event.leaf, event.source) == ("orphan_leaf", "z", "z",
                                                                  fault_line(broken_bayes.orphan_latent))
    assert not report.ok and "no data inform it" in event.message
    allowed = guard.preflight(pot, pot.init(jax.random.key(0)), allow=["orphan_leaf:z"])
    assert allowed.ok


def test_models_of_priors_alone_and_hierarchies_have_no_orphans():
    def funnel():
        y = numpyro.sample("y", dist.Normal(0.0, 3.0))
        numpyro.sample("x", dist.Normal(0.0, jnp.exp(y / 2)).expand([4]))

    for pot in (hmc.Potential.from_numpyro(funnel),
                hmc.Potential.from_numpyro(_examples().eight_schools, SIGMA, y=Y),
                hmc.Potential.from_numpyro(_examples().hierarchical_binomial, np.full(5, 45.0),
                                           hits=np.array([18.0, 12, 10, 9, 7]))):
        report = guard.preflight(pot, pot.init(jax.random.key(0)))
        assert report.ok and not report.events, str(report)


@pytest.mark.slow
def test_classic_models_agree_with_numpyros_nuts():
    """Every site's mean and sd, our nuts and hmc against numpyro's NUTS, on the four classic
    models (scripts/bayes_validate.py at fewer draws). 272 z-scores: bound the family
    (Bonferroni at 1 % over 272: |z| < 4.1)."""
    spec = importlib.util.spec_from_file_location("bayes_validate", ROOT / "scripts" / "bayes_validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = []
    for name in module.MODELS:
        rows += module.compare(name, seed=5, chains=4, warmup=500, draws=1000)
    assert len(rows) == 136  # 2 kernels x (10 + 18 + 2 + 38) site elements
    worst = max(rows, key=lambda r: max(abs(r["z_mean"]), abs(r["z_sd"])))
    assert max(abs(worst["z_mean"]), abs(worst["z_sd"])) < 4.1, worst


def _beta_binomial(n=20, k=None):
    p = numpyro.sample("p", dist.Beta(2.0, 3.0))
    numpyro.sample("k", dist.Binomial(n, p), obs=k)


def test_a_beta_prior_is_not_refused_for_the_stop_gradient_it_keeps_for_its_boundaries():
    """numpyro's Beta.log_prob detaches a value used only at p = 0 or 1 (a double where);
    the likelihood's term traces the prior's code too, but does not use it."""
    pot = hmc.Potential.from_numpyro(_beta_binomial, k=7)
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    assert report.ok and not report.events, str(report)
    assert report.status[("p", "p")] == report.status[("k", "p")] == "connected"

    def proportion():
        numpyro.sample("p", dist.BetaProportion(0.3, 8.0))

    pot = hmc.Potential.from_numpyro(proportion)
    report = guard.preflight(pot, pot.init(jax.random.key(1)))
    assert report.ok and not report.events, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["hmc", "nuts"])
def test_beta_binomial_posterior_against_its_closed_form(kernel):
    """p ~ Beta(2, 3), k = 7 of n = 20: the posterior is Beta(9, 16)."""
    pot = hmc.Potential.from_numpyro(_beta_binomial, k=7)
    r = hmc.sample(pot, kernel=kernel, seed=3, num_chains=4, num_warmup=300, num_samples=1000, progress=False)
    assert not r.guard_events
    a, b = 9.0, 16.0
    p = np.asarray(r.draws["p"], np.float64)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    for values, exact in ((p, mean), ((p - mean) ** 2, var)):
        z = (values.mean() - exact) / float(hmc.diagnostics.mcse(values))
        assert abs(z) < 4, (kernel, values.mean(), exact, z)


def _corpus():
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import distribution_corpus

    return distribution_corpus


def _prior_with_a_normal_likelihood(make):
    def model():
        x = numpyro.sample("x", make())
        numpyro.sample("y", dist.Normal(jnp.sum(jnp.asarray(x, jnp.result_type(float))), 1.0), obs=0.3)

    return model


# one distribution per kind of log_prob code (the boundary wheres of Beta, a simplex, a
# correlation Cholesky factor, a truncation, the circle, a logsumexp series, a random
# walk, a dense covariance): the default tier's share of the corpus, about a second
# each; every one of the corpus at three states in the slow tier
# Beta and BetaProportion: preflight runs on both in the beta-prior test above
DEFAULT_TIER_PRIORS = ("Dirichlet", "LKJCholesky", "TruncatedNormal", "VonMises", "TruncatedPolyaGamma",
                       "GaussianRandomWalk", "MultivariateNormal")


def test_continuous_numpyro_distributions_as_priors_pass_preflight():
    """As the prior of a normal likelihood: no finding at a random interior state. Every
    continuous distribution numpyro has is in the corpus or named with the reason it is
    not."""
    corpus = _corpus()
    continuous = {name for name in dist.__all__ if isinstance(getattr(dist, name), type)
                  and issubclass(getattr(dist, name), dist.Distribution)
                  and getattr(dist, name).__module__.rsplit(".", 1)[-1] in ("continuous", "directional", "truncated")}
    assert continuous <= set(corpus.PRIORS) | set(corpus.NOT_A_PRIOR), \
        f"not in the corpus: {sorted(continuous - set(corpus.PRIORS) - set(corpus.NOT_A_PRIOR))}"
    refused = {}
    for name in DEFAULT_TIER_PRIORS:
        pot = hmc.Potential.from_numpyro(_prior_with_a_normal_likelihood(corpus.PRIORS[name]))
        report = guard.preflight(pot, pot.init(jax.random.key(0)))
        if not report.ok or report.events:
            refused[name] = str(report)
    assert not refused, refused


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_corpus().PRIORS))
def test_each_continuous_numpyro_distribution_as_a_prior_passes_preflight(name):
    pot = hmc.Potential.from_numpyro(_prior_with_a_normal_likelihood(_corpus().PRIORS[name]))
    for k in range(1, 3):  # key 0 is the default tier's state
        report = guard.preflight(pot, pot.init(jax.random.key(k)))
        assert report.ok and not report.events, (k, str(report))


def _as_a_likelihood(make):
    """A latent ``theta`` scales the distribution's parameters; the data are one draw of it."""
    data = make().sample(jax.random.key(7))

    def model():
        theta = numpyro.sample("theta", dist.Normal(0.0, 0.1))
        numpyro.sample("y", _corpus().with_parameters_scaled(make(), theta), obs=data)

    return model


def _likelihood_findings(name):
    pot = hmc.Potential.from_numpyro(_as_a_likelihood(_corpus().PRIORS[name]), init_strategy="median")
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    return [] if report.ok and not report.events else [str(e) for e in report.events] or [str(report)]


@pytest.mark.slow  # the slow per-distribution likelihood test covers these and more
def test_numpyro_distributions_as_likelihoods_pass_preflight():
    """The gradient into a likelihood's parameters (a bounded and a matrix distribution
    here; every one in the slow tier): no finding at the data's own parameters."""
    found = {name: _likelihood_findings(name) for name in ("Beta", "LKJCholesky")}
    assert not any(found.values()), found


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(_corpus().PRIORS) - set(_corpus().NOT_A_LIKELIHOOD)))
def test_each_continuous_numpyro_distribution_as_a_likelihood_passes_preflight(name):
    assert _likelihood_findings(name) == []
