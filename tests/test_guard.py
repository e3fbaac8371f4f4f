"""Fault injection: every way a gradient goes missing or non-finite is named by
kind, term, leaf, primitive and source line; healthy models raise no finding."""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import hmc
import physics_models
from hmc import guard, rundir
from physics_models import broken


def fault_line(factory) -> str:
    """``broken.py:N`` of the line marked ``# fault`` in a factory."""
    lines, start = inspect.getsourcelines(factory)
    for offset, line in enumerate(lines):
        if "# fault" in line:
            return f"broken.py:{start + offset}"
    raise AssertionError(f"no fault marker in {factory.__name__}")


def preflight_of(factory):
    pot = factory()
    return guard.preflight(pot, pot.init(jax.random.key(0)))


STRUCTURAL = [
    # factory, kind, term, leaf, primitive
    (broken.detached_term, "disconnected", "tilt", "x", "stop_gradient"),
    (broken.partial_detach, "partially_detached", "stiff", "x", "stop_gradient"),
    (broken.round_term, "disconnected", "lattice", "x", "round"),
    (broken.floor_term, "disconnected", "steps", "x", "floor"),
    (broken.sign_term, "disconnected", "vee", "x", "sign"),
    (broken.int_cast_term, "disconnected", "bins", "x", "convert_element_type[int32]"),
    (broken.comparison_term, "disconnected", "step", "x", "gt"),
    (broken.custom_jvp_zero, "disconnected", "custom", "x", "custom_jvp_call"),
    (broken.custom_vjp_zero, "disconnected", "custom", "x", "custom_vjp_call"),
]


@pytest.mark.parametrize("factory,kind,term,leaf,primitive", STRUCTURAL, ids=[s[0].__name__ for s in STRUCTURAL])
def test_structural_fault_named(factory, kind, term, leaf, primitive):
    report = preflight_of(factory)
    assert not report.ok
    assert len(report.events) == 1, [str(e) for e in report.events]
    (event,) = report.events
    assert (event.kind, event.term, event.leaf, event.primitive) == (kind, term, leaf, primitive)
    assert event.source == fault_line(factory)
    assert event.phase == "preflight" and event.action == "refused"
    expected = "partially_detached" if kind == "partially_detached" else "cut"
    assert report.status[(term, leaf)] == expected
    assert report.status[("spring", "x")] == "connected"
    assert term in report.table() and expected in report.table()


def test_detached_element_of_a_leaf():
    report = preflight_of(broken.detached_element)
    kinds = {(e.kind, e.term, e.leaf) for e in report.events}
    assert ("partially_detached", "pin", "y") in kinds
    element = [e for e in report.events if e.kind == "disconnected" and e.leaf == "y"]
    assert len(element) == 1 and element[0].indices == [[2]]
    partial = [e for e in report.events if e.kind == "partially_detached"][0]
    assert partial.primitive == "stop_gradient" and partial.source == fault_line(broken.detached_element)


def test_orphan_leaf():
    report = preflight_of(broken.orphan_leaf)
    assert [(e.kind, e.leaf) for e in report.events] == [("orphan_leaf", "aux")]
    assert report.status[("spring", "aux")] == "unused"


def test_nan_initial_state_refused_by_sample():
    with pytest.raises(hmc.GuardRefused) as err:
        hmc.sample(broken.nan_init(), num_chains=3, num_samples=10, progress=False)
    events = err.value.events
    assert {e.chain for e in events} == {0, 1, 2}
    assert all(e.leaf == "x" and e.indices == [[1]] and e.kind == "nonfinite_energy" for e in events)


def test_refusal_and_allow():
    with pytest.raises(hmc.GuardRefused, match="round"):
        hmc.sample(broken.round_term(), num_chains=2, num_warmup=10, num_samples=10, progress=False)
    r = hmc.sample(broken.orphan_leaf(), num_chains=2, num_warmup=0, step_size=0.1, num_samples=10,
                   allow=["orphan_leaf"], progress=False)
    assert [e.action for e in r.guard_events if e.kind == "orphan_leaf"] == ["allowed"]


