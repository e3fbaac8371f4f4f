"""kernel='nuts': numpyro's tree driven by our integrators, the guard in every leaf."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from hmc import config, kernels
from hmc.kernels import NUTS, Params
from physics_models import broken, gaussian

Z_MAX = 4.5


def _z_ok(result, names):
    s = result.summary().observables
    for name in names:
        z = np.atleast_1d(np.asarray(s[name].z))
        assert np.all(np.isfinite(z)) and np.all(np.abs(z) < Z_MAX), (name, s[name].mean, s[name].exact, z)


@pytest.mark.slow
def test_nuts_samples_a_correlated_gaussian():
    pot = gaussian(dim=5, condition_number=10.0, correlation=0.5)
    r = hmc.sample(pot, kernel="nuts", seed=0, num_chains=4, num_warmup=300, num_samples=600, mass_matrix="dense",
                   progress=False)
    _z_ok(r, ["x", "x2"])
    assert not r.guard_events and r.stats["tree_depth"].shape == (4, 600)
    # the leaves of a tree of depth d: at most 2**d - 1 (numpyro's iterative builder)
    assert np.all(r.stats["n_steps"] <= 2 ** r.stats["tree_depth"] - 1) and np.all(r.stats["n_steps"] >= 1)
    assert abs(float(np.mean(r.stats["acceptance_rate"])) - 0.8) < 0.1
    assert r.settings["kernel"] == "nuts" and r.settings["max_tree_depth"] == 10


def test_max_tree_depth_caps_the_tree():
    pot = gaussian(dim=4, condition_number=100.0)
    r = hmc.sample(pot, kernel="nuts", max_tree_depth=3, step_size=0.01, num_warmup=0, num_samples=20,
                   num_chains=2, mass_matrix="identity", progress=False)
    assert np.all(r.stats["tree_depth"] == 3) and np.all(r.stats["n_steps"] == 7)
    text = str(r.summary())
    assert "100.0% of transitions at the maximum depth" in text and "exp(-dH)" not in text


def _barrier_line() -> str:
    lines, start = inspect.getsourcelines(broken.where_trap)
    return f"broken.py:{start + next(i for i, line in enumerate(lines) if '# fault' in line)}"


def test_a_broken_gradient_inside_the_tree_is_located_and_rejected():
    """broken.where_trap: NaN gradient past the wall at x = WALL. From a state just inside
    it, with momentum towards it, a tree step crosses it: the kernel flags the trip, keeps
    the start state, and locates the leaf where the gradient broke."""
    pot = broken.where_trap()
    kernel = NUTS().build(pot.energy, "step")
    x0 = jnp.array([broken.WALL - 0.3, 0.0, 0.0, 0.0])
    state = kernel.init({"x": x0})
    found = []
    for i in range(40):
        new, info = jax.jit(kernel.step)(jax.random.key(i), state, Params(jnp.float32(0.2), None))
        if bool(info.guard_tripped):
            found.append(i)
            np.testing.assert_array_equal(new.position["x"], x0)  # rejected: the chain keeps its state
            assert 0 <= int(info.guard_step) < int(info.num_steps)
            g = jax.grad(pot.energy)(info.guard_position)["x"]
            assert not np.all(np.isfinite(g)) and float(jnp.max(info.guard_position["x"])) >= broken.WALL
            assert not bool(info.is_divergent) and float(info.acceptance_rate) == 0.0
        else:
            assert int(info.guard_step) == -1
    assert found, "no tree reached the wall"


@pytest.mark.slow  # the default tier locates a trip in the tree; the driver names it as for ghmc, timescales
def test_nuts_trips_are_named_with_the_tree_step():
    pot = broken.where_trap()
    r = hmc.sample(pot, kernel="nuts", seed=0, num_chains=4, num_warmup=100, num_samples=150, max_trip_fraction=1.0,
                   progress=False)
    trips = int(r.stats["guard_tripped"].sum() + r.warmup_stats["guard_tripped"].sum())
    events = [e for e in r.guard_events if e.kind == "nonfinite_gradient"]
    assert trips > 0 and events
    for e in events:
        assert (e.term, e.leaf, e.primitive, e.source) == ("barrier", "x", "pow", _barrier_line())
        assert e.chain in range(4) and e.draw is not None and e.leapfrog_step >= 0 and e.action == "rejected"
    assert np.all(np.isfinite(r.draws["x"]))


def test_a_blow_up_is_a_divergence_not_a_trip():
    """exp(x^2) overflows in float32 once the tree runs away with too large a step: a
    divergence (the energy had already risen past the threshold), never a guard trip."""
    pot = hmc.Potential(terms={"steep": lambda q: jnp.sum(jnp.exp(q["x"] ** 2))},
                        init=lambda key: {"x": 0.1 * jax.random.normal(key, (2,))})
    kernel = NUTS().build(pot.energy, "step")
    state = kernel.init({"x": jnp.array([1.0, -1.0])})
    infos = [jax.jit(kernel.step)(jax.random.key(i), state, Params(jnp.float32(2.0), None))[1] for i in range(10)]
    assert any(bool(i.is_divergent) for i in infos)
    assert not any(bool(i.guard_tripped) for i in infos)


@pytest.mark.slow
def test_nuts_draws_do_not_depend_on_the_chunk_size():
    pot = gaussian(dim=3)
    runs = [hmc.sample(pot, kernel="nuts", seed=4, num_chains=2, num_warmup=30, num_samples=25, chunk_size=c,
                       progress=False) for c in (7, 100)]
    for k in runs[0].draws:
        np.testing.assert_array_equal(runs[0].draws[k], runs[1].draws[k])
    for k in runs[0].stats:
        np.testing.assert_array_equal(runs[0].stats[k], runs[1].stats[k])


@pytest.mark.slow
def test_nuts_resume_is_bit_exact():
    pot = gaussian(dim=3)
    kw = dict(kernel="nuts", seed=7, num_chains=2, num_warmup=50, num_samples=60, chunk_size=20, progress=False)
    whole = hmc.sample(pot, **kw)
    saved = []

    def stop_after_three(end):
        saved.append(end.snapshot())
        return len(saved) == 3

    assert hmc.sample(pot, **kw, on_chunk=stop_after_three).stopped
    again = hmc.sample(pot, **kw, resume=saved[-1])
    for group in ("draws", "stats"):
        for k, v in getattr(whole, group).items():
            np.testing.assert_array_equal(v, getattr(again, group)[k], err_msg=k)


def test_nuts_settings_errors():
    with pytest.raises(ValueError, match="num_steps does not apply to kernel='nuts'"):
        hmc.sample(gaussian(dim=2), kernel="nuts", num_steps=5, progress=False)
    with pytest.raises(ValueError, match="jitter does not apply"):
        hmc.sample(gaussian(dim=2), kernel="nuts", jitter=0.2, progress=False)
    with pytest.raises(ValueError, match="max_tree_depth applies to kernel='nuts' only"):
        hmc.sample(gaussian(dim=2), max_tree_depth=4, progress=False)
    with pytest.raises(ValueError, match="timescales .* need kernel='hmc'"):
        hmc.sample(gaussian(dim=2), kernel="nuts", timescales=[{"terms": ["quadratic"]}], progress=False)
    with pytest.raises(ValueError, match="tempering needs a kernel that can temper"):
        hmc.sample(gaussian(dim=2), kernel="nuts", tempering={"replicas": 4}, progress=False)
    with pytest.raises(ValueError, match="max_tree_depth must be an integer in"):
        NUTS(max_tree_depth=0)
    with pytest.raises(ValueError, match="trajectory_length does not apply to kernel='nuts'"):
        hmc.sample(gaussian(dim=2), kernel="nuts", trajectory_length="auto", progress=False)
    assert kernels.resolve("nuts", integrator="leapfrog", jitter=0.0, divergence_threshold=1000.0) == NUTS()
    cfg = config.build({"model": {"name": "gaussian"}, "sampler": {"kernel": "nuts", "max_tree_depth": 6}})
    kwargs = config.sample_kwargs(cfg)
    assert kwargs["kernel"] == "nuts" and kwargs["max_tree_depth"] == 6 and kwargs["num_steps"] is None
    # a sweep over the kernel: each point takes its kernel's own defaults
    sweep = config.build({"model": {"name": "gaussian"}, "sweep": {"sampler.kernel": ["hmc", "nuts"]}})
    config.check_sweep(sweep)
    points = [config.sweep_config(sweep, i).sampler for i in range(2)]
    assert [(p.kernel, p.integrator, p.num_steps) for p in points] == [("hmc", "minimum_norm", None),
                                                                        ("nuts", "leapfrog", None)]


@pytest.mark.slow
def test_physics_models_with_nuts_against_exact_values():
    """scripts/validate.py --kernel nuts on the Gaussian, the oscillators, phi^4 and U(1)
    (fewer draws): |z| < 4 over the family of rows."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).parents[1] / "scripts" / "validate.py"
    spec = importlib.util.spec_from_file_location("validate_nuts", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--kernel", "nuts", "--z-pass", "4.0", "gaussian", "harmonic_oscillator",
                        "phi4", "u1_gauge"]) == 0
