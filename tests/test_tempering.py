"""Replica exchange (non-reversible parallel tempering): the settings' errors, the DEO swap
mechanics, the ladder adaptation, the target replica's distribution, the guard's replica
index, and bit-exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models
from hmc.kernels import HMC, Params
from hmc.kernels import tempering as T


def double_well(height=12.0):
    return physics_models.classical_double_well(height=height, dim=1)


@pytest.mark.parametrize("options, message", [
    ({"replicas": 1}, "tempering.replicas must be an integer >= 2"),
    ({"replicas": 2.5}, "tempering.replicas must be an integer >= 2"),
    ({"ladder": [1.0, 0.5, 0.7]}, "tempering.ladder must be strictly decreasing"),
    ({"ladder": [1.0, 0.5, 0.0]}, r"every beta must be in \(0, 1\]"),
    ({"ladder": [1.0, 1.5]}, r"every beta must be in \(0, 1\]"),
    ({"ladder": [0.9, 0.5]}, "must start at beta = 1"),
    ({"ladder": [1.0, 0.5], "replicas": 3}, "tempering.replicas \\(3\\) differs"),
    ({"beta_min": 1.5}, r"tempering.beta_min must be in \(0, 1\)"),
    ({"replica": 4}, "tempering: unknown key 'replica'"),
    ([8], "tempering must be a dict"),
])
def test_bad_tempering_settings_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        hmc.sample(double_well(), num_warmup=10, num_samples=10, tempering=options, progress=False)


def test_a_kernel_that_cannot_temper_is_refused_by_name():
    with pytest.raises(ValueError, match="tempering needs a kernel that can temper.*'ghmc'"):
        hmc.sample(double_well(), kernel="ghmc", num_warmup=10, num_samples=10, tempering={"replicas": 4},
                   progress=False)
    with pytest.raises(ValueError, match="trajectory_length='auto' is not supported with tempering"):
        hmc.sample(double_well(), trajectory_length="auto", num_warmup=100, num_samples=10,
                   tempering={"replicas": 4}, progress=False)
    with pytest.raises(ValueError, match="tempering.terms names 'prior'"):
        hmc.sample(double_well(), num_warmup=10, num_samples=10, tempering={"replicas": 4, "terms": ["prior"]},
                   progress=False)


def test_equalized_ladder_spaces_the_cumulative_rejection_evenly():
    ladder = T.ladder_of(5, 0.01)
    np.testing.assert_allclose(ladder, [1, 0.01 ** 0.25, 0.1, 0.01 ** 0.75, 0.01])
    rejection = np.array([0.6, 0.2, 0.1, 0.1])  # most of the barrier near beta = 1
    new = T.equalized_ladder(ladder, rejection)
    assert new[0] == 1.0 and new[-1] == 0.01 and np.all(np.diff(new) < 0)
    # the new points sit at equal steps of the piecewise-linear Lambda(beta)
    cumulative = np.concatenate([[0], np.cumsum(rejection)])
    at_new = np.interp(-new, -ladder, cumulative)  # Lambda at the new betas
    np.testing.assert_allclose(np.diff(at_new), rejection.sum() / 4, rtol=1e-12)
    # equal rejections leave the ladder where it is
    np.testing.assert_allclose(T.equalized_ladder(ladder, np.full(4, 0.3)), ladder, rtol=1e-12)
    assert T.predicted_round_trip_rate(np.zeros(4)) == 0.5


def test_one_transition_swaps_the_pairs_of_its_parity_by_label():
    """By hand: every replica moved by its own HMC step at its own temperature; only pairs
    of the transition's parity are tried, a swap exchanges labels (the fields stay in their
    slots) and moves the replicas' energies to their new temperatures; the chain's position
    is the replica at beta = 1."""
    pot = double_well(4.0)
    spec = T.Tempered(HMC(num_steps=3), ladder=(1.0, 0.6, 0.3, 0.1))
    kernel = spec.build(pot, "step")
    x0 = {"x": jnp.array([0.9])}
    state = kernel.init(x0)
    np.testing.assert_allclose(state.replicas.potential_energy, np.asarray(spec.initial_ladder) * pot.energy(x0),
                               rtol=1e-6)
    params = Params(jnp.asarray(0.2), None)
    step = jax.jit(kernel.step)  # compiled once, as the driver does: not op by op
    energy = jax.jit(jax.vmap(lambda x: pot.energy({"x": x})))
    seen = set()
    for t in range(8):
        before = state
        state, info = step(jax.random.key(t), state, params)
        tried = ~np.isnan(np.asarray(info.swap_acceptance))
        np.testing.assert_array_equal(tried, np.arange(3) % 2 == t % 2)
        # labels: a permutation; the target slot is the chain's position
        assert sorted(np.asarray(state.slot_of).tolist()) == [0, 1, 2, 3]
        np.testing.assert_array_equal(state.position["x"], state.replicas.position["x"][state.slot_of[0]])
        # every stored energy is that of the replica's position at its current temperature
        betas = np.asarray(state.ladder)[np.asarray(info.beta_index)]
        u = np.asarray(energy(state.replicas.position["x"]))
        np.testing.assert_allclose(state.replicas.potential_energy, betas * u, rtol=1e-5, atol=1e-6)
        moved = np.asarray(state.slot_of) != np.asarray(before.slot_of)
        seen.update(np.flatnonzero(moved).tolist())
        assert int(state.transitions) == t + 1
    assert seen, "no swap was accepted in 8 transitions at these temperatures"


@pytest.mark.slow
def test_tempering_crosses_the_barrier_plain_hmc_cannot():
    pot = double_well(12.0)
    kw = dict(seed=3, num_chains=4, num_warmup=200, num_samples=400, trajectory_length=1.0, progress=False)
    plain = hmc.sample(pot, **kw)
    tempered = hmc.sample(pot, **kw, tempering={"replicas": 6, "beta_min": 0.05})
    flips = lambda r: np.sum(np.diff(np.sign(np.asarray(r.draws["x"])[..., 0]), axis=1) != 0)  # noqa: E731
    assert flips(plain) == 0  # h = 12: the barrier is e^12 high
    assert flips(tempered) > 100
    s = tempered.summary().observables
    for name in ("x", "x2", "x4"):
        z = (float(np.ravel(s[name].mean)[0]) - float(np.ravel(s[name].exact)[0])) / float(np.ravel(s[name].mcse)[0])
        assert abs(z) < 4, (name, z)
    # the potential energy of the target replica, the sharpest test of the swap rule (a
    # wrong acceptance sends hot states to beta = 1): the fraction of draws with U > 2
    grid = np.linspace(-3, 3, 60001)
    u = 12.0 * (grid ** 2 - 1) ** 2
    exact = np.sum((u > 2.0) * np.exp(-u)) / np.sum(np.exp(-u))
    high = (-np.asarray(tempered.stats["lp"], np.float64) > 2.0).astype(np.float64)
    z = (high.mean() - exact) / float(hmc.diagnostics.mcse(high))
    assert abs(z) < 4, (high.mean(), exact, z)
    rep = tempered.tempering
    assert rep["replicas"] == 6 and rep["ladder"][0] == 1.0 and rep["ladder"][-1] == pytest.approx(0.05)
    assert np.all(np.diff(rep["ladder"]) < 0)
    # the adapted ladder equalises the swap rates, and round trips happen at about the DEO rate
    acc = np.asarray(rep["swap_acceptance"])
    assert acc.min() > 0.5 and acc.max() - acc.min() < 0.2
    assert rep["barrier"] == pytest.approx(np.sum(1 - acc))
    assert 0.3 * rep["predicted_round_trip_rate"] < rep["round_trip_rate"] <= rep["predicted_round_trip_rate"] * 1.2
    assert rep["index_process"].shape == (4, 400, 6)
    # gradients: every replica's steps are counted
    assert np.all(tempered.stats["n_steps"] >= 6)


@pytest.mark.slow
def test_a_prior_kept_at_beta_one_is_not_tempered():
    """``terms``: the likelihood is tempered, the prior is not; the target is still exact.
    U = prior + likelihood with a Gaussian prior and a bimodal likelihood."""
    pot = hmc.Potential(
        terms={"prior": lambda q: 0.5 * jnp.sum(q["x"] ** 2) / 4.0,
               "likelihood": lambda q: 10.0 * jnp.sum((q["x"] ** 2 - 1.0) ** 2)},
        init=lambda key: {"x": jax.random.normal(key, (1,))},
        observables={"x": lambda q: q["x"][0], "x2": lambda q: q["x"][0] ** 2})
    grid = np.linspace(-4, 4, 40001)
    w = np.exp(-(grid ** 2 / 8.0 + 10.0 * (grid ** 2 - 1) ** 2))
    x2 = np.sum(grid ** 2 * w) / np.sum(w)
    r = hmc.sample(pot, seed=5, num_chains=4, num_warmup=200, num_samples=400, trajectory_length=1.0,
                   progress=False, tempering={"replicas": 5, "beta_min": 0.05, "terms": ["likelihood"]})
    s = r.summary().observables
    assert abs(float(s["x"].mean)) < 4 * float(s["x"].mcse)
    assert abs(float(s["x2"].mean) - x2) < 4 * float(s["x2"].mcse)


@pytest.mark.slow
def test_a_trip_in_a_hot_replica_is_named_with_the_replica():
    """A term whose gradient is NaN beyond |x| = 1.8, where only hot replicas go: the
    event names the term, the primitive and the replica's temperature index."""

    def rim(q):
        x = q["x"]
        return jnp.sum(jnp.where(jnp.abs(x) < 1.8, 0.0, jnp.sqrt(1.8 - jnp.abs(x))))

    pot = hmc.Potential(terms={"well": lambda q: 12.0 * jnp.sum((q["x"] ** 2 - 1.0) ** 2), "rim": rim},
                        init=lambda key: {"x": jnp.array([1.0]) + 0.01 * jax.random.normal(key, (1,))})
    r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=50, num_samples=100, num_steps=5,
                   progress=False, guard="reject", max_trip_fraction=1.0,
                   tempering={"replicas": 6, "beta_min": 0.01})
    events = [e for e in r.guard_events if e.term == "rim"]
    assert events, [str(e) for e in r.guard_events]
    assert all(e.replica is not None and e.replica > 0 for e in events)
    assert any(e.primitive in ("sqrt", "rsqrt", "div", "pow") for e in events), [str(e) for e in events]
    assert "replica" in str(events[0])


