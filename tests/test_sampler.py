import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from hmc import diagnostics
from physics_models import exact, gaussian, gaussian_covariance, harmonic_oscillator

Z_MAX = 4.5  # per component; several components per test, so a generous but fixed bound


def assert_z(result, name, z_max=Z_MAX):
    s = result.summary().observables[name]
    z = np.abs(np.asarray(s.z))
    assert np.all(np.isfinite(z)), name
    assert np.all(z < z_max), (name, s.mean, s.exact, s.mcse, z)
    return s


@pytest.mark.slow
def test_correlated_gaussian_dense_mass():
    cov = gaussian_covariance(10, condition_number=100.0, correlation=0.7)
    pot = gaussian(dim=10, condition_number=100.0, correlation=0.7)
    r = hmc.sample(
        pot, seed=3, num_chains=16, num_warmup=600, num_samples=600, integrator="leapfrog",
        num_steps=8, mass_matrix="dense", progress=False,
    )
    assert_z(r, "x")
    assert_z(r, "x2")
    # the adapted dense inverse mass matrix is the covariance, not the identity
    minv = r.inverse_mass_matrix
    assert minv.shape == (10, 10)
    rel = np.linalg.norm(minv - cov) / np.linalg.norm(cov)
    assert rel < 0.25, rel
    assert abs(np.mean(r.stats["acceptance_rate"]) - 0.8) < 0.1
    assert np.all(np.isfinite(r.stats["lp"]))


@pytest.mark.slow
def test_harmonic_oscillator_x2_exact():
    pot = harmonic_oscillator(n_sites=64, a=0.5)
    r = hmc.sample(
        pot, seed=0, num_chains=8, num_warmup=300, num_samples=800, trajectory_length=1.5, jitter=0.2,
        progress=False,
    )
    s = assert_z(r, "x2")
    np.testing.assert_allclose(s.exact, 0.48507125007268, rtol=1e-12)
    assert_z(r, "x4")
    assert_z(r, "action")
    corr = r.summary().observables["correlator"]
    np.testing.assert_allclose(corr.exact, exact.lattice_oscillator_correlator(64, 0.5), rtol=1e-14)
    assert np.all(np.abs(corr.z[:9]) < Z_MAX)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.6, 0.9])
def test_warmup_reaches_target_acceptance(target):
    pot = gaussian(dim=50, condition_number=10.0)
    # jittered: with a fixed L = 10 the acceptance of this Gaussian is not monotone in the
    # step (measured at the adapted metric: 0.59, 0.67, 0.75, 0.59, 0.40 at eps = 0.80 ..
    # 1.00), and no step-size rule can hit a target on such a curve
    r = hmc.sample(
        pot, seed=1, num_chains=8, num_warmup=500, num_samples=300, integrator="leapfrog",
        num_steps=10, jitter=0.2, target_accept=target, progress=False,
    )
    acc = float(np.mean(r.stats["acceptance_rate"]))
    assert abs(acc - target) < 0.06, acc
    # the diagonal mass matrix learned the marginal variances (1 .. 1/10)
    cov = gaussian_covariance(50, 10.0)
    np.testing.assert_allclose(r.inverse_mass_matrix, np.diag(cov), rtol=0.35)


@pytest.mark.slow
def test_per_chain_adaptation():
    pot = gaussian(dim=5, condition_number=4.0)
    # jittered steps: with a fixed L = 10 on a Gaussian the chains come out near-periodic and the
    # MCSE of x2 is unreliable (over 40 seeds: z std 1.22 and mean -0.56 without jitter, 1.02 and
    # -0.12 with 0.2)
    r = hmc.sample(pot, seed=2, num_chains=4, num_warmup=300, num_samples=400, adaptation="per_chain",
                   jitter=0.2, progress=False)
    assert r.step_size.shape == (4,)
    assert r.inverse_mass_matrix.shape == (4, 5)
    assert len(set(np.round(r.step_size, 6))) == 4  # each chain found its own step size
    assert_z(r, "x2")


def test_same_seed_bit_identical_and_chunk_size_independent():
    pot = harmonic_oscillator(n_sites=16, a=0.5)
    kw = dict(seed=7, num_chains=3, num_warmup=60, num_samples=50, progress=False, jitter=0.1, integrator="leapfrog",
              num_steps=4)
    a = hmc.sample(pot, chunk_size=100, **kw)
    c = hmc.sample(pot, chunk_size=17, **kw)  # a second run with the same seed, in other chunks: the same bits
    for name in ("x", "x2", "correlator"):
        np.testing.assert_array_equal(a.draws[name], c.draws[name])
    for name in hmc.sampler.STAT_NAMES:
        np.testing.assert_array_equal(a.stats[name], c.stats[name])
    # chains differ from each other, and another seed gives other draws
    x = a.draws["x"]
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])
    d = hmc.sample(pot, chunk_size=100, **{**kw, "seed": 8})
    assert not np.array_equal(a.draws["x"], d.draws["x"])


