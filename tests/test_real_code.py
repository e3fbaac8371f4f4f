"""The guard on code we did not write: jax-md, TensorFlow Probability (JAX substrate)
and numpyro models raise no false alarm, and their real faults are named at the
library's own line with the right cause. The cases live in ``real_code_cases.py``
(``scripts/guard_corpus.py`` prints the same corpus as a table); a case whose
library is not installed is skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models
import real_code_cases as corpus
from hmc import guard
from hmc.guard import _jaxpr

# correct library code in float64 repeats float32 at twice the compile time, and two of the
# clean jax-md systems repeat what the neighbour-list and Morse ones show: slow tier
SLOW_CLEAN = ("jaxmd_lj_free", "jaxmd_soft_sphere_periodic", "jaxmd_lj_neighbor_list")


def _slow(case, precision):
    # a jax-md fault runs in float32 in the default tier, in float64 in the slow one
    if case.expect is not None:
        return precision == "float64" and case.library == "jax_md" and "float32" in case.dtypes
    return (precision == "float64" and case.library in ("jax_md", "tfp")) or case.build.__name__ in SLOW_CLEAN


PARAMS = [
    pytest.param(case, precision, id=f"{case.build.__name__}-{precision}",
                 marks=[pytest.mark.slow] if _slow(case, precision) else [])
    for case in corpus.CASES
    for precision in case.dtypes
]


def _build(case, precision):
    if not corpus.available(case.library):
        pytest.skip(f"{case.library} is not installed")
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    return case.build(dtype)


@pytest.mark.parametrize("case,precision", PARAMS)
def test_corpus_case(case, precision):
    """Correct code: preflight says nothing. A fault: the expected kind, primitive,
    line and cause among the findings."""
    with jax.enable_x64(precision == "float64"):
        pot, position = _build(case, precision)
        report = guard.preflight(pot, position)
    right, said = corpus.judge(case, report.events)
    assert right, f"{case.name} [{precision}]: {said}"
    if case.expect is None:
        assert report.ok and set(report.status.values()) <= {"connected", "unused"}


# -- 1. comparisons that select are not cuts; a comparison used as a value still is -----------
def test_mask_multiplied_into_the_energy_is_still_a_cut():
    def masked(q):
        d = jnp.mod(q["x"], 1.0) - 0.5
        w = (jnp.abs(d) < 0.4).astype(q["x"].dtype)  # cut
        return jnp.sum(d**2 * w)

    pot = hmc.Potential(terms={"masked": masked}, init=lambda k: {"x": jnp.linspace(-1.3, 2.2, 6)})
    report = guard.preflight(pot, pot.init(None))
    assert not report.ok
    (event,) = report.events
    assert (event.kind, event.primitive) == ("partially_detached", "lt")
    assert event.source == corpus.library_line(__name__, "# cut")
    assert "jumps by" in event.message


# -- 2. a wrap is not a cut; a jump is ----------------------------------------------------------
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_sawtooth_is_a_cut_and_its_square_is_a_wrap(precision):
    with jax.enable_x64(precision == "float64"):
        x = jnp.linspace(-1.2, 1.7, 5, dtype=jnp.float64 if precision == "float64" else jnp.float32)
        saw = hmc.Potential(terms={"saw": lambda q: jnp.sum(q["x"] - jnp.round(q["x"]))}, init=lambda k: {"x": x})
        report = guard.preflight(saw, {"x": x})
        assert [(e.kind, e.primitive) for e in report.events] == [("partially_detached", "round")]
        square = hmc.Potential(terms={"wrap": lambda q: jnp.sum((q["x"] - jnp.round(q["x"])) ** 2)},
                               init=lambda k: {"x": x})
        report = guard.preflight(square, {"x": x})
        assert report.ok and report.events == []


def test_continuity_measures_the_jump():
    def term(x):
        return jnp.sum(jnp.floor(x) * 3.0 + x)

    closed = jax.make_jaxpr(term)(jnp.zeros(3))
    _, cuts = _jaxpr.locate_cuts(closed, [frozenset({0})])
    (site,) = cuts.jumps
    seen = _jaxpr.continuity(closed, [jnp.array([0.3, 1.5, -0.7])], cuts.jumps[site])
    assert seen.continuous is False and abs(seen.largest - 3.0) < 1e-3


# -- 3, 4. blame the NaN that reaches the gradient, and say why ---------------------------------------
def test_discarded_nan_is_not_blamed_and_the_cause_is_a_pole():
    pot, q = corpus.minimal_discarded_nan(jnp.float32)
    (event,) = guard.attribute(pot, q, phase="sampling")
    assert event.source == corpus.library_line(corpus.__name__, "# the bug")
    assert (event.primitive, event.cause, event.indices) == ("div", "singularity", [[1]])
    assert "where-trap" not in event.message


@pytest.mark.parametrize("primitive,operand", [("log1p", -1.0), ("log", 0.0), ("atanh", 1.0), ("exp", 100.0)])
def test_cause_at_poles(primitive, operand):
    x = jnp.float32(operand)
    out = getattr(jnp, primitive)(x)
    expected = "overflow" if primitive == "exp" else "singularity"
    assert _jaxpr.cause_of(primitive, [x], out) == expected
    assert _jaxpr.cause_of("sqrt", [jnp.float32(-1.0)], jnp.sqrt(jnp.float32(-1.0))) == "domain"


def test_overflow_is_not_called_a_where_trap():
    pot, q = corpus.minimal_overflow(jnp.float32)
    events = guard.attribute(pot, q, phase="sampling")
    assert {e.cause for e in events} == {"overflow"}
    assert all("overflow" in e.message and "where-trap" not in e.message for e in events)


@pytest.mark.slow  # the default tier's jaxmd_overlap corpus case checks the same event through preflight
def test_jax_md_overlap_blamed_on_the_force_not_on_safe_mask():
    if not corpus.available("jax_md"):
        pytest.skip("jax_md is not installed")
    pot, q = corpus.jaxmd_overlap(jnp.float32)
    events = guard.attribute(pot, q, phase="sampling")
    (event,) = [e for e in events if e.kind == "nonfinite_gradient"]
    assert event.source == corpus.library_line("jax_md.energy", "idr = sigma / dr")
    assert (event.primitive, event.cause) == ("mul", "overflow") and "overflow" in event.message
    assert sorted(i[0] for i in event.indices) == [0, 0, 0, 1, 1, 1]  # the two overlapping atoms


# -- 5. a typed PRNG key inside the term -----------------------------------------------------------
def test_prng_key_in_the_term_does_not_stop_the_replay():
    pot, q = corpus.minimal_prng_key(jnp.float32)
    events = guard.attribute(pot, q, phase="sampling")
    line = corpus.library_line(corpus.__name__, "# log of zero")
    energy = [e for e in events if e.kind == "nonfinite_energy"]
    assert [(e.primitive, e.source) for e in energy] == [("log", line)]
    assert all(e.source == line and e.primitive for e in events)


# -- 6. divergences are divergences -----------------------------------------------------------------
@pytest.mark.slow
def test_blown_up_funnel_trajectories_are_divergences_not_trips():
    """The centred funnel with a step far too large: the energy overflows to +inf where
    the integration blew up. Every such trajectory is a divergence."""
    r = hmc.sample(physics_models.funnel(dim=10), seed=0, num_chains=16, num_warmup=0, num_samples=20,
                   step_size=30.0, num_steps=10, progress=False)
    assert int(r.stats["diverging"].sum()) > 100
    assert int(r.stats["guard_tripped"].sum()) == 0 and not r.halted
    assert [e for e in r.guard_events if e.phase != "preflight"] == []


@pytest.mark.slow
def test_tfp_eight_schools_divergences_are_divergences():
    if not corpus.available("tfp"):
        pytest.skip("tensorflow_probability is not installed")
    pot, q = corpus.tfp_eight_schools(jnp.float32)
    n = 8
    rng = np.random.default_rng(0)
    init = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.uniform(-2, 2, (n,) + jnp.shape(x)), jnp.float32), q)
    # a fixed step: the adapted one is capped by the funnel's curvature and rarely diverges
    r = hmc.sample(pot, seed=1, num_chains=n, num_warmup=0, num_samples=150, init_positions=init, step_size=0.5,
                   progress=False)
    divergences, trips = int(r.stats["diverging"].sum()), int(r.stats["guard_tripped"].sum())
    assert divergences > 0 and trips == 0 and not r.halted


# -- warmup policy ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_warmup_trips_are_reported_not_halted_on():
    """Chains started next to a where-trap far out (x = 7.9, the wall at 8) cross it in
    their first warmup trajectories; the settled sampler never goes there. The warmup
    trips are rejected and reported, and the run goes on."""
    wall = 8.0
    start = {"x": jnp.full((8, 4), 7.9) - 0.1 * jax.random.uniform(jax.random.key(1), (8, 4))}

    def barrier(q):
        return jnp.sum(jnp.where(q["x"] < wall, 0.1 * (wall - q["x"]) ** 1.5, 0.0))

    pot = hmc.Potential(terms={"spring": lambda q: 0.5 * jnp.sum(q["x"] ** 2), "barrier": barrier},
                        init=lambda k: {"x": 0.5 * jax.random.normal(k, (4,))})
    r = hmc.sample(pot, seed=0, num_chains=8, num_warmup=300, num_samples=300, chunk_size=50,
                   mass_matrix="identity", init_positions=start, max_trip_fraction=0.0, progress=False)
    warm = r.warmup_stats["guard_tripped"]
    assert warm.sum() > 0  # above max_trip_fraction = 0, were warmup trips judged
    assert not r.halted and r.stats["guard_tripped"].sum() == 0
    assert {e.phase for e in r.guard_events if e.kind == "nonfinite_gradient"} >= {"warmup"}
    h = hmc.sample(pot, seed=0, num_chains=8, num_warmup=300, num_samples=300, chunk_size=50,
                   mass_matrix="identity", init_positions=start, guard="halt", progress=False)
    assert h.halted  # "halt" still stops at the first trip


# -- tfp's distributions as priors: no false alarm ---------------------------------------------
def _tfp_corpus():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import tfp_corpus

    return tfp_corpus


@pytest.mark.slow
def test_tfp_distributions_as_priors_pass_preflight():
    """A bounded and a correlation prior (the default tier's share; every one in the slow
    tier): no finding at a random interior state. LKJ clips with
    ``x + stop_gradient(clip(x) - x)``: a detached value that does not move inside the range."""
    corpus = _tfp_corpus()
    found = {name: corpus.check(name) for name in ("Beta", "LKJ")}
    assert not any(found.values()), found


@pytest.mark.slow
def test_every_tfp_prior_in_the_corpus_passes_preflight_but_the_known_findings():
    corpus = _tfp_corpus()
    found = {name: corpus.check(name, key=1) for name in corpus.PRIORS}
    assert {name for name, f in found.items() if f} == set(corpus.KNOWN_FINDINGS), found