@pytest.mark.slow
def test_resume_is_bit_exact_and_the_ladder_is_part_of_the_state():
    pot = double_well(8.0)
    kw = dict(seed=4, num_chains=2, num_warmup=40, num_samples=30, chunk_size=10, num_steps=4, progress=False,
              tempering={"replicas": 4, "beta_min": 0.1})
    whole = hmc.sample(pot, **kw)
    saved = []

    def stop(end):
        saved.append(end.snapshot())
        return len(saved) == 3  # inside warmup, after the first ladder round

    assert hmc.sample(pot, **kw, on_chunk=stop).stopped
    again = hmc.sample(pot, **kw, resume=saved[-1])
    for k, v in whole.draws.items():
        np.testing.assert_array_equal(v, again.draws[k], err_msg=k)
    np.testing.assert_array_equal(whole.stats["lp"], again.stats["lp"])
    assert whole.tempering["ladder"] == again.tempering["ladder"]
    assert whole.tempering["round_trips"] == again.tempering["round_trips"]


def test_config_section_and_its_errors(tmp_path):
    import textwrap

    from hmc import config

    def load(text):
        path = tmp_path / "run.yaml"
        path.write_text(textwrap.dedent(text))
        return config.load(str(path))

    cfg = load("""
        model: {name: classical_double_well, params: {height: 8.0}}
        sampler: {tempering: {replicas: 5, beta_min: 0.05, terms: [potential]}}
    """)
    assert config.sample_kwargs(cfg)["tempering"] == {"adapt": True, "terms": ["potential"], "record": False,
                                                      "swaps": True, "replicas": 5, "beta_min": 0.05}
    ladder = load("""
        model: {name: classical_double_well}
        sampler: {tempering: {ladder: [1.0, 0.4, 0.1]}}
    """)
    assert config.sample_kwargs(ladder)["tempering"]["ladder"] == [1.0, 0.4, 0.1]
    for text, key in (("{replicas: 1}", "sampler.tempering.replicas"), ("{replica: 4}", "sampler.tempering.replica"),
                      ("{beta_min: 0}", "sampler.tempering.beta_min")):
        with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
            load(f"model: {{name: classical_double_well}}\nsampler: {{tempering: {text}}}\n")
    with pytest.raises(config.ConfigError, match="tempering needs kernel hmc"):
        load("model: {name: classical_double_well}\nsampler: {kernel: ghmc, tempering: {replicas: 4}}\n")


