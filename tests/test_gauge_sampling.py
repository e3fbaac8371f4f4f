"""Group-valued leaves in the sampler: the autodiff force on the group, reversibility and
order of the group integrators, the symmetry preflight, and (slow tier) the plaquette and
Wilson loops of SU(N) Yang-Mills against exact values."""

import dataclasses
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models as pm
from hmc import geometry, groups
from hmc.guard.symmetry import symmetry_events
from hmc.reversibility import format_report

ym = importlib.import_module("physics_models.yang_mills")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def test_the_force_on_a_group_leaf_is_the_lie_derivative_of_every_action():
    with jax.enable_x64(True):
        for action in ("wilson", "iwasaki"):
            pot = pm.yang_mills(group="SU(3)", shape=(2, 2), beta=2.3, action=action)
            u = groups.SU(3).random(jax.random.key(1), (2, 2, 2), jnp.complex128)
            q = {"U": u}
            force = jax.jit(jax.grad(pot.energy))(q)["U"]
            energy = jax.jit(pot.energy)
            generators = groups.SU(3).generators(jnp.complex128)
            for a, link in ((0, (0, 0, 0)), (4, (1, 1, 0)), (7, (0, 1, 1))):
                def moved(t, a=a, link=link):
                    return {"U": u.at[link].set(groups.SU(3).exp(t * generators[a]) @ u[link])}
                h = 1e-5
                fd = (float(energy(moved(h))) - float(energy(moved(-h)))) / (2 * h)
                lie = -2.0 * float(jnp.real(jnp.trace(force[link] @ generators[a])))
                assert abs(fd - lie) < 1e-7 * max(1.0, abs(fd)), (action, a, fd, lie)
            assert float(jnp.abs(groups.SU(3).algebra(force) - force).max()) < 1e-13  # in the algebra


def test_group_trajectories_are_reversible_to_rounding_with_second_order_energy_error():
    report = hmc.check_reversibility(pm.yang_mills(group="SU(2)", shape=(2, 2), beta=2.0), precision="float64",
                                     integrator="minimum_norm", step_size=0.2, num_steps=4, num_chains=2)
    assert report["max_abs_dq"] < 1e-12 and report["max_abs_dp"] < 1e-12 and report["max_abs_dh"] < 1e-10
    assert report["max_group_defect"] < 1e-13
    assert abs(report["slope"] - 2.0) < 0.15


@pytest.mark.slow
@pytest.mark.parametrize("integrator", ["leapfrog", "force_gradient", "yoshida4"])
def test_group_integrators_have_their_order(integrator):
    report = hmc.check_reversibility(pm.yang_mills(group="SU(3)", shape=(2, 2), beta=2.0), precision="float64",
                                     integrator=integrator, step_size=0.2, num_steps=5, num_chains=2)
    assert report["max_abs_dq"] < 1e-12 and report["max_abs_dh"] < 1e-10
    assert abs(report["slope"] - hmc.integrators.ORDER[integrator]) < 0.25


@pytest.mark.slow
def test_symmetry_preflight_names_a_term_that_breaks_gauge_invariance():
    pot = pm.yang_mills(group="SU(2)", shape=(2, 3), beta=2.0)
    q = pot.init(jax.random.key(0))

    def missing_dagger(q):
        u0, u1 = q["U"][0], q["U"][1]
        loop = u0 @ jnp.roll(u1, -1, 0) @ ym.dagger(jnp.roll(u0, -1, 1)) @ u1  # the last link undaggered
        return jnp.sum(1 - 0.5 * jnp.real(jnp.trace(loop, axis1=-2, axis2=-1)))

    assert symmetry_events(pot, q) == []
    [event] = symmetry_events(dataclasses.replace(pot, terms={**pot.terms, "mine": missing_dagger}), q)
    assert (event.kind, event.term) == ("symmetry_broken", "mine") and "'gauge'" in event.message


def test_group_leaves_refuse_an_adapted_mass_matrix_and_nuts():
    pot = pm.yang_mills(group="SU(2)", shape=(2, 2), beta=1.0)
    with pytest.raises(ValueError, match="group leaf 'U'"):
        hmc.sample(pot, mass_matrix="diagonal", num_warmup=0, step_size=0.1, num_samples=1, progress=False)
    with pytest.raises(ValueError, match="kernel='hmc' or 'ghmc'"):
        hmc.kernels.NUTS().build(pot)


