import numpy as np
import pytest

from hmc import diagnostics


def ar1(rho, chains, n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, n))
    x[:, 0] = rng.normal(size=chains) / np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + rng.normal(size=chains)
    return x


def test_ess_of_ar1_matches_theory():
    for rho in (0.0, 0.5, 0.9):
        x = ar1(rho, 8, 4000, seed=int(rho * 10))
        expected = x.size * (1 - rho) / (1 + rho)
        assert 0.8 < diagnostics.ess(x) / expected < 1.25, rho
        assert 0.8 < diagnostics.ess_bulk(x) / expected < 1.25, rho


def test_antithetic_chain_gets_capped_ess_not_nan():
    x = ar1(-0.9, 4, 2000)
    e = diagnostics.ess(x)
    assert np.isfinite(e) and e > x.size
    assert e <= x.size * np.log10(x.size)


def test_rhat_flags_disagreeing_chains():
    x = ar1(0.5, 4, 1000)
    assert abs(diagnostics.rhat(x) - 1.0) < 0.01
    x[0] += 3.0
    assert diagnostics.rhat(x) > 1.1


def test_mcse_and_ebfmi():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5000))
    np.testing.assert_allclose(diagnostics.mcse(x), 1 / np.sqrt(x.size), rtol=0.1)
    # iid energies: E-BFMI = sum (dE)^2 / sum (E - mean)^2 ~ 2
    np.testing.assert_allclose(diagnostics.ebfmi(x), 2.0, rtol=0.05)
    # a random walk in energy: E-BFMI near 0
    assert np.all(diagnostics.ebfmi(np.cumsum(x, axis=1)) < 0.05)


def test_blocked_jackknife_of_a_variance():
    x = ar1(0.0, 4, 4000)
    est = diagnostics.blocked_jackknife(lambda d: float(np.mean(d["x"] ** 2)), {"x": x}, exact=1.0)
    assert abs(est.mean - 1.0) < 5 * est.mcse
    assert 0.5 < est.mcse / (np.sqrt(2.0 / x.size)) < 2.0


def test_constant_observable_has_nan_diagnostics_not_errors():
    x = np.ones((2, 100))
    s = diagnostics.summarize_draws(x, 1.0)
    assert np.isnan(s.ess) and np.isnan(s.r_hat) and s.mean == 1.0


def test_summary_has_the_physics_checks():
    import hmc
    import physics_models

    pot = physics_models.harmonic_oscillator(n_sites=16, a=0.5)
    r = hmc.sample(pot, num_chains=4, num_warmup=150, num_samples=300, trajectory_length=1.0, jitter=0.2,
                   progress=False)
    s = r.summary()
    info = s.sampler
    # Creutz: <exp(-dH)> = 1 for a reversible, volume-preserving integrator
    assert abs(info["creutz"] - 1.0) < 4.5 * info["creutz_mcse"], (info["creutz"], info["creutz_mcse"])
    assert info["delta_energy_mean"] > 0  # <dH> >= 0 (Jensen), and small
    assert info["acceptance_chain_min"] <= r.stats["acceptance_rate"].mean() <= info["acceptance_chain_max"]
    ess = min(float(np.min(o.ess_bulk)) for o in s.observables.values())
    assert info["gradients_per_ess"] == pytest.approx(r.stats["n_steps"].sum() * 2 / ess)
    action = s.observables["action"]
    assert float(action.tau_int) == pytest.approx(4 * 300 / float(action.ess))
    assert "<exp(-dH)>" in s.table() and "tau_int" in s.table()
    # a statistic of the wrong sign would show: exp(+dH) averages well above 1
    wrong = diagnostics.summarize({}, {"delta_energy": -r.stats["delta_energy"]}).sampler
    assert (wrong["creutz"] - 1.0) > 4.5 * wrong["creutz_mcse"]