@pytest.mark.slow
def test_a_tempered_run_directory_has_the_report_and_the_plot(tmp_path):
    from hmc import config, plots, runner

    path = tmp_path / "run.yaml"
    path.write_text("model: {name: classical_double_well, params: {height: 10.0}}\n"
                    "sampler: {num_chains: 2, num_warmup: 60, num_samples: 80, tempering: {replicas: 4, beta_min: 0.05}}\n"
                    f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert runner.execute(config.load(str(path)), str(tmp_path), progress=False) == 0
    out = runner.summarize_run(str(tmp_path / "out"))
    assert "tempering: 4 replicas" in out["text"] and "round trips per chain" in out["text"]
    assert out["summary"].sampler["tempering"]["replicas"] == 4
    written = plots.plot_run(str(tmp_path / "out"))
    assert any(p.endswith("tempering.png") for p in written)


@pytest.mark.slow
def test_replicas_auto_runs_two_lambda_plus_one_from_a_pilot(caplog):
    import logging

    pot = double_well(12.0)
    kw = dict(seed=6, num_chains=2, num_warmup=100, num_samples=50, num_steps=5, progress=False)
    with caplog.at_level(logging.INFO, logger="hmc"):
        r = hmc.sample(pot, **kw, tempering={"replicas": "auto", "beta_min": 0.05})
    line = next(m for m in caplog.messages if "replicas 'auto'" in m)
    lam = float(line.split("Lambda = ")[1].split(";")[0])
    assert r.tempering["replicas"] == max(2, int(np.ceil(2 * lam + 1)))
    assert r.tempering["ladder"][-1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="cannot go with a ladder"):
        hmc.sample(pot, **kw, tempering={"replicas": "auto", "ladder": [1.0, 0.1]})


@pytest.mark.slow
def test_other_replicas_are_recorded_on_request_in_temperature_order():
    pot = double_well(6.0)
    kw = dict(seed=7, num_chains=2, num_warmup=30, num_samples=40, num_steps=4, progress=False)
    plain = hmc.sample(pot, **kw, tempering={"replicas": 3, "beta_min": 0.2})
    assert not any(k.startswith("replicas/") for k in plain.draws)
    r = hmc.sample(pot, **kw, tempering={"replicas": 3, "beta_min": 0.2, "record": True})
    assert r.draws["replicas/x2"].shape == (2, 40, 3) + r.draws["x2"].shape[2:]
    np.testing.assert_array_equal(r.draws["replicas/x2"][:, :, 0], r.draws["x2"])  # index 0 is beta = 1
    # the hottest replica sits on the barrier (|x| < 0.5) far more often than the target
    near = lambda x: np.mean(np.abs(x) < 0.5)  # noqa: E731
    assert near(r.draws["replicas/x"][:, :, 2]) > near(r.draws["x"]) + 0.1
    np.testing.assert_array_equal(plain.draws["x2"], r.draws["x2"])  # recording changes no draw


@pytest.mark.slow
def test_tempering_composes_with_nested_timescales():
    """Two wells, one term per timescale level, tempered: every replica runs the nested
    integrator at its own temperature, and the target's moments are exact."""
    wells = physics_models.classical_double_well(height=10.0, dim=2)
    pot = hmc.Potential(
        terms={"a": lambda q: 10.0 * jnp.sum((q["x"][:1] ** 2 - 1) ** 2),
               "b": lambda q: 10.0 * jnp.sum((q["x"][1:] ** 2 - 1) ** 2)},
        init=wells.init, observables=wells.observables, exact=wells.exact)
    r = hmc.sample(pot, seed=1, num_chains=4, num_warmup=200, num_samples=400, trajectory_length=1.0, progress=False,
                   timescales=[{"terms": ["a"], "steps": 1}, {"terms": ["b"], "steps": 2}],
                   tempering={"replicas": 5, "beta_min": 0.05})
    for name, s in r.summary().observables.items():
        z = (np.ravel(s.mean) - np.ravel(s.exact)) / np.ravel(s.mcse)
        assert np.all(np.abs(z) < 4), (name, z)
    assert r.tempering["round_trip_rate"] > 0


class _FakePilot:
    """A pilot whose hottest replica's observable is an AR(1) trace with a given
    coefficient per beta_min (tau_int = (1 + rho) / (1 - rho)): the search logic alone."""

    def __init__(self, rho_of, draws=400):
        self.rho_of, self.calls, self.draws = rho_of, [], draws

    def __call__(self, options):
        import types

        self.calls.append(dict(options))
        beta_min = options["ladder"][-1] if options.get("ladder") else options["beta_min"]
        rho = self.rho_of(beta_min)
        rng = np.random.default_rng(len(self.calls))
        x = np.zeros((4, self.draws))
        x[:, 0] = rng.normal(size=4)
        for t in range(1, self.draws):
            x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=4)
        R = len(options["ladder"]) if options.get("ladder") else options["replicas"]
        draws = {"replicas/x": np.repeat(x[:, :, None], R, axis=2), "x": x}
        steps = {"n_steps": np.full((4, 10), 5 * R)}
        return types.SimpleNamespace(draws=draws, tempering={"barrier": 1.0 / beta_min ** 0.25},
                                     halted=False, warmup_stats=steps, stats=steps,
                                     settings={"integrator": "leapfrog", "timescales": None, "thin": 1})


