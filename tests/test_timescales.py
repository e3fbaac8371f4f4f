"""Nested integration by term (``timescales``): the flattened schedule, its symplectic
properties, the energy-error order of each level, and the driver with levels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from hmc import integrators
from hmc.forces import suggest_steps
from hmc.config import ConfigError, RunConfig
from hmc.reversibility import format_report
from physics_models import phi4


# Two levels: a soft anharmonic "outer" part and a stiff harmonic "inner" part.
def soft(q):
    x = q["x"]
    return jnp.sum(0.25 * x**4) + 0.3 * x[0] * x[1]


def stiff(q):
    x = q["x"]
    return 0.5 * 25.0 * jnp.sum(x**2) + 2.0 * x[1] * x[2]


def middle(q):
    return 0.5 * jnp.sum(jnp.cos(q["x"]))


Q0, P0 = np.array([0.3, -0.2, 0.1]), np.array([0.5, 0.2, -0.7])


def start():
    """The start point in float64 (call under ``jax.enable_x64``)."""
    return {"x": jnp.asarray(Q0)}, {"x": jnp.asarray(P0)}


def nested(name, energies, steps, q, p, eps, n, tables=None):
    split = integrators.Split(tuple(energies), tuple(steps), tables)
    metric = integrators.euclidean_metric(None, q)
    _, grads = split.value_and_grads(q)
    state = integrators.IntegratorState(q, p, grads)
    end, flags, u_end = integrators.integrate_to_energy(name, None, metric.velocity, state, eps, n, split=split)
    dh = u_end + metric.kinetic_energy(end.momentum) - split.energy(q) - metric.kinetic_energy(p)
    return end, dh


def textbook(name, energies, steps, q, p, eps, n, tables=None):
    """The nested scheme written the slow way: recursion, one kick per coefficient, no
    merging, every gradient fresh; level ``i`` with ``tables[i]`` when given."""

    def level(i, q, p, h):
        table = name if tables is None else tables[i]
        for k, c in enumerate(integrators.coefficients(table)):
            if k % 2 == 0:
                g = jax.grad(energies[i])(q)["x"]
                if integrators.shift(table, k):  # force-gradient: the force at q - xi h^2 dU/dq
                    g = jax.grad(energies[i])({"x": q["x"] - integrators.shift(table, k) * h ** 2 * g})["x"]
                p = {"x": p["x"] - c * h * g}
            elif i == len(energies) - 1:
                q = {"x": q["x"] + c * h * p["x"]}
            else:
                for _ in range(steps[i + 1]):
                    q, p = level(i + 1, q, p, c * h / steps[i + 1])
        return q, p

    for _ in range(n):
        for _ in range(steps[0]):
            q, p = level(0, q, p, eps / steps[0])
    return q, p


# the largest fourth-order schedules compile for seconds each: the slow tier checks them
HEAVY_SCHEDULES = {("yoshida4", (2, 2)), ("yoshida4", (1, 2, 3)), ("force_gradient", (1, 2, 3))}


@pytest.mark.parametrize("name, steps", [
    pytest.param(name, steps, marks=[pytest.mark.slow] if (name, steps) in HEAVY_SCHEDULES else [],
                 id=f"{name}-{'x'.join(map(str, steps))}")
    for steps in [(1, 3), (2, 2), (1, 2, 3)] for name in sorted(integrators.COEFFICIENTS)])
def test_flattened_schedule_is_the_nested_scheme(name, steps):
    energies = [soft, stiff, middle][: len(steps)]
    with jax.enable_x64(True):
        q0, p0 = start()
        end, _ = nested(name, energies, steps, q0, p0, 0.05, 4)
        q, p = textbook(name, energies, steps, q0, p0, 0.05, 4)
    np.testing.assert_allclose(end.position["x"], q["x"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(end.momentum["x"], p["x"], rtol=1e-12, atol=1e-13)


def test_schedule_merges_kicks_and_counts_each_level():
    plan = integrators.schedule("leapfrog", (1, 3))
    # outer half kick with the inner half kick, three inner drifts, inner kicks merged between them
    assert plan.drifts == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert [[lev for lev, _ in g] for g in plan.groups] == [[0, 1], [1], [1], [0, 1]]
    assert dict(plan.boundary) == pytest.approx({0: 1.0, 1: 1 / 3})
    assert integrators.evaluations_per_step("leapfrog", (1, 3)) == (1, 3)
    # 2MN: two outer drifts of 5 inner 2MN steps each -> 2 outer, 2 * 5 * 2 inner forces
    assert integrators.evaluations_per_step("minimum_norm", (1, 5)) == (2, 20)
    # one level, one step: the coefficient table itself
    flat = integrators.schedule("minimum_norm")
    table = integrators.coefficients("minimum_norm")
    assert flat.drifts == table[1::2] and [g[0][1] for g in flat.groups] == list(table[0::2])


MIXED = [("minimum_norm", "leapfrog", "minimum_norm"), ("leapfrog", "yoshida4", "minimum_norm"),
         ("force_gradient", "minimum_norm", "force_gradient")]


@pytest.mark.parametrize("tables", [MIXED[0], *(pytest.param(t, marks=pytest.mark.slow) for t in MIXED[1:])])
def test_a_level_with_its_own_integrator_is_the_nested_scheme(tables):
    with jax.enable_x64(True):
        q0, p0 = start()
        # compiled once for the trajectory and its reverse
        run = jax.jit(lambda q, p: nested("minimum_norm", [soft, middle, stiff], (1, 2, 3), q, p, 0.05, 4, tables))
        end, _ = run(q0, p0)
        q, p = textbook("minimum_norm", [soft, middle, stiff], (1, 2, 3), q0, p0, 0.05, 4, tables)
        back, _ = run(end.position, {"x": -end.momentum["x"]})

        def flow(z):
            e, _ = nested("minimum_norm", [soft, middle, stiff], (1, 2, 3), {"x": z[:3]}, {"x": z[3:]}, 0.1, 3,
                          tables)
            return jnp.concatenate([e.position["x"], e.momentum["x"]])

        det = float(jnp.linalg.det(jax.jacfwd(flow)(jnp.asarray(np.concatenate([Q0, P0])))))
    np.testing.assert_allclose(end.position["x"], q["x"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(end.momentum["x"], p["x"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(back.position["x"], Q0, atol=1e-12)
    np.testing.assert_allclose(-back.momentum["x"], P0, atol=1e-12)
    assert abs(det - 1.0) < 1e-10


def test_a_leapfrog_middle_level_makes_one_force_per_call():
    """2MN outside and inside, the middle level leapfrog: the middle makes one force per call
    (two per outer step) where 2MN makes two, and the innermost half as many steps."""
    all_2mn = integrators.evaluations_per_step("minimum_norm", (1, 1, 4))
    mixed = integrators.evaluations_per_step("minimum_norm", (1, 1, 4), ("minimum_norm", "leapfrog", "minimum_norm"))
    assert all_2mn == (2, 4, 32) and mixed == (2, 2, 16)
    kernel = hmc.kernels.HMC(num_steps=3, timescales=[{"terms": ["a"]}, {"terms": ["b"], "integrator": "leapfrog"},
                                                      {"terms": ["c"], "steps": 4}])
    assert kernel.level_integrators == ("minimum_norm", "leapfrog", "minimum_norm")
    assert kernel.evaluations_per_level == (2, 2, 16) and kernel.gradients_per_step == 2
    levels = [{"terms": ["a"]}, {"terms": ["b"], "integrator": "leapfrog", "steps": 1}, {"terms": ["c"], "steps": 4}]
    assert integrators.gradient_evaluations_per_step("leapfrog", levels) == 1  # the outer level's table is leapfrog


@pytest.mark.slow
def test_energy_error_order_of_a_leapfrog_level_under_2mn():
    """A leapfrog inner level under a 2MN outer one: both errors fall as the second power
    (the inner one measured as in :func:`test_energy_error_order_of_each_level`)."""
    tables = ("minimum_norm", "leapfrog")

    def dh(steps, eps, n):
        run = jax.jit(jax.vmap(lambda q, p: nested("minimum_norm", [soft, stiff], steps, {"x": 0.4 * q}, {"x": p},
                                                   eps, n, tables)[1]))
        return np.asarray(run(jnp.asarray(STARTS[:, 0]), jnp.asarray(STARTS[:, 1])))

    with jax.enable_x64(True):
        ns = np.array([8, 16, 32])
        outer = [np.sqrt(np.mean(dh((1, 2), 1.0 / n, int(n)) ** 2)) for n in ns]
        ks = np.array([2, 4, 8])
        runs = {int(k): dh((1, int(k)), 0.2, 1) for k in (*ks, 16)}
        inner = [np.sqrt(np.mean((runs[int(k)] - runs[2 * int(k)]) ** 2)) for k in ks]
    assert abs(np.polyfit(np.log(1.0 / ns), np.log(outer), 1)[0] - 2) < 0.3, outer
    assert abs(np.polyfit(np.log(1.0 / ks), np.log(inner), 1)[0] - 2) < 0.3, inner


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n == "yoshida4" else [])
                                  for n in sorted(integrators.COEFFICIENTS)])
def test_nested_is_time_reversible(name):
    energies, steps = [soft, stiff, middle], (1, 2, 3)
    with jax.enable_x64(True):
        q0, p0 = start()
        end, _ = nested(name, energies, steps, q0, p0, 0.07, 5)
        back, _ = nested(name, energies, steps, end.position, {"x": -end.momentum["x"]}, 0.07, 5)
        assert back.position["x"].dtype == jnp.float64
    np.testing.assert_allclose(back.position["x"], Q0, atol=1e-12)
    np.testing.assert_allclose(-back.momentum["x"], P0, atol=1e-12)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n == "yoshida4" else [])
                                  for n in sorted(integrators.COEFFICIENTS)])
def test_nested_has_unit_jacobian(name):
    energies, steps = [soft, stiff], (1, 4)

    def flow(z):
        end, _ = nested(name, energies, steps, {"x": z[:3]}, {"x": z[3:]}, 0.1, 3)
        return jnp.concatenate([end.position["x"], end.momentum["x"]])

    with jax.enable_x64(True):
        jac = jax.jacfwd(flow)(jnp.asarray(np.concatenate([Q0, P0])))
        assert abs(float(jnp.linalg.det(jac)) - 1.0) < 1e-10



def test_check_reversibility_integrates_the_nested_scheme():
    """``hmc.check_reversibility(..., timescales=...)`` checks the scheme the sampler takes:
    reversible and second order, with the nested levels' own energy error; one level holding
    every term is the flat integrator to the last bit."""
    pot = hmc.Potential(terms={"soft": soft, "stiff": stiff}, init=lambda key: {"x": jax.random.normal(key, (3,))})
    kw = dict(precision="float64", step_size=0.1, num_steps=4, num_chains=2, refinements=2)
    try:
        nested = hmc.check_reversibility(pot, timescales=[{"terms": ["soft"], "steps": 1},
                                                          {"terms": ["stiff"], "steps": 5}], **kw)
        flat = hmc.check_reversibility(pot, **kw)
        one_level = hmc.check_reversibility(pot, timescales=[{"terms": ["soft", "stiff"], "steps": 1}], **kw)
        with pytest.raises(ValueError, match="missing"):
            hmc.check_reversibility(pot, timescales=[{"terms": ["missing"], "steps": 1}], **kw)
    finally:
        jax.config.update("jax_enable_x64", False)
    assert nested["max_abs_dq"] < 1e-12 and nested["max_abs_dh"] < 1e-10
    assert abs(nested["slope"] - 2.0) < 0.2 and nested["expected_order"] == 2
    assert abs(nested["mean_abs_dh"][0] / flat["mean_abs_dh"][0] - 1) > 0.5, \
        (nested["mean_abs_dh"], flat["mean_abs_dh"])
    assert one_level["mean_abs_dh"] == flat["mean_abs_dh"] and one_level["dh"] == flat["dh"]
    assert "nested soft x 1 / stiff x 5" in format_report(nested) and flat["timescales"] is None

STARTS = np.random.default_rng(0).normal(size=(6, 2, 3))


def _dh(name, steps, eps, n):
    """dH of one trajectory from each of six starts, compiled once per setting."""
    run = jax.jit(jax.vmap(lambda q, p: nested(name, [soft, stiff], steps, {"x": 0.4 * q}, {"x": p}, eps, n)[1]))
    return np.asarray(run(jnp.asarray(STARTS[:, 0]), jnp.asarray(STARTS[:, 1])))


@pytest.mark.parametrize("name", ["leapfrog", pytest.param("minimum_norm", marks=pytest.mark.slow),
                                  pytest.param("force_gradient", marks=pytest.mark.slow),
                                  pytest.param("yoshida4", marks=pytest.mark.slow)])
def test_energy_error_order_of_each_level(name):
    """The outer level: |dH| at a fixed time against the outer step (with a fixed number of
    inner steps per outer drift, both levels' errors scale with it). The inner level: at a
    fixed outer step, the change of dH when the inner steps per outer drift double,
    ``dH(k) - dH(2k)``, which falls as ``k^-order``."""
    order = integrators.ORDER[name]
    with jax.enable_x64(True):
        ns = np.array([8, 16, 32])
        outer = [np.sqrt(np.mean(_dh(name, (1, 2), 1.0 / n, int(n)) ** 2)) for n in ns]
        outer_slope = np.polyfit(np.log(1.0 / ns), np.log(outer), 1)[0]
        # outer step 0.2 (0.05 for the fourth order, whose asymptotic range starts later)
        inner_steps = np.array([1, 2, 4]) if order == 4 else np.array([2, 4, 8])
        eps = 0.05 if order == 4 else 0.2
        dh = {int(k): _dh(name, (1, int(k)), eps, 1) for k in (*inner_steps, 2 * inner_steps[-1])}
        inner = [np.sqrt(np.mean((dh[int(k)] - dh[2 * int(k)]) ** 2)) for k in inner_steps]
        inner_slope = np.polyfit(np.log(1.0 / inner_steps), np.log(inner), 1)[0]
    assert abs(outer_slope - order) < 0.3, (outer_slope, outer)
    assert abs(inner_slope - order) < 0.3, (inner_slope, inner)


@pytest.mark.slow
def test_one_level_with_every_term_is_the_flat_sampler_bit_for_bit():
    pot = phi4(shape=(4, 4))
    kw = dict(seed=3, num_chains=4, num_warmup=60, num_samples=40, chunk_size=25, progress=False)
    flat = hmc.sample(pot, **kw)
    one = hmc.sample(pot, **kw, timescales=[{"terms": list(pot.terms), "steps": 1}])
    for k in flat.draws:
        assert np.array_equal(flat.draws[k], one.draws[k]), k
    for k in flat.stats:
        assert np.array_equal(flat.stats[k], one.stats[k]), k
    assert one.settings["timescales"] == [{"terms": list(pot.terms), "steps": 1}]


@pytest.mark.slow
def test_a_level_naming_the_samplers_own_integrator_changes_nothing():
    pot = phi4(shape=(4, 4))
    kw = dict(seed=5, num_chains=4, num_warmup=40, num_samples=30, chunk_size=25, progress=False)
    levels = [{"terms": ["quartic"], "steps": 1}, {"terms": ["kinetic", "mass"], "steps": 3}]
    plain = hmc.sample(pot, **kw, timescales=levels)
    named = hmc.sample(pot, **kw, timescales=[dict(level, integrator="minimum_norm") for level in levels])
    mixed = hmc.sample(pot, **kw, timescales=[levels[0], dict(levels[1], integrator="leapfrog")])
    for k in plain.draws:
        assert np.array_equal(plain.draws[k], named.draws[k]), k
    assert not np.array_equal(plain.draws["phi"], mixed.draws["phi"])
    assert mixed.settings["timescales"][1] == {"terms": ["kinetic", "mass"], "steps": 3, "integrator": "leapfrog"}
    assert plain.settings["timescales"][1] == {"terms": ["kinetic", "mass"], "steps": 3}


def test_each_level_evaluates_only_its_own_terms():
    calls = {"kinetic": 0, "quartic": 0}
    pot = phi4(shape=(4, 4))

    def counted(name):
        fn = pot.terms[name]

        def term(q):
            calls[name] += 1  # counted when traced: once per appearance in the program
            return fn(q)

        return term

    split = hmc.kernels.HMC(integrator="leapfrog", num_steps=2,
                            timescales=[{"terms": ["quartic"], "steps": 1}, {"terms": ["kinetic"], "steps": 3}])
    energies = {"kinetic": counted("kinetic"), "quartic": counted("quartic")}
    s = integrators.Split((energies["quartic"], energies["kinetic"]), (1, 3))
    q = pot.init(jax.random.key(0))
    metric = integrators.euclidean_metric(None, q)
    state = integrators.IntegratorState(q, q, tuple(jax.grad(f)(q) for f in s.energies))
    calls.update(kinetic=0, quartic=0)
    jax.make_jaxpr(lambda st: integrators.integrate("leapfrog", None, metric.velocity, st, 0.1, 3, split=s))(state)
    # 3 steps, the first peeled, a loop body, the last: 1 + 1 + 1 traced steps of 1 outer and 3 inner forces
    assert calls == {"quartic": 3, "kinetic": 9}
    assert split.evaluations_per_level == (1, 3)


def test_timescales_errors_name_the_term():
    pot = phi4(shape=(4, 4))
    kw = dict(num_warmup=0, step_size=0.1, num_samples=2, progress=False)
    with pytest.raises(ValueError, match="term 'mass' is on no level"):
        hmc.sample(pot, **kw, timescales=[{"terms": ["quartic"]}, {"terms": ["kinetic"]}])
    with pytest.raises(ValueError, match="term 'kinetic' is on level 0 and level 1"):
        hmc.sample(pot, **kw, timescales=[{"terms": ["kinetic", "quartic"]}, {"terms": ["kinetic", "mass"]}])
    with pytest.raises(ValueError, match="names 'fermion', which is not a term"):
        hmc.sample(pot, **kw, timescales=[{"terms": ["fermion"]}, {"terms": list(pot.terms)}])
    with pytest.raises(ValueError, match=r"timescales\[1\].steps must be an integer >= 1"):
        hmc.sample(pot, **kw, timescales=[{"terms": ["quartic"]}, {"terms": ["kinetic", "mass"], "steps": 0}])
    with pytest.raises(ValueError, match=r"timescales\[0\]: unknown key 'step'"):
        hmc.sample(pot, **kw, timescales=[{"terms": list(pot.terms), "step": 2}])
    with pytest.raises(ValueError, match=r"timescales\[1\].integrator: unknown integrator 'omelyan'"):
        hmc.sample(pot, **kw, timescales=[{"terms": ["quartic"]}, {"terms": ["kinetic", "mass"],
                                                                   "integrator": "omelyan"}])


def test_config_timescales():
    cfg = RunConfig.model_validate({"model": {"name": "phi4"}, "sampler": {
        "timescales": [{"terms": ["quartic"], "steps": 1}, {"terms": ["kinetic", "mass"], "steps": 4}]}})
    from hmc.config import sample_kwargs

    assert sample_kwargs(cfg)["timescales"][1] == {"terms": ["kinetic", "mass"], "steps": 4}
    from hmc import config

    with pytest.raises(ConfigError, match=r"sampler.timescales.0.steps"):
        config.build({"model": {"name": "phi4"}, "sampler": {"timescales": [{"terms": ["quartic"], "steps": 0}]}})
    with pytest.raises(ConfigError, match=r"sampler.timescales.1.integrator"):
        config.build({"model": {"name": "phi4"}, "sampler": {"timescales": [
            {"terms": ["quartic"]}, {"terms": ["kinetic", "mass"], "integrator": "verlet"}]}})
    mixed = RunConfig.model_validate({"model": {"name": "phi4"}, "sampler": {"timescales": [
        {"terms": ["quartic"]}, {"terms": ["kinetic", "mass"], "steps": 2, "integrator": "leapfrog"}]}})
    assert sample_kwargs(mixed)["timescales"] == [{"terms": ["quartic"], "steps": 1},
                                                  {"terms": ["kinetic", "mass"], "steps": 2, "integrator": "leapfrog"}]


def test_a_trip_names_the_term_and_its_level():
    """A nested run whose outer term breaks past a wall (``where`` passes NaN into the
    gradient): trajectories are rejected and the events name the term and its level."""
    from physics_models import broken

    pot = broken.where_trap()
    result = hmc.sample(pot, seed=2, num_chains=8, num_warmup=0, step_size=0.3, num_samples=200, chunk_size=50,
                        progress=False, max_trip_fraction=1.0, num_steps=4,
                        timescales=[{"terms": ["barrier"], "steps": 1}, {"terms": ["spring"], "steps": 2}])
    assert result.stats["guard_tripped"].sum() > 0
    trips = [e for e in result.guard_events if e.kind == "nonfinite_gradient"]
    assert trips and all(e.term == "barrier" and e.level == 0 for e in trips), [str(e) for e in trips]
    assert "in term 'barrier' (timescale level 0)" in str(trips[0])
    assert all(e.action == "rejected" and e.leaf == "x" for e in trips)
    assert np.all(np.isfinite(result.draws["x"]))  # a rejected trajectory leaves no NaN in the draws


@pytest.mark.slow
def test_force_monitoring_in_the_log_the_summary_and_a_plot(tmp_path, capsys):
    """A nested run from a config: every chunk's log record has each term's and each
    level's |F| and eps_level * |F|; ``hmc summary`` prints them with the step counts
    that balance the levels; ``hmc plot`` draws them."""
    import json
    import os

    from hmc import cli
    from hmc.forces import suggest_steps

    cfg = tmp_path / "nested.yaml"
    cfg.write_text("model: {name: phi4, params: {shape: [4, 4]}}\n"
                   "sampler: {num_chains: 4, num_warmup: 40, num_samples: 40, num_steps: 3, integrator: leapfrog,\n"
                   "          timescales: [{terms: [quartic], steps: 1}, {terms: [kinetic, mass], steps: 2}]}\n"
                   f"run: {{chunk_size: 20}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    assert cli.main(["run", str(cfg), "--no-progress"]) == 0
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    chunks = [r for r in records if r.get("event") == "chunk"]
    assert chunks and all("forces" in r for r in chunks)
    forces = chunks[-1]["forces"]
    assert set(forces["terms"]) == {"kinetic", "mass", "quartic"}
    outer, inner = forces["levels"]
    assert inner["terms"] == ["kinetic", "mass"] and inner["steps"] == 2
    assert inner["step"] == pytest.approx(outer["step"] / 2)
    assert inner["eps_max"] == pytest.approx(inner["step"] * inner["max"])
    assert all(r["delta_energy_mean"] is not None for r in chunks if r["phase"] == "sampling")
    capsys.readouterr()
    assert cli.main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "level 1 kinetic+mass: steps 2" in text and "steps that balance eps*max|F|" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"]["forces"]["suggested_steps"][0] == 1
    assert cli.main(["plot", str(out)]) == 0
    assert os.path.getsize(out / "plots" / "forces.png") > 1000


def test_suggested_steps_balance_eps_times_force():
    # outer: 1 step, |F| 1; inner: |F| 6 -> 6 inner steps per outer step bring eps*|F| level
    levels = [dict(steps=1, max=1.0), dict(steps=2, max=6.0), dict(steps=1, max=24.0)]
    assert suggest_steps(levels) == [1, 6, 4]


@pytest.mark.slow
def test_a_leapfrog_middle_level_samples_the_anharmonic_oscillator():
    """Three levels with mixed integrators (2MN outside and inside, leapfrog in the middle)
    sample the exact distribution: <x^2> and <x^4> within 4 MCSE of the transfer-matrix
    values."""
    from physics_models import anharmonic_oscillator

    pot = anharmonic_oscillator()
    result = hmc.sample(pot, seed=11, num_chains=8, num_warmup=300, num_samples=500, progress=False,
                        timescales=[{"terms": ["quartic"]}, {"terms": ["harmonic"], "integrator": "leapfrog"},
                                    {"terms": ["kinetic"], "steps": 2}])
    assert result.settings["timescales"][1]["integrator"] == "leapfrog"
    summary = result.summary().observables
    for name in ("x2", "x4"):
        z = np.asarray(summary[name].z, np.float64)
        assert np.all(np.abs(z) < 4), (name, z)
    assert 0.6 < float(np.mean(result.stats["acceptance_rate"])) < 0.99


def test_a_force_gradient_outer_level_counts_its_shifted_force():
    """A force-gradient level makes three forces per step (its end kicks merged, the middle
    kick's force at q and at the shifted point), and the program evaluates exactly those."""
    assert integrators.evaluations_per_step("force_gradient", (1, 2), ("force_gradient", "minimum_norm")) == (3, 8)
    kernel = hmc.kernels.HMC(num_steps=3, timescales=[{"terms": ["a"], "integrator": "force_gradient"},
                                                      {"terms": ["b"], "steps": 2}])
    assert kernel.evaluations_per_level == (3, 8) and kernel.gradients_per_step == 3
    calls = {"soft": 0, "stiff": 0}

    def counted(name, fn):
        def term(q):
            calls[name] += 1  # once per appearance in the traced program
            return fn(q)
        return term

    split = integrators.Split((counted("soft", soft), counted("stiff", stiff)), (1, 2),
                              ("force_gradient", "minimum_norm"))
    q, p = start()
    metric = integrators.euclidean_metric(None, q)
    state = integrators.IntegratorState(q, p, tuple(jax.grad(f)(q) for f in (soft, stiff)))
    jax.make_jaxpr(lambda st: integrators.integrate("minimum_norm", None, metric.velocity, st, 0.1, 3, split=split))(
        state)
    assert calls == {"soft": 3 * 3, "stiff": 3 * 8}


@pytest.mark.slow
def test_force_gradient_samples_the_anharmonic_oscillator():
    """Flat and as the outer level of a nested scheme, the force-gradient integrator samples
    the exact distribution: <x^2> and <x^4> within 4 MCSE of the transfer-matrix values."""
    from physics_models import anharmonic_oscillator

    pot = anharmonic_oscillator()
    kw = dict(num_chains=8, num_warmup=300, num_samples=500, progress=False)
    flat = hmc.sample(pot, seed=12, integrator="force_gradient", **kw)
    nested_run = hmc.sample(pot, seed=13, **kw, timescales=[{"terms": ["quartic"], "integrator": "force_gradient"},
                                                            {"terms": ["harmonic", "kinetic"], "steps": 2}])
    assert flat.settings["integrator"] == "force_gradient"
    for result in (flat, nested_run):
        summary = result.summary().observables
        for name in ("x2", "x4"):
            z = np.asarray(summary[name].z, np.float64)
            assert np.all(np.abs(z) < 4), (name, z)
        assert 0.6 < float(np.mean(result.stats["acceptance_rate"])) < 0.99