def test_result_shapes_record_and_thin():
    pot = harmonic_oscillator(n_sites=8, a=0.5)
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=20, num_samples=30, thin=3, record=[], progress=False)
    assert "x" not in r.draws
    assert r.draws["x2"].shape == (2, 30)
    assert r.draws["correlator"].shape == (2, 30, 8)
    for name in hmc.sampler.STAT_NAMES:
        assert r.stats[name].shape == (2, 30), name
    assert r.warmup_stats["acceptance_rate"].shape == (2, 20)
    # thinning: 3 trajectories per draw, each of 10 steps of 2MN
    assert np.all(r.stats["n_steps"] == 10)
    with pytest.raises(ValueError, match="unknown state leaves"):
        hmc.sample(pot, num_samples=2, record=["y"], progress=False)


def test_fixed_step_size_without_warmup_uses_exactly_those_settings():
    pot = gaussian(dim=3)
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=0, num_samples=20, step_size=0.25, num_steps=7,
                   mass_matrix="identity", progress=False)
    assert np.all(r.stats["step_size"] == np.float32(0.25))
    assert np.all(r.stats["n_steps"] == 7)
    with pytest.raises(ValueError, match="num_warmup"):
        hmc.sample(pot, num_warmup=0, step_size=None, progress=False)


def test_trajectory_length_and_jitter():
    pot = gaussian(dim=3)
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=0, num_samples=200, step_size=0.1,
                   trajectory_length=1.0, jitter=0.5, progress=False)
    n = r.stats["n_steps"]
    assert n.min() >= 5 and n.max() <= 15 and len(np.unique(n)) > 5
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=0, num_samples=200, step_size=0.1, num_steps=5,
                   jitter=0.5, progress=False)
    eps = r.stats["step_size"]
    assert eps.min() >= 0.05 - 1e-6 and eps.max() <= 0.15 + 1e-6 and eps.std() > 0.02


@pytest.mark.slow
def test_warmup_trajectory_length_is_warmups_and_the_draws_keep_theirs():
    pot = gaussian(dim=3)
    kwargs = dict(seed=0, num_chains=2, num_warmup=150, num_samples=150, trajectory_length=0.5, jitter=0.2,
                  progress=False)
    r = hmc.sample(pot, warmup_trajectory_length=2.0, **kwargs)
    warm = r.warmup_stats["n_steps"] * r.warmup_stats["step_size"]  # each transition's length
    drawn = r.stats["n_steps"] * r.stats["step_size"]
    assert warm.min() >= 2.0 * 0.8 - 1e-4 and warm.max() <= 2.0 * 1.2 + 1e-4 and warm.std() > 0.05
    assert drawn.min() >= 0.5 * 0.8 - 1e-4 and drawn.max() <= 0.5 * 1.2 + 1e-4
    assert r.settings["warmup_trajectory_length"] == 2.0
    plain = hmc.sample(pot, **kwargs)
    assert "warmup_trajectory_length" not in plain.settings
    assert (plain.warmup_stats["n_steps"] * plain.warmup_stats["step_size"]).max() <= 0.5 * 1.2 + 1e-4
    # the draws start from another warmup, so they differ; both are the sampler's draws of N(0, 1)
    assert not np.array_equal(r.draws["x"], plain.draws["x"])
    for bad, message in ((dict(trajectory_length="auto", jitter=0.0), "needs a float trajectory_length"),
                         (dict(trajectory_length=None, num_steps=5), "needs a float trajectory_length"),
                         (dict(trajectory_length=None, jitter=0.0, kernel="nuts"), "not to kernel='nuts'"),
                         (dict(warmup_trajectory_length=-1.0), "warmup_trajectory_length must be > 0")):
        with pytest.raises(ValueError, match=message):
            hmc.sample(pot, **{**kwargs, "warmup_trajectory_length": 1.0, **bad})


@pytest.mark.slow
def test_pytree_state_with_several_leaves():
    def init(key):
        k1, k2 = jax.random.split(key)
        return {"a": jax.random.normal(k1, (2,)), "b": jax.random.normal(k2, (2, 2))}

    pot = hmc.Potential(
        terms={
            "a": lambda q: 0.5 * jnp.sum(q["a"] ** 2) / 4.0,  # variance 4
            "b": lambda q: 0.5 * jnp.sum(q["b"] ** 2),
        },
        init=init,
        observables={"a2": lambda q: q["a"] ** 2, "b2": lambda q: q["b"] ** 2},
        exact={"a2": 4.0, "b2": 1.0},
    )
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=300, num_samples=600, mass_matrix="dense", progress=False,
                   integrator="leapfrog", num_steps=6, jitter=0.2)
    assert r.draws["b"].shape == (4, 600, 2, 2)
    assert r.inverse_mass_matrix.shape == (6, 6)
    assert_z(r, "a2")
    assert_z(r, "b2")