def test_beta_min_auto_stops_where_heating_no_longer_shortens_the_hottest_replicas_tau():
    # tau_int about 19, 4, 3: the third candidate does not halve tau, so the second is kept
    rhos = {T.BETA_MIN_CANDIDATES[0]: 0.9, T.BETA_MIN_CANDIDATES[1]: 0.6, T.BETA_MIN_CANDIDATES[2]: 0.5}
    pilot = _FakePilot(lambda b: rhos.get(b, 0.5))
    options, trials = T.choose_beta_min({"replicas": 6, "beta_min": "auto"}, pilot)
    assert [t["beta_min"] for t in trials] == list(T.BETA_MIN_CANDIDATES[:3])
    assert options == {"replicas": 6, "beta_min": T.BETA_MIN_CANDIDATES[1]}
    assert [t["chosen"] for t in trials] == [False, True, False]
    assert trials[0]["tau"] > 10 and 2.5 < trials[1]["tau"] < 7 and trials[2]["tau"] * 2 > trials[1]["tau"]
    # each pilot: a replica at 1 and one at the candidate, side by side without swaps
    assert all(c["record"] and not c["swaps"] and not c["adapt"] and "replicas" not in c for c in pilot.calls)
    assert [c["ladder"] for c in pilot.calls] == [[1.0, b] for b in T.BETA_MIN_CANDIDATES[:3]]
    assert trials[0]["observable"] == "x"