def test_initial_state_with_nonfinite_term_named():
    pot = broken.log_zero()
    bad = {"x": jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, broken.WALL + 1.0, 0.0, 0.0]])}
    with pytest.raises(hmc.GuardRefused) as err:
        hmc.sample(pot, num_chains=2, init_positions=bad, num_samples=10, progress=False)
    events = [e for e in err.value.events if e.chain == 1]
    assert {(e.kind, e.term, e.primitive) for e in events} >= {("nonfinite_energy", "barrier", "log"),
                                                                ("nonfinite_gradient", "barrier", "log")}
    assert all(e.source == fault_line(broken.log_zero) for e in events)
    assert [e.indices for e in events if e.kind == "nonfinite_gradient"] == [[[1]]]


MID_RUN = [
    (broken.where_trap, "barrier", "pow"),
    (broken.log_zero, "barrier", "log"),
    (broken.exp_overflow, "step", "exp"),
    (broken.division_by_zero, "wall", "div"),
]


@pytest.mark.slow
@pytest.mark.parametrize("factory,term,primitive", MID_RUN, ids=[m[0].__name__ for m in MID_RUN])
def test_midrun_fault_rejected_and_named(factory, term, primitive):
    # ten steps per trajectory, the length these trip counts were set for (without a length,
    # hmc adapts one, and the shorter trajectories trip less often than the 1 % halt bound)
    pot = factory()
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    assert report.ok and not report.events  # healthy where chains start
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=150, num_samples=250, num_steps=10,
                   max_trip_fraction=0.9, progress=False)
    assert not r.halted
    trips = int(r.stats["guard_tripped"].sum() + r.warmup_stats["guard_tripped"].sum())
    assert trips > 0
    assert np.all(np.isfinite(r.draws["x"])) and np.all(np.isfinite(r.stats["lp"]))
    gradient_events = [e for e in r.guard_events if e.kind == "nonfinite_gradient"]
    assert gradient_events
    for e in gradient_events:
        assert (e.term, e.leaf, e.primitive, e.source) == (term, "x", primitive, fault_line(factory))
        assert e.phase in ("warmup", "sampling") and e.action == "rejected"
        assert e.chain in range(4) and e.leapfrog_step >= 0 and e.indices
        json.loads(e.to_json())
    # halt stops cleanly at the end of the first chunk with a trip
    h = hmc.sample(pot, seed=0, num_chains=4, num_warmup=150, num_samples=250, num_steps=10, guard="halt",
                   chunk_size=50, progress=False)
    assert h.halted and "halt" in h.halt_reason
    assert h.guard_events and all(e.action == "halted" for e in h.guard_events if e.phase != "preflight")
    # default policy: more than 1 % of trajectories tripped -> halted with the reason
    d = hmc.sample(pot, seed=0, num_chains=4, num_warmup=150, num_samples=250, num_steps=10, chunk_size=50,
                   progress=False)
    assert d.halted and "max_trip_fraction" in d.halt_reason


def test_where_trap_hint_and_exp_hint():
    pot = broken.where_trap()
    (event,) = guard.attribute(pot, {"x": jnp.array([0.0, broken.WALL + 0.5, 0.0, 0.0])}, phase="sampling")
    assert "double where" in event.message and event.indices == [[1]]
    pot = broken.exp_overflow()
    (event,) = guard.attribute(pot, {"x": jnp.array([0.0, -broken.WALL - 2.0, 0.0, 0.0])}, phase="sampling")
    assert "overflow" in event.message