def test_float64_precision_is_kept():
    pot = gaussian(dim=3)
    try:
        r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=50, num_samples=20, precision="float64", progress=False)
        assert r.draws["x"].dtype == np.float64
        assert r.stats["lp"].dtype == np.float64
        assert r.step_size.dtype == np.float64
    finally:
        jax.config.update("jax_enable_x64", False)


def test_nonfinite_initial_state_is_refused():
    pot = gaussian(dim=3)
    bad = {"x": jnp.array([[0.0, 1.0, 2.0], [0.0, jnp.nan, 0.0]])}
    with pytest.raises(hmc.GuardRefused) as err:
        hmc.sample(pot, num_chains=2, init_positions=bad, num_samples=5, progress=False)
    assert any(e.chain == 1 and e.leaf == "x" and e.indices == [[1]] for e in err.value.events)


def _trapped_potential():
    """A where-trap beyond x = 2.5."""

    def trap(q):
        x = q["x"]
        return jnp.sum(jnp.where(x < 2.5, 0.05 * jnp.sqrt(2.5 - x), 0.0))

    return hmc.Potential(
        terms={"quadratic": lambda q: 0.5 * jnp.sum(q["x"] ** 2), "barrier": trap},
        init=lambda key: {"x": 0.3 * jax.random.normal(key, (4,))},
        observables={"x": lambda q: q["x"]},
    )


@pytest.mark.slow  # trips are named and rejected in the default tier by the ghmc, timescales and run tests
def test_midrun_trap_rejected_draws_finite_and_named():
    """Trajectories that reach the trap trip, are rejected and attributed."""
    pot = _trapped_potential()
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=100, num_samples=300, max_trip_fraction=0.5, progress=False)
    assert not r.halted
    trips = int(r.stats["guard_tripped"].sum() + r.warmup_stats["guard_tripped"].sum())
    assert trips > 0
    assert np.all(np.isfinite(r.draws["x"]))
    assert np.all(r.draws["x"] < 2.5)
    named = [e for e in r.guard_events if e.kind == "nonfinite_gradient"]
    assert named and all(e.term == "barrier" and e.leaf == "x" for e in named)
    assert all(e.action == "rejected" and e.leapfrog_step is not None and e.leapfrog_step >= 0 for e in named)


@pytest.mark.slow
def test_midrun_trap_halts_under_the_halt_policy():
    """The halt policy stops at the end of the first chunk with a trip."""
    pot = _trapped_potential()
    h = hmc.sample(pot, seed=0, num_chains=4, num_warmup=100, num_samples=300, guard="halt", progress=False)
    assert h.halted and "halt" in h.halt_reason
    assert all(e.action == "halted" for e in h.guard_events)


def test_summary_table_and_dict():
    pot = harmonic_oscillator(n_sites=8, a=0.5)
    # the settings of test_result_shapes_record_and_thin: its programs come from the compilation cache
    r = hmc.sample(pot, seed=0, num_chains=2, num_warmup=20, num_samples=30, thin=3, record=[], progress=False)
    s = r.summary()
    text = s.table()
    assert "x2" in text and "exact" in text and "E-BFMI" in text
    d = s.to_dict()
    assert set(d["observables"]) == {"x2", "x4", "correlator", "action"}
    assert d["sampler"]["num_chains"] == 2 and d["sampler"]["num_draws"] == 30
    assert isinstance(diagnostics.ebfmi(r.stats["energy"]), np.ndarray)


def test_minus_infinite_proposal_energy_is_rejected():
    """An energy that overflows to -inf at an absurd proposal must not be accepted."""

    def quadratic_that_overflows(q):
        x = q["x"]
        return jnp.where(jnp.abs(x[0]) > 50.0, -jnp.inf, 0.5 * jnp.sum(x**2))

    pot = hmc.Potential(terms={"u": quadratic_that_overflows}, init=lambda key: {"x": 0.1 * jax.random.normal(key, (2,))})
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=0, num_samples=50, step_size=30.0, num_steps=1,
                   integrator="leapfrog", guard="off", progress=False)
    assert np.all(np.abs(r.draws["x"][..., 0]) <= 50.0)
    assert np.all(np.isfinite(r.stats["lp"]))