def test_beta_min_auto_stops_at_a_hottest_replica_that_decorrelates_and_sizes_auto_replicas():
    pilot = _FakePilot(lambda b: 0.0)  # tau_int about 1 at once: one pilot, the coldest candidate
    options, trials = T.choose_beta_min({"replicas": "auto", "beta_min": "auto"}, pilot)
    assert len(trials) == 1 and options["beta_min"] == T.BETA_MIN_CANDIDATES[0]
    # then a swapping pilot at the chosen beta_min measures the barrier that sizes the ladder
    sizing = pilot.calls[1]
    assert sizing["replicas"] == T.PILOT_REPLICAS and sizing["beta_min"] == T.BETA_MIN_CANDIDATES[0]
    assert sizing.get("swaps", True) and len(pilot.calls) == 2
    assert options["replicas"] == T.replicas_for(1.0 / T.BETA_MIN_CANDIDATES[0] ** 0.25)


def test_beta_min_auto_takes_the_hottest_candidate_while_heating_keeps_helping(caplog, monkeypatch):
    import logging

    # tau_int 24, 8, 3 on three candidates: each hotter one divides it by more than 2 and the
    # last is still above BETA_MIN_TAU: the search ends at the hottest, and says so
    monkeypatch.setattr(T, "BETA_MIN_CANDIDATES", (0.3, 0.1, 0.03))
    taus = {0.3: 24.0, 0.1: 8.0, 0.03: 3.0}
    pilot = _FakePilot(lambda b: (taus[b] - 1) / (taus[b] + 1), draws=2000)
    with caplog.at_level(logging.WARNING, logger="hmc"):
        options, trials = T.choose_beta_min({"beta_min": "auto"}, pilot)
    assert options["beta_min"] == 0.03 and len(trials) == 3 and trials[-1]["chosen"]
    assert any("still shortened" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="beta_min 'auto' chooses the end of the ladder"):
        T.choose_beta_min({"beta_min": "auto", "ladder": [1.0, 0.1]}, pilot)