def test_a_group_leaf_must_hold_complex_matrices_of_the_group():
    pot = hmc.Potential(terms={"s": lambda q: jnp.sum(jnp.real(q["U"]))}, init=lambda key: {"U": jnp.eye(3)},
                        groups={"U": "SU(2)"})
    with pytest.raises(ValueError, match=r"leaf 'U' is declared SU\(2\).*\(\.\.\., 2, 2\)"):
        geometry.check_state(pot.groups, pot.init(jax.random.key(0)))


def _plaquette_z(pot, seed=0, chains=8, warmup=300, draws=1500, **kwargs):
    result = hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=draws, progress=False,
                        precision="float64", **kwargs)
    row = result.summary().observables["plaquette"]
    return (row.mean - pot.exact["plaquette"]) / row.mcse, result


@pytest.mark.slow
@pytest.mark.parametrize("group,L,beta", [("SU(2)", 2, 2.0), ("SU(2)", 3, 4.0), ("SU(3)", 2, 6.0), ("SU(3)", 3, 4.0)])
def test_2d_plaquette_on_tiny_tori_matches_the_character_expansion(group, L, beta):
    pot = pm.yang_mills(group=group, shape=(L, L), beta=beta)
    z, result = _plaquette_z(pot)
    assert abs(z) < 5, (z, pot.exact["plaquette"])
    assert not any("R-hat" in w for w in result.warnings)
    assert result.summary().sampler["group_defect_max"] < 1e-12 and result.guard_events == []


@pytest.mark.slow
def test_2d_wilson_loops_and_the_group_form_of_u1():
    pot = pm.yang_mills(group="SU(2)", shape=(4, 4), beta=3.0)
    result = hmc.sample(pot, seed=1, num_chains=8, num_warmup=300, num_samples=1500, progress=False,
                        precision="float64")
    loops = np.asarray(result.draws["wilson_loops"], np.float64)
    est = loops.mean(axis=(0, 1))
    err = np.asarray(hmc.diagnostics.mcse(loops), np.float64)
    z = (est - np.asarray(pot.exact["wilson_loops"])) / err
    assert np.max(np.abs(z)) < 5, z
    creutz = result.summary().observables["creutz_ratio"]  # blocked jackknife of the loops' means
    assert abs(creutz.mean - pot.exact["creutz_ratio"]) / creutz.mcse < 5, (creutz.mean, pot.exact["creutz_ratio"])
    u1 = pm.yang_mills(group="U(1)", shape=(4, 4), beta=2.0)
    assert abs(u1.exact["plaquette"] - pm.u1_gauge(L=4, beta=2.0).exact["plaquette"]) < 1e-12
    z, _ = _plaquette_z(u1, seed=2)
    assert abs(z) < 5


@pytest.mark.slow
def test_4d_su2_at_strong_coupling_matches_the_one_plaquette_value():
    from scipy.special import iv

    beta = 0.5
    pot = pm.yang_mills(group="SU(2)", shape=(4, 4, 4, 4), beta=beta)
    result = hmc.sample(pot, seed=3, num_chains=4, num_warmup=200, num_samples=400, progress=False)
    row = result.summary().observables["plaquette"]
    exact = iv(2, beta) / iv(1, beta)  # + O(u^5), 3e-5 here
    assert abs(row.mean - exact) / row.mcse < 5, (row.mean, exact, row.mcse)


@pytest.fixture(autouse=True)
def x64_off_after():
    """``precision="float64"`` switches x64 on for the whole process: off again after."""
    yield
    jax.config.update("jax_enable_x64", False)


@dataclasses.dataclass(frozen=True)
class _LeakySU2(groups.SU2):
    """An exponential that scales the links by 1.001 and a projection that does nothing."""

    def exp(self, x):
        return 1.001 * super().exp(x)

    def project(self, u):
        return u