@pytest.mark.slow
def test_good_region_distribution_under_reject():
    """Trajectories that touch the trap are rejected; the chain samples the target
    restricted to x < WALL (each coordinate independent), compared by quadrature."""
    pot = broken.where_trap()
    r = hmc.sample(pot, seed=5, num_chains=8, num_warmup=300, num_samples=1500, max_trip_fraction=0.9,
                   trajectory_length=1.5, jitter=0.3, progress=False)
    assert np.all(hmc.diagnostics.rhat(r.draws["x"]) < 1.05)

    def density(x):
        return np.exp(-0.5 * x**2 - 0.1 * (broken.WALL - x) ** 1.5)

    z = integrate.quad(density, -np.inf, broken.WALL)[0]
    exact_x = integrate.quad(lambda x: x * density(x), -np.inf, broken.WALL)[0] / z
    exact_x2 = integrate.quad(lambda x: x * x * density(x), -np.inf, broken.WALL)[0] / z
    for name, exact in (("x", exact_x), ("x2", exact_x2)):
        s = hmc.diagnostics.summarize_draws(r.draws[name], exact)
        assert np.all(np.abs(s.z) < 4.5), (name, s.mean, exact, s.z)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize(
    "factory,params",
    [
        (physics_models.gaussian, dict(dim=5, correlation=0.3)),
        (physics_models.harmonic_oscillator, dict(n_sites=16)),
        (physics_models.phi4, dict(shape=(8, 8), m2=-1.0, lam=0.5)),
    ],
    ids=["gaussian", "harmonic_oscillator", "phi4"],
)
def test_healthy_models_have_no_finding(factory, params, precision):
    pot = factory(**params)
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.float64 if precision == "float64" else jnp.float32
        q = jax.tree_util.tree_map(lambda x: x.astype(dtype), pot.init(jax.random.key(1)))
        report = guard.preflight(pot, q)
        assert report.ok and report.events == [], [str(e) for e in report.events]
        assert set(report.status.values()) == {"connected"}


@pytest.mark.slow
def test_healthy_sampling_reports_nothing():
    r = hmc.sample(physics_models.phi4(shape=(8, 8), m2=-1.0, lam=0.5), seed=0, num_chains=4, num_warmup=200,
                   num_samples=200, chunk_size=50, progress=False)
    assert r.guard_events == []
    assert int(r.stats["guard_tripped"].sum()) == 0


def test_chunk_boundary_probe_finds_state_dependent_detachment():
    """Elements enter a region where no term passes them gradient (a relu-style
    where); the probe names leaf, element and chain at a chunk boundary."""

    def dead_zone(q):
        x = q["x"]
        return jnp.sum(jnp.where(x > -1.5, 0.5 * x**2, 0.0))  # no force below -1.5

    pot = hmc.Potential(terms={"dead_zone": dead_zone, "wall": lambda q: jnp.sum(jnp.exp(-(q["x"] + 3.0)))},
                        init=lambda key: {"x": 0.3 * jax.random.normal(key, (6,))})
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    assert report.ok
    # the exp wall reaches every element, so give the probe a model where only dead_zone acts
    pot = hmc.Potential(terms={"dead_zone": dead_zone}, init=lambda key: {"x": 0.3 * jax.random.normal(key, (6,))})
    state = {"x": jnp.array([[0.0, -2.0, 0.0, 0.0, 0.0, -3.0]])}
    _, masks = guard.checks_program(pot)(state)
    events = guard.check_element_reach(masks, ["x"], [7], phase="sampling", action="reported", draw=11)
    assert len(events) == 1
    (e,) = events
    assert (e.kind, e.leaf, e.indices, e.chain, e.draw) == ("disconnected", "x", [[1], [5]], 7, 11)


def _replay_builds(pot):
    """The chunk programs compiled for ``pot``: without (False) and with (True) the replay."""
    from hmc import potential as potential_module

    return sorted(key[2] for key in potential_module._PROGRAMS.get(pot, {}) if key[0] == "chunks")


def test_a_model_that_never_trips_never_compiles_the_replay():
    healthy = physics_models.gaussian(dim=3)
    hmc.sample(healthy, seed=0, num_chains=2, num_warmup=0, step_size=0.5, num_samples=20, progress=False)
    assert _replay_builds(healthy) == [False]