def test_beta_min_auto_in_the_config():
    from hmc import config

    data = {"model": {"name": "classical_double_well", "params": {"height": 12.0, "dim": 1}},
            "sampler": {"tempering": {"replicas": 4, "beta_min": "auto"}}}
    assert config.sample_kwargs(config.RunConfig.model_validate(data))["tempering"]["beta_min"] == "auto"
    with pytest.raises(Exception, match="beta_min"):
        config.RunConfig.model_validate({**data, "sampler": {"tempering": {"beta_min": "hot"}}})


@pytest.mark.slow
def test_beta_min_auto_in_a_run_and_its_run_directory(tmp_path):
    from hmc import config, runner

    pot = double_well(12.0)
    kw = dict(seed=6, num_chains=4, num_warmup=100, num_samples=50, num_steps=5, progress=False)
    r = hmc.sample(pot, **kw, tempering={"replicas": "auto", "beta_min": "auto"})
    search = r.tempering["beta_min_search"]
    chosen = next(t for t in search if t["chosen"])
    assert r.tempering["ladder"][-1] == pytest.approx(chosen["beta_min"])
    assert 2 <= r.tempering["replicas"] <= T.MAX_REPLICAS
    # the pilots: two replicas each, (warmup + 200 draws) transitions of num_steps = 5, and the sizing pilot
    per_transition = 5 * hmc.integrators.gradient_evaluations_per_step("minimum_norm")
    assert r.tempering["pilot_gradients"] == per_transition * (100 + T.PILOT_DRAWS) * 4 * (2 * len(search) + T.PILOT_REPLICAS)
    # the trials follow the rule: colder candidates first; every trial but the last two was
    # too slow and its successor at least halved tau; the search ended by the rule
    assert [t["beta_min"] for t in search] == list(T.BETA_MIN_CANDIDATES[:len(search)])
    for before, after in zip(search[:-2], search[1:-1]):
        assert before["tau"] > T.BETA_MIN_TAU and after["tau"] * T.BETA_MIN_KNEE <= before["tau"]
    last = search[-1]
    assert (chosen is last and last["tau"] <= T.BETA_MIN_TAU) or (
        chosen is search[-2] and last["tau"] * T.BETA_MIN_KNEE > chosen["tau"])
    data = {"model": {"name": "classical_double_well", "params": {"height": 12.0, "dim": 1}},
            "sampler": {"num_chains": 4, "num_warmup": 100, "num_samples": 50, "num_steps": 5,
                        "tempering": {"replicas": 4, "beta_min": "auto"}},
            "output": {"dir": str(tmp_path / "out")}}
    cfg = config.RunConfig.model_validate(data)
    assert config.sample_kwargs(cfg)["tempering"]["beta_min"] == "auto"
    with pytest.raises(Exception, match="beta_min"):
        config.RunConfig.model_validate({**data, "sampler": {"tempering": {"beta_min": "hot"}}})
    assert runner.execute(cfg, str(tmp_path), progress=False) == 0
    out = runner.summarize_run(str(tmp_path / "out"))  # what `hmc summary` prints later, from the log
    assert "beta_min auto, the slowest observable of a replica alone" in out["text"]
    assert "pilot runs (replicas or beta_min auto) took" in out["text"]
    assert out["summary"].sampler["tempering"]["beta_min_search"][0]["beta_min"] == T.BETA_MIN_CANDIDATES[0]