def test_stop_and_resume_in_process_is_bit_exact():
    """The default tier's stand-in for the kill-and-resume runs: stop after a warmup
    chunk and after a sampling chunk, resume from each snapshot, get the same draws."""
    pot = gaussian(dim=3)
    kw = dict(seed=5, num_chains=3, num_warmup=40, num_samples=45, chunk_size=20, num_steps=4, progress=False)
    whole = hmc.sample(pot, **kw)
    for stop_at in (1, 4):  # in warmup; in sampling
        saved = []

        def stop(end, stop_at=stop_at):
            saved.append(end.snapshot())
            return len(saved) == stop_at

        assert hmc.sample(pot, **kw, on_chunk=stop).stopped
        again = hmc.sample(pot, **kw, resume=saved[-1])
        for group in ("draws", "stats", "warmup_stats"):
            for k, v in getattr(whole, group).items():
                np.testing.assert_array_equal(v, getattr(again, group)[k], err_msg=f"{group}[{k}] after {stop_at}")
        np.testing.assert_array_equal(whole.step_size, again.step_size)


@pytest.mark.slow
def test_max_num_steps_caps_a_long_trajectory_and_says_so(caplog):
    # a fixed step 1000 times shorter than the trajectory: 1000 steps asked, 50 taken
    import logging

    pot = gaussian(dim=3)
    with caplog.at_level(logging.WARNING, logger="hmc"):
        r = hmc.sample(pot, num_chains=2, num_warmup=0, num_samples=5, step_size=0.001, trajectory_length=1.0,
                       max_num_steps=50, progress=False)
    assert (r.stats["n_steps"] == 50).all()
    assert np.allclose(r.stats["step_size"], 0.001)  # the step is kept, the trajectory shortened
    assert sum("max_num_steps=50" in m for m in caplog.messages) == 1
    with pytest.raises(ValueError, match="max_num_steps"):
        hmc.sample(pot, num_chains=2, num_warmup=0, num_samples=5, step_size=0.1, max_num_steps=0, progress=False)
    # with an adapted length the line names it as such (it once failed to format 'auto' as a number)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hmc"):
        hmc.sample(pot, num_chains=2, num_warmup=100, num_samples=5, trajectory_length="auto", max_num_steps=2,
                   progress=False)
    assert sum("max_num_steps=2 " in m and "trajectory_length=auto (adapted)" in m for m in caplog.messages) == 1


@pytest.mark.slow
def test_record_auto_keeps_small_leaves_and_drops_large_ones_with_a_log_line(caplog):
    import logging

    import physics_models

    small = harmonic_oscillator(n_sites=16)  # 16 numbers per chain: recorded
    r = hmc.sample(small, num_chains=2, num_warmup=0, num_samples=3, step_size=0.1, progress=False)
    assert r.draws["x"].shape == (2, 3, 16)
    large = physics_models.phi4(shape=(20, 20), m2=-1.0, lam=0.5)  # 400 numbers: observables only
    with caplog.at_level(logging.INFO, logger="hmc"):
        r = hmc.sample(large, num_chains=2, num_warmup=0, num_samples=3, step_size=0.1, progress=False)
    assert "phi" not in r.draws and "phi2" in r.draws
    assert sum("record: auto" in m and "phi: 400" in m for m in caplog.messages) == 1
    r = hmc.sample(large, num_chains=2, num_warmup=0, num_samples=3, step_size=0.1, record=None, progress=False)
    assert r.draws["phi"].shape == (2, 3, 20, 20)
    with pytest.raises(ValueError, match="record must be"):
        hmc.sample(large, num_chains=2, num_warmup=0, num_samples=3, step_size=0.1, record="all", progress=False)


def test_hmc_without_a_length_adapts_one_where_it_can_and_takes_ten_steps_where_it_cannot(caplog):
    import logging

    from hmc import config
    from hmc.settings import default_length

    with caplog.at_level(logging.INFO, logger="hmc"):
        r = hmc.sample(gaussian(dim=2), num_chains=2, num_warmup=100, num_samples=5, progress=False)
    assert (r.settings["trajectory_length"], r.settings["num_steps"]) == ("auto", None)
    assert "trajectory_length: auto (kernel 'hmc' without num_steps or trajectory_length" in caplog.text
    assert default_length(0.0, None, {"num_warmup": 100, "adaptation": "pooled"}) == "auto"
    assert default_length(0.0, None, {"num_warmup": 50}) is None  # too short to adapt a length: 10 steps
    assert default_length(0.2, None, {"num_warmup": 500}) is None  # a jittered fixed length was asked for
    assert default_length(0.0, None, {"adaptation": "per_chain"}) is None
    assert default_length(0.0, {"replicas": 4}, {}) is None
    cfg = config.build({"model": {"name": "gaussian"}})
    assert config.sample_kwargs(cfg)["num_steps"] is None and config.sample_kwargs(cfg)["trajectory_length"] is None