@pytest.mark.slow
def test_trajectory_and_step_checks_agree():
    """The default end-of-trajectory check with replay rejects exactly the trajectories the
    per-step check rejects, and locates the same leapfrog step, chain and draw."""
    pot = broken.division_by_zero()
    kw = dict(seed=2, num_chains=4, num_warmup=0, step_size=0.4, num_samples=200, max_trip_fraction=0.9,
              progress=False, integrator="leapfrog", num_steps=6)
    a = hmc.sample(pot, guard_check="trajectory", **kw)
    # chunks run without the per-step replay until a trajectory trips; the chunk that
    # tripped runs again with it (same states: a tripped trajectory is rejected either way)
    assert _replay_builds(pot) == [False, True]
    b = hmc.sample(pot, guard_check="step", **kw)
    np.testing.assert_array_equal(a.draws["x"], b.draws["x"])
    for name in ("guard_tripped", "diverging", "acceptance_rate"):
        np.testing.assert_array_equal(a.stats[name], b.stats[name])
    assert int(a.stats["guard_tripped"].sum()) > 0
    where = lambda r: [(e.kind, e.chain, e.draw, e.leapfrog_step, e.primitive) for e in r.guard_events]  # noqa: E731
    assert where(a) == where(b)


def _report_for(term):
    pot = hmc.Potential(terms={"spring": lambda q: 0.5 * jnp.sum(q["x"] ** 2), "t": term},
                        init=lambda key: {"x": jnp.linspace(-1.0, 1.0, 3)})
    return guard.preflight(pot, pot.init(jax.random.key(0)))


def _marked_line(function) -> str:
    """``test_guard.py:N`` of the line marked ``# cut`` inside ``function``."""
    lines, start = inspect.getsourcelines(function)
    return next(f"test_guard.py:{start + i}" for i, line in enumerate(lines) if "# cut" in line)


def test_cut_inside_scan_is_located():
    def term(q):
        def body(c, x):
            return c + jnp.round(x) ** 2, None  # cut

        return jax.lax.scan(body, 0.0, q["x"])[0]

    line = _marked_line(test_cut_inside_scan_is_located)
    (event,) = _report_for(term).events
    assert (event.kind, event.primitive, event.source) == ("disconnected", "round", line)


def test_cut_inside_nested_jit_is_located():
    @jax.jit
    def inner(x):
        return jnp.floor(x) * 2.0  # cut

    line = _marked_line(test_cut_inside_nested_jit_is_located)

    @jax.jit
    def outer(x):
        return jnp.sum(inner(x) ** 2)

    (event,) = _report_for(lambda q: outer(q["x"])).events
    assert (event.kind, event.primitive, event.source) == ("disconnected", "floor", line)


def test_cut_in_one_branch_of_cond_is_a_cut_where_that_branch_is_taken():
    def term(q):
        x = q["x"]
        return jax.lax.cond(jnp.sum(x) > 1.0, lambda v: jnp.sum(jax.lax.stop_gradient(v)), jnp.sum, x)

    # at sum(x) = 0 the cut branch is not taken: no force is lost there
    report = _report_for(term)
    assert report.ok and report.status[("t", "x")] == "connected" and not report.events, str(report)
    # where it is taken, it is a cut, named with its line
    pot = hmc.Potential(terms={"spring": lambda q: 0.5 * jnp.sum(q["x"] ** 2), "t": term},
                        init=lambda key: {"x": jnp.ones(3)})
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    assert not report.ok and report.status[("t", "x")] == "partially_detached"  # the other branch connects
    assert [e.primitive for e in report.events] == ["stop_gradient"]


def test_a_stop_gradient_on_the_unselected_side_of_a_where_is_no_cut_there():
    """numpyro's Beta.log_prob pattern: a detached value kept for a boundary the state is
    not at. Judged at the state: a cut only where the where selects it."""
    def term(q):
        x = q["x"]
        edge = x < -5.0
        return jnp.sum(jnp.where(edge, jax.lax.stop_gradient(x ** 2), x ** 2))  # cut

    assert _report_for(term).ok
    pot = hmc.Potential(terms={"t": term}, init=lambda key: {"x": jnp.array([-6.0, 0.5, 1.0])})
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    assert not report.ok and report.status[("t", "x")] == "partially_detached"
    assert [(e.primitive, e.source) for e in report.events] == [("stop_gradient", _marked_line(term))]