def test_auxiliary_fields_need_tempered_terms_that_do_not_read_them():
    pot = physics_models.schwinger(L=4, beta=2.0, mass=0.2)  # pseudofermions: the field phi
    kw = dict(num_chains=2, num_warmup=10, num_samples=10, progress=False)
    with pytest.raises(ValueError, match=r"auxiliary fields \['phi'\].*name the tempered terms"):
        hmc.sample(pot, **kw, tempering={"replicas": 3})
    with pytest.raises(ValueError, match="tempering.terms names 'fermion', which reads the auxiliary fields"):
        hmc.sample(pot, **kw, tempering={"replicas": 3, "terms": ["gauge", "fermion"]})


@pytest.mark.slow
def test_tempering_the_gauge_term_under_pseudofermions_keeps_the_target():
    """The gauge action tempered, the pseudofermion action (and its heat bath) at beta = 1 in
    every replica: the beta = 1 replica still samples the two-flavour theory, checked against
    the exact determinant on 4x4 (plaquette and condensate within 4 combined MCSE)."""
    from hmc import diagnostics

    kw = dict(seed=11, num_chains=4, num_warmup=200, num_samples=1000, trajectory_length=1.0,
              mass_matrix="identity", progress=False)
    tempered = hmc.sample(physics_models.schwinger(L=4, beta=2.0, mass=0.2), **kw,
                          tempering={"replicas": 3, "beta_min": 0.3, "terms": ["gauge"]})
    exact = hmc.sample(physics_models.schwinger(L=4, beta=2.0, mass=0.2, fermions="exact"), **kw)
    assert not any(k.startswith("phi") for k in tempered.draws)
    assert min(tempered.tempering["swap_acceptance"]) > 0.1 and min(tempered.tempering["round_trips"]) > 0
    for name in ("plaquette", "condensate"):
        a, b = (np.asarray(r.draws[name], np.float64) for r in (tempered, exact))
        err = np.hypot(diagnostics.mcse(a), diagnostics.mcse(b))
        assert abs(a.mean() - b.mean()) < 4 * err, (name, a.mean(), b.mean(), err)


@pytest.mark.slow  # compiles the tempered kernel with the CG inside; swap energies are tested cheaply by label
def test_a_swap_moves_a_pseudofermion_replicas_energy_by_its_tempered_share():
    """With auxiliary fields the energy after a swap is the replica's own: its fields kept,
    the gauge share moved to the new temperature (no fermion solve again)."""
    pot = physics_models.schwinger(L=4, beta=2.0, mass=0.2)
    spec = T.Tempered(HMC(num_steps=2), ladder=(1.0, 0.5), terms=("gauge",))
    kernel = spec.build(pot, "step")
    state = jax.jit(kernel.init)(pot.init(jax.random.key(0)))
    params = Params(jnp.asarray(0.1), None)
    step = jax.jit(kernel.step)  # compiled once, as the driver does: not op by op

    @jax.jit
    def tempered(beta, full):
        """The replica's energy at ``beta`` and its gradient in ``theta``."""
        def energy(theta):
            return beta * pot.terms["gauge"]({**full, "theta": theta}) + pot.terms["fermion"]({**full, "theta": theta})

        return jax.value_and_grad(energy)(full["theta"])

    fresh_fields = jax.jit(pot.with_auxiliary)
    swapped = 0
    for t in range(12):
        before = state
        state, info = step(jax.random.key(t), state, params)
        betas = np.asarray(state.ladder)[np.asarray(info.beta_index)]
        for s in range(2):
            q = jax.tree_util.tree_map(lambda x: x[s], state.replicas.position)
            fields = jax.tree_util.tree_map(lambda x: x[s], state.replicas.auxiliary)
            full = {**q, **fields}
            expected, grad = tempered(jnp.asarray(betas[s], state.replicas.potential_energy.dtype), full)
            np.testing.assert_allclose(float(state.replicas.potential_energy[s]), float(expected), rtol=2e-5)
            np.testing.assert_allclose(state.replicas.potential_energy_grad["theta"][s], grad, rtol=2e-4, atol=2e-5)
            # a swapped replica keeps the fields its trajectory used (not a fresh fixed-key draw)
            drawn = fresh_fields(dict(q))["phi"]
            assert not np.allclose(fields["phi"], drawn)
        swapped += int(np.any(np.asarray(state.slot_of) != np.asarray(before.slot_of)))
    assert swapped, "no swap in 12 transitions"
