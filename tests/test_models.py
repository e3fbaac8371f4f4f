"""physics_models: exact references against the published numbers, factories,
registry, guard cleanliness, and fast sampling checks against exact values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models
from hmc.potential import cast_tree
from hmc import guard
from physics_models import exact

Z_MAX = 4.5


# -- exact references reproduce the published values ---------------------------------------
def test_oscillator_closed_form():
    assert exact.lattice_oscillator_x2(64, 0.5) == pytest.approx(0.48507125007268, abs=1e-13)
    assert exact.lattice_oscillator_x2(32, 0.1) == pytest.approx(0.54187648843177, abs=1e-13)
    corr = exact.lattice_oscillator_correlator(64, 0.5)
    np.testing.assert_allclose(corr[[1, 2, 4, 8, 16]],
                               [0.295705156332, 0.180265351674, 0.066991389428, 0.009251932076, 1.76465331e-4],
                               atol=1e-12)
    assert exact.lattice_oscillator_gap(0.5) == pytest.approx(0.9898658462, abs=1e-9)


def test_transfer_matrix_matches_closed_form_and_references():
    ho = exact.transfer_matrix_moments(lambda x: 0.5 * x**2, 64, 0.5)
    assert ho["x2"] == pytest.approx(0.48507125007268, abs=1e-8)
    np.testing.assert_allclose(ho["correlator"][:5], exact.lattice_oscillator_correlator(64, 0.5)[:5], atol=1e-8)
    an = exact.anharmonic_moments(64, 0.5, 1.0)
    assert an["x2"] == pytest.approx(0.2419336950, abs=2e-9)
    assert an["x4"] == pytest.approx(0.1519840855, abs=2e-9)
    assert an["gap"] == pytest.approx(1.80328314, abs=2e-7)
    an = exact.anharmonic_moments(64, 0.5, 0.1)
    assert an["x2"] == pytest.approx(0.3979230817, abs=2e-9)
    dw = exact.double_well_moments(200, 0.1, 1.4)
    assert dw["x2"] == pytest.approx(1.3492451486, abs=2e-8)


def test_classical_double_well_identity():
    for h, x2 in ((1.0, 0.832745487128), (5.0, 0.936833940412)):
        m = exact.classical_double_well_moments(h)
        assert m["x2"] == pytest.approx(x2, abs=1e-10)
        assert m["x4"] - m["x2"] == pytest.approx(1 / (4 * h), abs=1e-10)


def test_free_field_and_u1_references():
    assert exact.free_field_phi2((8, 8), 0.25) == pytest.approx(0.38550118908909, abs=1e-12)
    assert exact.free_field_phi2((16, 16), 1.0) == pytest.approx(0.25404987875744, abs=1e-12)
    assert exact.u1_plaquette(2.0, 64) == pytest.approx(0.69777465801084, abs=1e-12)
    assert exact.u1_plaquette(4.0, 16) == pytest.approx(0.87069775188491, abs=1e-12)
    assert exact.u1_plaquette(1.0, 256) == pytest.approx(0.44638996589653, abs=1e-12)
    assert exact.u1_topological_susceptibility(2.0, 64) == pytest.approx(0.019364045480, abs=1e-11)
    assert exact.u1_topological_susceptibility(4.0, 16) == pytest.approx(0.001993168502, abs=1e-11)
    assert exact.u1_topological_susceptibility(4.0, 256) == pytest.approx(0.007554213055, abs=1e-11)


def test_statistical_references():
    assert exact.funnel_moments(10)["x2"] == pytest.approx(90.0171313005, abs=1e-9)
    assert exact.funnel_moments(10)["abs_x"] == pytest.approx(2.4576574677, abs=1e-9)
    r = exact.rosenbrock_moments(1.0, 100.0)
    assert (r["y"], r["y_var"]) == pytest.approx((1.5, 2.505))
    r = exact.rosenbrock_moments(1 / 20, 5.0)
    assert (r["y"], r["y_var"]) == pytest.approx((11.0, 240.1))


# -- registry and factories ----------------------------------------------------------------
def test_registry_lists_every_model_with_parameters():
    assert set(physics_models.REGISTRY) == {
        "gaussian", "funnel", "rosenbrock", "harmonic_oscillator", "anharmonic_oscillator", "double_well",
        "classical_double_well", "phi4", "u1_gauge", "lennard_jones", "schwinger", "yang_mills", "qcd",
    }
    params = physics_models.parameters("phi4")
    assert set(params) >= {"shape", "m2", "lam"}
    with pytest.raises(KeyError, match="registered models"):
        physics_models.get("phi5")


TERMS = {
    "gaussian": ({"dim": 3}, {"quadratic"}, {"x", "x2"}),
    "funnel": ({}, {"scale", "conditional"}, {"v", "x2"}),
    "rosenbrock": ({}, {"marginal", "conditional"}, {"x", "y"}),
    "harmonic_oscillator": ({}, {"kinetic", "harmonic"}, {"x2", "x4", "correlator", "action"}),
    "anharmonic_oscillator": ({}, {"kinetic", "harmonic", "quartic"}, {"x2", "x4", "correlator", "action"}),
    "double_well": ({}, {"kinetic", "potential"}, {"x2", "x4", "sign_flips"}),
    "classical_double_well": ({}, {"potential"}, {"x", "x2", "x4"}),
    "phi4": ({}, {"kinetic", "mass", "quartic"}, {"magnetization", "abs_magnetization", "phi2", "action"}),
    "u1_gauge": ({}, {"wilson"}, {"plaquette", "topological_charge", "topological_charge_sin"}),
    "schwinger": ({"L": 4}, {"gauge", "fermion"}, {"plaquette", "topological_charge", "condensate"}),
    "lennard_jones": ({}, {"pair", "wall", "com"}, {"energy", "radius_of_gyration"}),
    "yang_mills": ({"group": "SU(2)", "shape": (2, 3)}, {"gauge"},
                   {"plaquette", "rectangle", "polyakov_loop", "polyakov_loop_abs", "wilson_loops"}),
}


@pytest.mark.parametrize("name, precision", [
    # the Schwinger model's preflight (a CG solve op by op) is the costliest: float64 in the slow tier
    pytest.param(name, precision, marks=[pytest.mark.slow] if (name, precision) in (
        ("schwinger", "float64"), ("yang_mills", "float64"), ("yang_mills", "float32")) else [])
    for name in sorted(TERMS) for precision in ("float32", "float64")])
def test_model_contract_and_guard_clean(name, precision):
    params, terms, observables = TERMS[name]
    pot = physics_models.get(name)(**params)
    assert set(pot.terms) == terms
    assert observables <= set(pot.observables)
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.float64 if precision == "float64" else jnp.float32
        q = cast_tree(pot.init(jax.random.key(3)), dtype)  # complex leaves (links) to complex64/128
        report = guard.preflight(pot, q)
        assert report.ok and report.events == [], [str(e) for e in report.events]
        obs = pot.observe(q)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in obs.values())


@pytest.mark.parametrize("bad", [
    ("harmonic_oscillator", {"n_sites": 1}, "n_sites"),
    ("phi4", {"lam": 0.0, "m2": -1.0}, "m2"),
    ("phi4", {"start": "warm"}, "start"),
    ("u1_gauge", {"beta": 0.0}, "beta"),
    ("lennard_jones", {"wall_radius": 0.5}, "wall_radius"),
    ("gaussian", {"correlation": 1.0}, "correlation"),
])
def test_factories_reject_bad_parameters(bad):
    name, params, key = bad
    with pytest.raises(ValueError, match=key):
        physics_models.get(name)(**params)


def test_u1_topological_charge_is_an_integer():
    pot = physics_models.u1_gauge(L=6, beta=1.0)
    q = pot.init(jax.random.key(0))
    charge = float(pot.observe(q)["topological_charge"])
    assert abs(charge - round(charge)) < 1e-4


def test_lennard_jones_pair_gradient_is_finite_at_coincident_diagonal():
    pot = physics_models.lennard_jones(n_atoms=4)
    q = pot.init(jax.random.key(0))
    g = jax.grad(pot.terms["pair"])(q)
    assert np.all(np.isfinite(np.asarray(g["r"])))


# -- sampling against exact values (fast cases; scripts/validate.py runs them all) -----------
def _check(result, names):
    s = result.summary().observables
    for name in names:
        z = np.atleast_1d(np.asarray(s[name].z))[:4]
        assert np.all(np.isfinite(z)) and np.all(np.abs(z) < Z_MAX), (name, s[name].mean, s[name].exact, z)


@pytest.mark.slow
def test_u1_strong_finite_volume_case():
    pot = physics_models.u1_gauge(L=4, beta=4.0)
    r = hmc.sample(pot, seed=0, num_chains=8, num_warmup=300, num_samples=1500, trajectory_length=1.0,
                   jitter=0.2, mass_matrix="identity", progress=False)
    _check(r, ["plaquette", "topological_susceptibility"])


@pytest.mark.slow
def test_anharmonic_oscillator_against_transfer_matrix():
    pot = physics_models.anharmonic_oscillator(n_sites=32, a=0.5, g=1.0)
    r = hmc.sample(pot, seed=1, num_chains=8, num_warmup=300, num_samples=800, trajectory_length=1.5,
                   jitter=0.2, progress=False)
    _check(r, ["x2", "x4", "correlator"])


@pytest.mark.slow
def test_free_field_phi2_and_susceptibility():
    pot = physics_models.phi4(shape=(8, 8), m2=0.25, lam=0.0)
    r = hmc.sample(pot, seed=2, num_chains=8, num_warmup=300, num_samples=1000, trajectory_length=1.5,
                   jitter=0.2, progress=False)
    _check(r, ["phi2", "magnetization", "action", "susceptibility"])
    binder = r.summary().observables["binder_cumulant"]
    assert np.isfinite(binder.mean) and binder.mcse > 0


@pytest.mark.slow
def test_classical_double_well():
    r = hmc.sample(physics_models.classical_double_well(height=1.0, dim=4), seed=3, num_chains=8, num_warmup=300,
                   num_samples=1000, trajectory_length=2.0, jitter=0.3, progress=False)
    _check(r, ["x", "x2", "x4"])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="Rosenbrock's tails need a smaller step than any state warmup visits: "
                   "<y> comes out 5 % low (z -4.8, 15 divergences) now that the ESS is 15x larger; the earlier "
                   "warmup hid the same tail with 511 divergences under an MCSE 5x larger")
def test_rosenbrock():
    r = hmc.sample(physics_models.rosenbrock(), seed=3, num_chains=8, num_warmup=500, num_samples=1500,
                   mass_matrix="dense", trajectory_length=3.0, jitter=0.3, progress=False)
    _check(r, ["x", "y"])


@pytest.mark.slow
def test_lj13_quench_reaches_global_minimum():
    pot = physics_models.lennard_jones(n_atoms=13, temperature=0.2)
    r = hmc.sample(pot, seed=4, num_chains=4, num_warmup=300, num_samples=300, trajectory_length=1.0, jitter=0.2,
                   progress=False)
    assert np.all(np.isfinite(r.draws["energy"]))
    best = min(physics_models.quench(r.draws["r"][c, -1])[0] for c in range(4))
    assert best == pytest.approx(-44.326801, abs=1e-5)


@pytest.mark.slow
def test_validation_script_all_cases():
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).parents[1] / "scripts" / "validate.py"
    spec = importlib.util.spec_from_file_location("validate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    # ~96 rows, each |z| < 3 alone fails about one run in four: bound the family instead
    # (Bonferroni at 1 % over 100 rows: |z| < 3.9)
    assert module.main(["--quick", "--z-pass", "4.0"]) == 0


def test_phi4_cold_start_sits_in_a_vacuum_with_a_random_sign_per_chain():
    pot = physics_models.phi4(shape=(8, 8), m2=-1.0, lam=0.5, start="cold")  # v = 1
    fields = np.stack([np.asarray(pot.init(jax.random.key(k))["phi"]) for k in range(16)])
    means = fields.mean(axis=(1, 2))
    np.testing.assert_allclose(np.abs(means), 1.0, atol=0.05)
    assert 0 < np.sum(means > 0) < 16  # both vacua among 16 chains
    assert 0.05 < float(np.std(fields - means[:, None, None])) < 0.15
    # the hot start is the default and is unchanged: 0.5 N(0, 1) from the key
    hot = physics_models.phi4(shape=(8, 8), m2=-1.0, lam=0.5)
    np.testing.assert_array_equal(hot.init(jax.random.key(3))["phi"], 0.5 * jax.random.normal(jax.random.key(3), (8, 8)))
    assert float(np.std(physics_models.phi4(shape=(8, 8), m2=1.0, lam=0.5, start="cold").init(
        jax.random.key(0))["phi"])) < 0.15  # symmetric phase: the vacuum is 0