@pytest.mark.slow
def test_links_that_leave_the_group_are_an_off_group_event_and_a_warning():
    base = pm.yang_mills(group="SU(2)", shape=(2, 2), beta=1.0)
    leaky = dataclasses.replace(base, groups={"U": _LeakySU2()})
    result = hmc.sample(leaky, num_chains=2, num_warmup=0, step_size=0.1, num_steps=2, num_samples=4,
                        progress=False)
    [event] = [e for e in result.guard_events if e.kind == "off_group"]
    assert event.leaf == "U" and "left SU(2)" in event.message
    summary = result.summary()
    assert summary.sampler["group_defect_max"] > 1e-3
    assert "largest distance from the group" in str(summary)
    assert any("left their group" in w for w in result.warnings)


def test_draws_nc_keeps_complex_leaves(tmp_path):
    from hmc import rundir
    from hmc.checkpoint import STAT_NAMES

    links = (np.arange(2 * 3 * 2 * 2 * 2) + 1j * np.arange(48)[::-1]).reshape(2, 3, 2, 2, 2).astype(np.complex64)
    stats = {k: np.zeros((2, 3), bool if k in ("diverging", "guard_tripped") else np.float32)
             for k in STAT_NAMES}
    path = str(tmp_path / "draws.nc")
    rundir.write_draws(path, {"U": links, "plaquette": np.ones((2, 3))}, stats, {}, {}, {})
    back = rundir.read_draws(path)["draws"]
    assert back["U"].dtype.kind == "c" and np.array_equal(back["U"], links)


@pytest.mark.slow
def test_wilson_flow_is_third_order_decreases_the_energy_and_is_gauge_covariant():
    from physics_models import gradient_flow as gf

    with jax.enable_x64(True):
        su2 = groups.SU(2)
        u = su2.near_identity(jax.random.key(0), (2, 4, 4), 0.8, jnp.complex128)
        run = gf.flow(su2, u, t_max=0.4, eps=0.02, every=5)
        assert np.all(np.diff(run["E_plaquette"]) < 0) and np.all(np.diff(run["E_clover"]) < 0)
        values = [gf.flow(su2, u, t_max=0.2, eps=e, every=int(round(0.2 / e)))["E_plaquette"][-1]
                  for e in (0.04, 0.02, 0.01)]
        order = np.log2(abs(values[0] - values[1]) / abs(values[1] - values[2]))
        assert 2.6 < order < 3.4, order
        g = su2.random(jax.random.key(1), (4, 4), jnp.complex128)
        moved = gf.flow(su2, groups.gauge_transform(u, g), t_max=0.4, eps=0.02, every=5)
        assert np.allclose(moved["E_clover"], run["E_clover"], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_hmc_measure_flow_on_a_finished_run_directory(tmp_path):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "flow.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"model: {{name: yang_mills, params: {{group: 'SU(2)', shape: [4, 4], beta: 4.0}}}}\n"
                   f"sampler: {{num_chains: 2, num_warmup: 50, num_samples: 10, record: [U]}}\n"
                   f"output: {{dir: {out}}}\n")
    hmc_cli = [sys.executable, "-m", "hmc.cli"]
    assert subprocess.run(hmc_cli + ["run", str(cfg)], capture_output=True).returncode == 0
    done = subprocess.run(hmc_cli + ["measure", str(out), "flow", "--t-max", "0.5", "--configurations", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "flow.json").read_text())
    assert result["configurations"] == 3 and len(result["t2E_clover"]) == len(result["t"])
    assert "t0" in result["plaquette"] and "Wilson flow" in done.stdout
    missing = subprocess.run(hmc_cli + ["measure", str(tmp_path / "nothing"), "flow"], capture_output=True, text=True)
    assert missing.returncode == 2