def test_a_term_is_judged_on_its_own_computation_not_on_dead_code_beside_it():
    def term(q):
        x = q["x"]
        unused = jnp.sum(jax.lax.stop_gradient(x) * x)  # traced, never used: not this term's
        del unused
        return jnp.sum(x ** 2)

    report = _report_for(term)
    assert report.ok and not report.events, str(report)


def test_term_that_cannot_be_reverse_differentiated():
    def term(q):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 1.1, c[1] + 1), (jnp.sum(q["x"] ** 2), 0))[0]

    report = _report_for(term)
    assert not report.ok
    assert any(e.term == "t" and "reverse-differentiated" in e.message for e in report.events)


def test_guard_events_are_json_lines(tmp_path):
    pot = broken.round_term()
    report = guard.preflight(pot, pot.init(jax.random.key(0)))
    path = tmp_path / "guard.jsonl"
    rundir.write_jsonl(str(path), [e.to_dict() for e in report.events])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1
    keys = {"kind", "phase", "term", "leaf", "indices", "primitive", "source", "chain", "draw", "leapfrog_step",
            "action", "message"}
    assert keys <= set(rows[0])
    assert rows[0]["kind"] == "disconnected" and rows[0]["primitive"] == "round"


def test_structural_preflight_is_computed_once_per_state(monkeypatch):
    """A second preflight of the same potential and state (a repeated sample call, `hmc
    check` then `hmc run`) reuses the jaxpr analysis and the continuity tests, and replays
    the findings under its own chain and allow list; another state is analysed afresh."""
    from hmc.guard import _jaxpr

    pot = physics_models.broken.round_term()
    q = pot.init(jax.random.key(0))
    calls = []
    original = _jaxpr.continuity
    monkeypatch.setattr(_jaxpr, "continuity", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = guard.preflight(pot, q, chain=3)
    tested = len(calls)
    assert tested > 0 and not first.ok
    again = guard.preflight(pot, q, chain=5, allow=["disconnected"])
    assert len(calls) == tested
    assert [(e.kind, e.term, e.leaf, e.primitive, e.source) for e in again.events] == [
        (e.kind, e.term, e.leaf, e.primitive, e.source) for e in first.events]
    assert again.ok and {e.action for e in again.events} == {"allowed"} and {e.chain for e in again.events} == {5}
    assert {e.action for e in first.events} == {"refused"} and {e.chain for e in first.events} == {3}
    guard.preflight(pot, jax.tree_util.tree_map(lambda x: x + 0.25, q))
    assert len(calls) > tested


def test_logsumexp_detaches_only_a_shift_its_value_does_not_depend_on():
    from jax.scipy.special import logsumexp

    report = _report_for(lambda q: logsumexp(q["x"]))
    assert report.ok and not report.events, str(report)


def test_a_detached_value_that_does_not_move_at_the_state_is_no_cut_there():
    """tfp's clip_by_value_preserve_gradient, ``x + stop_gradient(clip(x) - x)``: inside the
    range the detached value is 0 and does not move, so the force is whole; outside it
    moves with ``x`` and the cut is real."""
    pot = hmc.Potential(
        terms={"clipped": lambda q: jnp.sum((q["x"] + jax.lax.stop_gradient(jnp.clip(q["x"], -5.0, 5.0) - q["x"])) ** 2)},
        init=lambda key: {"x": jnp.array([0.3, -1.2])})
    assert hmc.guard.preflight(pot, {"x": jnp.array([0.3, -1.2])}).ok
    outside = hmc.guard.preflight(pot, {"x": jnp.array([7.0, -1.2])})
    assert not outside.ok
    assert [(e.kind, e.primitive) for e in outside.events] == [("partially_detached", "stop_gradient")]
