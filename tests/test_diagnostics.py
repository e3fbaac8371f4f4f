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


@pytest.mark.slow  # a statistical run; the Creutz check's verdict is tested on synthetic draws
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


def _clean_stats(rng, chains=4, draws=1000):
    return {
        "acceptance_rate": np.clip(0.8 + 0.05 * rng.normal(size=(chains, draws)), 0, 1),
        "diverging": np.zeros((chains, draws), bool),
        "guard_tripped": np.zeros((chains, draws), bool),
        "step_size": np.full((chains, draws), 0.5),
        "energy": rng.normal(size=(chains, draws)),
    }


def test_the_verdict_of_a_clean_run_is_empty_and_says_so():
    rng = np.random.default_rng(0)
    s = diagnostics.summarize({"x": rng.normal(size=(4, 1000, 2))}, _clean_stats(rng),
                              warmup_stats={"step_size": np.full((4, 100), 0.6)})
    assert s.sampler["warnings"] == []
    assert str(s).splitlines()[0] == "verdict: clean (every check passed)"


def test_the_verdict_names_each_failed_check_once():
    """Too few draws, a chain that does not move, divergences in one chain, a step that
    collapsed in warmup, trees at the cap, guard events: one sentence each."""
    rng = np.random.default_rng(1)
    chains, draws = 4, 60
    x = rng.normal(size=(chains, draws))
    x[3] = 2.5 + 0.01 * rng.normal(size=draws)  # stuck far out: R-hat and ESS fail
    stats = _clean_stats(rng, chains, draws)
    stats["acceptance_rate"][3] = 0.01
    stats["diverging"][1, [5, 17]] = True
    stats["step_size"][:] = 1e-4
    stats["tree_depth"] = np.full((chains, draws), 3)
    stats["tree_depth"][0, :6] = 10
    s = diagnostics.summarize({"x": x}, stats, sampler_info={"num_guard_events": 2, "max_tree_depth": 10},
                              warmup_stats={"step_size": np.geomspace(0.5, 1e-4, 50)[None].repeat(chains, 0)})
    warnings = s.sampler["warnings"]
    starts = ["R-hat above 1.01 for 1 observable(s), worst x at",
              "effective sample size too small for 2 estimate(s)",
              "2 divergent transition(s) in 25 % of the chains",
              "the step size collapsed in warmup: the draws used 0.0001, 0.0002 of the largest step warmup tried (0.5)",
              "1 chain(s) accept far less than the others",
              "2.5 % of NUTS transitions hit the maximum tree depth",
              "2 guard event(s)"]
    assert len(warnings) == len(starts), warnings
    for sentence, start in zip(warnings, starts):
        assert sentence.startswith(start), (sentence, start)
    text = str(s)
    assert text.startswith("verdict: NOT CLEAN, 7 warning(s)") and all(f"  - {w}" in text for w in warnings)


def test_the_verdict_flags_a_creutz_identity_off_by_more_than_four_errors_and_a_low_ebfmi():
    rng = np.random.default_rng(2)
    stats = _clean_stats(rng)
    stats["delta_energy"] = rng.normal(-0.3, 0.1, size=(4, 1000))  # <exp(-dH)> about 1.36, not 1
    stats["energy"] = np.cumsum(0.05 * rng.normal(size=(4, 1000)), axis=1)  # a random walk: E-BFMI near 0
    s = diagnostics.summarize({"x": rng.normal(size=(4, 1000))}, stats)
    warnings = s.sampler["warnings"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("E-BFMI below 0.3 in 4 chain(s)")
    assert warnings[1].startswith("<exp(-dH)> = 1.3") and "standard errors from 1" in warnings[1]


def test_a_derived_quantity_without_an_ess_does_not_spoil_the_verdict():
    """A susceptibility's error is a blocked jackknife's: it has no ESS or R-hat, and a
    clean run with one stays clean."""
    from hmc import diagnostics

    rng = np.random.default_rng(0)
    draws = {"m": rng.normal(size=(4, 1000))}
    stats = {"acceptance_rate": np.full((4, 1000), 0.8), "diverging": np.zeros((4, 1000), bool),
             "energy": rng.normal(size=(4, 1000))}
    summary = diagnostics.summarize(draws, stats, derived={"chi": lambda d: float(np.var(d["m"]))})
    assert "chi" in summary.observables and summary.sampler["warnings"] == []


def test_the_header_gives_the_draws_mean_step_and_the_adapted_step_that_bounds_it():
    rng = np.random.default_rng(1)
    draws = {"m": rng.normal(size=(2, 200))}
    stats = {"acceptance_rate": np.full((2, 200), 0.8), "step_size": np.full((2, 200), 0.8004)}
    warmup = {"adapted_step": np.array([[0.5, 1.1256], [0.6, 1.1256]]), "step_size": np.ones((2, 2))}
    summary = diagnostics.summarize(draws, stats, warmup_stats=warmup)
    assert summary.sampler["step_size_adapted"] == pytest.approx(1.1256)
    assert "step size 0.8004 (mean of the draws' steps; the adapted step, their upper bound, is 1.126)" in str(summary)
    same = diagnostics.summarize(draws, dict(stats, step_size=np.full((2, 200), 1.1256)), warmup_stats=warmup)
    assert "adapted step" not in str(same)