def _gauge_higgs(shape=(3, 3), beta=2.0, kappa=0.3, lam=0.5):
    """SU(2) links and a fundamental Higgs doublet ``phi`` written as real numbers
    (``(*shape, 2, 2)``: the component, then real and imaginary part): a state that mixes a
    group leaf and an ordinary one, with the gauge symmetry acting on both."""
    ym_pot = pm.yang_mills(group="SU(2)", shape=shape, beta=beta)
    su2 = groups.SU(2)

    def doublet(phi):
        return phi[..., 0] + 1j * phi[..., 1]

    def higgs(q):
        u, h = q["U"], doublet(q["phi"])
        hop = sum(jnp.sum(jnp.real(jnp.conj(h) * jnp.einsum("...ij,...j->...i", u[mu], jnp.roll(h, -1, axis=mu))))
                  for mu in range(len(shape)))
        size = jnp.sum(jnp.abs(h) ** 2, axis=-1)
        return -2.0 * kappa * hop + jnp.sum(size + lam * (size - 1.0) ** 2)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"U": ym_pot.init(k1)["U"], "phi": 0.5 * jax.random.normal(k2, (*shape, 2, 2))}

    def gauge(key, q):
        g = su2.random(key, shape, q["U"].dtype)
        h = jnp.einsum("...ij,...j->...i", g, doublet(q["phi"]))
        return {"U": groups.gauge_transform(q["U"], g), "phi": jnp.stack([h.real, h.imag], axis=-1)}

    return hmc.Potential(terms={"gauge": ym_pot.terms["gauge"], "higgs": higgs}, init=init,
                         observables={"plaquette": ym_pot.observables["plaquette"],
                                      "phi2": lambda q: jnp.mean(jnp.sum(q["phi"] ** 2, axis=(-2, -1)))},
                         groups={"U": "SU(2)"}, symmetries={"gauge": gauge}, name="gauge_higgs")


@pytest.mark.slow
def test_a_state_mixing_links_and_a_higgs_field_is_checked_for_gauge_invariance():
    pot = _gauge_higgs()
    q = pot.init(jax.random.key(0))
    assert symmetry_events(pot, q) == []

    def hop_without_the_link(q):  # phi(x)^dag phi(x + mu): not gauge invariant
        h = q["phi"][..., 0] + 1j * q["phi"][..., 1]
        return -jnp.sum(jnp.real(jnp.conj(h) * jnp.roll(h, -1, axis=0)))

    [event] = symmetry_events(dataclasses.replace(pot, terms={**pot.terms, "hop": hop_without_the_link}), q)
    assert (event.kind, event.term) == ("symmetry_broken", "hop")


@pytest.mark.slow
def test_group_leaves_with_timescales_tempering_ghmc_and_a_bit_exact_resume():
    pot = _gauge_higgs()
    report = hmc.check_reversibility(pot, precision="float64", step_size=0.1, num_steps=3, num_chains=2,
                                     refinements=1)
    assert report["max_abs_dq"] < 1e-12 and report["max_abs_dh"] < 1e-10
    nested = [{"terms": ["higgs"], "steps": 1}, {"terms": ["gauge"], "steps": 2}]
    kw = dict(seed=3, num_chains=2, num_warmup=40, num_samples=40, chunk_size=20, num_steps=4, progress=False,
              precision="float64", timescales=nested, integrator="force_gradient")
    whole = hmc.sample(pot, **kw)
    assert 0.5 < float(np.mean(whole.stats["acceptance_rate"])) and whole.guard_events == []
    assert whole.summary().sampler["group_defect_max"] < 1e-12
    saved = []

    def stop(end):
        saved.append(end.snapshot())
        return len(saved) == 3

    assert hmc.sample(pot, **kw, on_chunk=stop).stopped
    again = hmc.sample(pot, **kw, resume=saved[-1])
    for k, v in whole.draws.items():
        np.testing.assert_array_equal(v, again.draws[k], err_msg=k)
    tempered = hmc.sample(pot, seed=1, num_chains=2, num_warmup=40, num_samples=20, num_steps=4, progress=False,
                          tempering={"replicas": 2, "beta_min": 0.5})
    assert tempered.guard_events == [] and np.isfinite(tempered.draws["plaquette"]).all()
    ghmc = hmc.sample(pot, kernel="ghmc", seed=2, num_chains=2, num_warmup=40, num_samples=20, progress=False)
    assert ghmc.guard_events == [] and ghmc.summary().sampler["group_defect_max"] < 1e-5


@pytest.mark.slow
def test_nested_trajectories_on_a_group_leaf_are_reversible():
    """``check_reversibility(..., timescales=...)`` on a group leaf and an ordinary one:
    the nested scheme reversible to rounding and second order."""
    pot = _gauge_higgs(shape=(2, 2))
    nested = hmc.check_reversibility(pot, timescales=[{"terms": ["higgs"], "steps": 1},
                                                      {"terms": ["gauge"], "steps": 3}],
                                     precision="float64", step_size=0.2, num_steps=3, num_chains=2, refinements=2)
    assert nested["max_abs_dq"] < 1e-12 and nested["max_abs_dp"] < 1e-12 and nested["max_abs_dh"] < 1e-10
    assert abs(nested["slope"] - 2.0) < 0.15 and nested["max_group_defect"] < 1e-13
    assert "nested higgs x 1 / gauge x 3" in format_report(nested)


@pytest.mark.slow
def test_hmc_check_reversibility_uses_the_configs_timescales(capsys):
    """``hmc check --reversibility`` on a config with ``timescales`` checks that scheme."""
    from hmc.cli import main

    assert main(["check", "--reversibility", os.path.join(CONFIGS, "schwinger.yaml")]) == 0
    out = capsys.readouterr().out
    assert "nested fermion x 1 / gauge x 4" in out and "slope 2.0" in out

GAUGE_ON_TWO_DEVICES = """
import json, jax, numpy as np, hmc, physics_models as pm
pot = pm.yang_mills(group="SU(2)", shape=(2, 2), beta=2.0)
kw = dict(seed=4, num_chains=4, num_warmup=0, step_size=0.2, num_steps=3, num_samples=10, progress=False,
          precision="float64")
one = hmc.sample(pot, devices=1, **kw)
two = hmc.sample(pot, devices=2, **kw)
same = all(np.array_equal(one.draws[k], two.draws[k]) for k in one.draws)
print("RESULT " + json.dumps({"devices": len(jax.devices()), "same": bool(same)}))
"""


@pytest.mark.slow
def test_group_leaves_sharded_over_two_devices_give_the_draws_of_one():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", GAUGE_ON_TWO_DEVICES], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert out == {"devices": 2, "same": True}


@pytest.mark.slow
def test_4d_su3_at_strong_coupling_matches_the_one_plaquette_value():
    from physics_models import exact_gauge

    pot = pm.yang_mills(group="SU(3)", shape=(4, 4, 4, 4), beta=1.0)
    result = hmc.sample(pot, seed=5, num_chains=4, num_warmup=100, num_samples=150, progress=False)
    row = result.summary().observables["plaquette"]
    exact = exact_gauge.plaquette_2d("SU(3)", 1.0)  # beta/18 + beta^2/216 + ...; the cube's O(u^5) is 8e-7
    assert abs(row.mean - exact) / row.mcse < 5, (row.mean, exact, row.mcse)


@pytest.mark.slow
def test_preflight_findings_on_complex_leaves_name_the_term_and_primitive():
    """A detached path and a NaN on group-valued (complex) leaves: found as on real ones."""
    pot = pm.yang_mills(group="SU(2)", shape=(2, 2), beta=1.0)
    q = pot.init(jax.random.key(0))

    def partly_detached(q):
        return jnp.sum(jnp.real(q["U"])) + jnp.sum(jnp.imag(jax.lax.stop_gradient(q["U"])))

    def singular(q):
        return jnp.sum(jnp.sqrt(jnp.real(q["U"]) - 2.0))

    for term, fn, kind, primitive in (("mine", partly_detached, "partially_detached", "stop_gradient"),
                                      ("root", singular, "nonfinite_energy", "sqrt")):
        report = hmc.guard.preflight(dataclasses.replace(pot, terms={**pot.terms, term: fn}, symmetries={}), q)
        assert not report.ok
        assert (kind, term, primitive) in {(e.kind, e.term, e.primitive) for e in report.events}


def test_symmetry_preflight_on_a_plain_rotation():
    """The default tier's symmetry check: a radial term is invariant under a random rotation,
    a term that reads one coordinate is not, and is named with its symmetry."""
    def rotate(key, q):
        angle = jax.random.uniform(key, (), minval=0.5, maxval=2.5)
        c, s = jnp.cos(angle), jnp.sin(angle)
        return {"x": jnp.stack([c * q["x"][0] - s * q["x"][1], s * q["x"][0] + c * q["x"][1]])}

    pot = hmc.Potential(terms={"radial": lambda q: jnp.sum(q["x"] ** 2), "tilt": lambda q: q["x"][0]},
                        init=lambda key: {"x": jnp.array([0.7, -0.4])}, symmetries={"rotation": rotate})
    [event] = symmetry_events(pot, pot.init(jax.random.key(0)))
    assert (event.kind, event.term) == ("symmetry_broken", "tilt") and "'rotation'" in event.message
