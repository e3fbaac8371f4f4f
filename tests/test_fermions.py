"""Auxiliary fields and the Schwinger model: the Wilson-Dirac operator, the pseudofermion
heat bath and action, their forces, and sampling with fields redrawn per trajectory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from physics_models import fermions, schwinger

L, MASS = 4, 0.1


@pytest.fixture
def x64_off_after():
    """``precision="float64"`` switches x64 on for the whole process: off again after the
    test, so that the tests after it in this worker run as they would alone."""
    yield
    jax.config.update("jax_enable_x64", False)


def links(seed=1, spread=np.pi):
    return jax.random.uniform(jax.random.key(seed), (2, L, L), minval=-spread, maxval=spread)


def test_wilson_dirac_is_gamma5_hermitian_and_its_dense_form_matches():
    with jax.enable_x64(True):
        theta = links()
        dense = np.asarray(fermions.dense_dirac(theta, MASS))
        g5 = np.kron(np.eye(L * L), np.diag([1.0, -1.0]))
        np.testing.assert_allclose(g5 @ dense @ g5, dense.conj().T, atol=1e-14)
        assert abs(np.linalg.det(dense).imag) < 1e-8 * abs(np.linalg.det(dense).real)  # det D is real
        psi = np.random.default_rng(0).normal(size=(L, L, 2, 2)) @ np.array([1.0, 1j])
        np.testing.assert_allclose(fermions.dirac(theta, jnp.asarray(psi), MASS).reshape(-1), dense @ psi.reshape(-1),
                                   atol=1e-13)
        # free field: the lowest |eigenvalue| is the bare mass (zero momentum exists only in space,
        # time is antiperiodic, so it sits above m)
        free = np.abs(np.linalg.eigvals(np.asarray(fermions.dense_dirac(jnp.zeros((2, L, L)), MASS))))
        assert free.min() > MASS


def free_pion_correlator(size, mass):
    """The free Wilson pion correlator from momentum space, independent of the position-space
    operator: ``D(p) = m + sum_mu (1 - cos p_mu) + i sum_mu gamma_mu sin p_mu`` with
    antiperiodic time momenta ``p_0 = pi (2n + 1) / L``, ``S(x) = (1/V) sum_p e^{ipx} D(p)^{-1}``."""
    gammas = [np.array([[0, 1], [1, 0]], complex), np.array([[0, -1j], [1j, 0]])]
    p0 = np.pi * (2 * np.arange(size) + 1) / size
    p1 = 2 * np.pi * np.arange(size) / size
    x = np.arange(size)
    prop = np.zeros((size, size, 2, 2), complex)
    for a in p0:
        for b in p1:
            d = (mass + 2 - np.cos(a) - np.cos(b)) * np.eye(2) + 1j * (np.sin(a) * gammas[0] + np.sin(b) * gammas[1])
            phase = np.exp(1j * (a * x[:, None] + b * x[None, :]))
            prop += phase[..., None, None] * np.linalg.inv(d)
    prop /= size * size
    return np.sum(np.abs(prop) ** 2, axis=(1, 2, 3))


@pytest.mark.slow
def test_pion_correlator_is_the_free_field_value_and_agrees_with_the_dense_inverse():
    with jax.enable_x64(True):
        size = 6
        free = np.asarray(fermions.pion_correlator(fermions.point_propagator(jnp.zeros((2, size, size)), MASS,
                                                                             1e-12, 1000)))
        np.testing.assert_allclose(free, free_pion_correlator(size, MASS), rtol=1e-9)
        assert np.all(free > 0) and free[1] > free[size // 2]  # decays towards the middle of the torus
        np.testing.assert_allclose(free, free[(-np.arange(size)) % size], rtol=1e-9)  # C(t) = C(L - t)
        # on a rough configuration: the CG propagator is a column of the dense inverse
        theta = links(seed=3)
        inverse = np.linalg.inv(np.asarray(fermions.dense_dirac(theta, MASS))).reshape(L, L, 2, L, L, 2)
        column = inverse[:, :, :, 0, 0, :]
        np.testing.assert_allclose(np.asarray(fermions.point_propagator(theta, MASS, 1e-12, 1000)), column,
                                   atol=1e-9)
        pot = schwinger(L=L, mass=MASS)
        np.testing.assert_allclose(np.asarray(pot.observables["pion"]({"theta": theta})),
                                   np.sum(np.abs(column) ** 2, axis=(1, 2, 3)), rtol=1e-6)


def test_pseudofermion_action_of_the_heat_bath_is_eta_squared_and_its_force_is_exact():
    with jax.enable_x64(True):
        pot = schwinger(L=L, mass=MASS, cg_tol=1e-12)
        theta = links()
        key = jax.random.key(5)
        phi = pot.refresh(key, {"theta": theta})["phi"]
        # phi = D^dagger eta: S = phi^dagger (D^dagger D)^{-1} phi = |eta|^2
        eta = fermions.to_complex(jax.random.normal(hmc.rng.fold_in(key, 0), (2, L, L, 2)) * np.sqrt(0.5))
        # compiled once each (op by op, every CG iteration would dispatch its own operations)
        energy = jax.jit(lambda th: pot.terms["fermion"]({"theta": th, "phi": phi}))
        np.testing.assert_allclose(float(energy(theta)), float(jnp.sum(jnp.abs(eta) ** 2)), rtol=1e-9)
        # the implicit-differentiation force against central differences
        v = jax.random.normal(jax.random.key(9), theta.shape)
        h = 1e-5
        fd = (energy(theta + h * v) - energy(theta - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(jax.jit(jax.grad(energy))(theta), v)), float(fd), rtol=1e-6)
        exact = schwinger(L=L, mass=MASS, fermions="exact").terms["fermion_exact"]
        e = jax.jit(lambda th: exact({"theta": th}))
        fd = (e(theta + h * v) - e(theta - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(jax.jit(jax.grad(e))(theta), v)), float(fd), rtol=1e-6)


def test_hasenbusch_fields_are_exact_heat_baths_and_their_forces_are_exact():
    """Both fields of the Hasenbusch split are exact heat-bath draws (each action at a fresh
    field is ``|eta|^2`` of its own noise), and both forces agree with central differences."""
    with jax.enable_x64(True):
        pot = schwinger(L=L, mass=MASS, hasenbusch_mass=0.6, cg_tol=1e-12)
        assert set(pot.terms) == {"gauge", "fermion_heavy", "fermion_ratio"}
        assert set(pot.auxiliary) == {"phi_heavy", "phi_ratio"}
        theta, key = links(), jax.random.key(5)
        q = {"theta": theta, **pot.refresh(key, {"theta": theta})}
        for i, name in enumerate(("fermion_heavy", "fermion_ratio")):
            eta = jax.random.normal(hmc.rng.fold_in(key, i), (2, L, L, 2)) * np.sqrt(0.5)
            np.testing.assert_allclose(float(pot.terms[name](q)), float(jnp.sum(eta ** 2)), rtol=1e-9, err_msg=name)
            energy = lambda th: pot.terms[name]({**q, "theta": th})  # noqa: E731
            v = jax.random.normal(jax.random.key(9 + i), theta.shape)
            h = 1e-5
            fd = (energy(theta + h * v) - energy(theta - h * v)) / (2 * h)
            np.testing.assert_allclose(float(jnp.vdot(jax.grad(energy)(theta), v)), float(fd), rtol=1e-6,
                                       err_msg=name)


def test_hasenbusch_needs_pseudofermions_and_a_heavier_mass():
    with pytest.raises(ValueError, match="hasenbusch_mass"):
        schwinger(L=L, mass=0.1, hasenbusch_mass=0.05)
    with pytest.raises(ValueError, match="hasenbusch_mass"):
        schwinger(L=L, mass=0.1, fermions="exact", hasenbusch_mass=0.5)


def test_log_abs_det_is_slogdet_with_its_gradient():
    """The LAPACK-free determinant of the exact-fermion term against numpy's slogdet, and its
    reverse-mode gradient against central differences."""
    with jax.enable_x64(True):
        theta = links(seed=5)
        dense = fermions.dense_dirac(theta, MASS)
        np.testing.assert_allclose(float(fermions.log_abs_det(dense)), np.linalg.slogdet(np.asarray(dense))[1],
                                   rtol=1e-12)
        f = lambda th: fermions.log_abs_det(fermions.dense_dirac(th, MASS))  # noqa: E731
        v = jax.random.normal(jax.random.key(4), theta.shape)
        h = 1e-6
        fd = (f(theta + h * v) - f(theta - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(jax.grad(f)(theta), v)), float(fd), rtol=1e-6)
        # a batch (the chains' vmap) is the same matrices one by one
        batch = jnp.stack([dense, fermions.dense_dirac(links(seed=6), MASS)])
        np.testing.assert_allclose(np.asarray(jax.vmap(fermions.log_abs_det)(batch)),
                                   np.linalg.slogdet(np.asarray(batch))[1], rtol=1e-12)


def test_conjugate_gradient_reports_iterations_and_residual():
    with jax.enable_x64(True):
        theta = links()
        b = jax.random.normal(jax.random.key(3), (2, L, L, 2))
        op = fermions.normal_operator(theta, MASS)
        x, (k, res) = fermions.conjugate_gradient(op, b, 1e-10, 500)
        assert res <= 1e-10 and 0 < k < 500
        assert float(jnp.linalg.norm(op(x) - b) / jnp.linalg.norm(b)) < 1e-9
        _, (k, res) = fermions.conjugate_gradient(op, b, 1e-10, 3)  # capped: stops short
        assert int(k) == 3 and res > 1e-6


def test_model_checks_its_parameters():
    with pytest.raises(ValueError, match="L must be an even integer"):
        schwinger(L=5)
    with pytest.raises(ValueError, match="fermions must be one of"):
        schwinger(fermions="staggered")
    with pytest.raises(ValueError, match="n_flavors=1"):
        schwinger(n_flavors=1)


@pytest.mark.slow
def test_auxiliary_fields_are_redrawn_each_trajectory_kept_apart_and_resumed_bit_exact(x64_off_after):
    pot = schwinger(L=L, mass=0.5, beta=1.0)
    kw = dict(seed=2, num_chains=2, num_warmup=0, num_samples=24, chunk_size=8, num_steps=3, step_size=0.2,
              precision="float64", mass_matrix="identity", progress=False)
    whole = hmc.sample(pot, **kw)
    # observables and recorded leaves see the links only
    assert set(whole.draws) == {"plaquette", "topological_charge", "condensate", "pion", "theta"}
    assert np.mean(whole.stats["acceptance_rate"]) > 0.5
    saved = []

    def stop(end):
        saved.append(end.snapshot())
        return len(saved) == 2

    assert hmc.sample(pot, **kw, on_chunk=stop).stopped
    again = hmc.sample(pot, **kw, resume=saved[-1])
    for k, v in whole.draws.items():
        np.testing.assert_array_equal(v, again.draws[k], err_msg=k)
    np.testing.assert_array_equal(whole.stats["lp"], again.stats["lp"])


def test_the_kernel_redraws_the_fields_and_tests_at_fixed_fields():
    """One transition by hand: the fields of the new state are those of this transition's
    key, and the energy change the Metropolis test saw is that of the fixed fields."""
    from hmc.kernels import HMC, Params

    with jax.enable_x64(True):
        pot = schwinger(L=L, mass=0.5, beta=1.0, cg_tol=1e-12)
        kernel = HMC(integrator="leapfrog", num_steps=3).build(pot, "step")
        state = kernel.init({"theta": links(spread=0.3)})
        key = jax.random.key(11)
        new, info = jax.jit(kernel.step)(key, state, Params(jnp.asarray(0.1), None))
        fields = pot.refresh(hmc.rng.fold_in(key, 3), state.position)
        # the step is compiled (op by op every CG iteration dispatches), the refresh here is not: rounding apart
        np.testing.assert_allclose(new.auxiliary["phi"], fields["phi"], rtol=1e-12, atol=1e-14)
        assert not np.array_equal(np.asarray(new.auxiliary["phi"]), np.asarray(state.auxiliary["phi"]))
        # the new state's energy is the action at the fields of this transition
        u = pot.energy({**new.position, **fields})
        np.testing.assert_allclose(float(new.potential_energy), float(u), rtol=1e-10)
        assert np.isfinite(float(info.delta_energy))


@pytest.mark.slow
@pytest.mark.parametrize("size", [4])
def test_pseudofermions_agree_with_the_exact_determinant(size, x64_off_after):
    """Two flavours at beta = 2, m = 0.1: the pseudofermion run, the Hasenbusch-split run
    (three timescales) and the exact-determinant run agree within their Monte Carlo errors
    on the plaquette and the condensate."""
    results = {}
    three_levels = [{"terms": ["fermion_ratio"], "steps": 1}, {"terms": ["fermion_heavy"], "steps": 2},
                    {"terms": ["gauge"], "steps": 2}]
    for kind, extra, timescales in (("pseudofermion", {}, None), ("exact", {}, None),
                                    ("pseudofermion", {"hasenbusch_mass": 0.5}, three_levels)):
        pot = schwinger(L=size, beta=2.0, mass=0.1, fermions=kind, **extra)
        r = hmc.sample(pot, seed=1, num_chains=8, num_warmup=200, num_samples=300, precision="float64",
                       mass_matrix="identity", trajectory_length=1.0, progress=False, timescales=timescales)
        results[kind + ("_hasenbusch" if extra else "")] = r.summary()
    for name, other in (("plaquette", "pseudofermion"), ("condensate", "pseudofermion"),
                        ("plaquette", "pseudofermion_hasenbusch"), ("condensate", "pseudofermion_hasenbusch")):
        a, b = (results[k].observables[name] for k in (other, "exact"))
        z = (float(a.mean) - float(b.mean)) / np.hypot(float(a.mcse), float(b.mcse))
        assert abs(z) < 4.0, (name, float(a.mean), float(b.mean), z)


@pytest.mark.slow
def test_quenched_plaquette_matches_the_bessel_sum():
    pot = schwinger(L=4, beta=2.0, fermions="none")
    r = hmc.sample(pot, seed=0, num_chains=8, num_warmup=200, num_samples=500, mass_matrix="identity",
                   trajectory_length=1.0, progress=False)
    s = r.summary().observables["plaquette"]
    assert abs(float(s.mean) - float(pot.exact["plaquette"])) < 4.0 * float(s.mcse)


def test_attribution_names_a_solver_that_stopped_at_its_cap():
    """The default tier's stand-in for the run below: at a state where the capped CG does
    not converge, attribution reports ``solver_not_converged`` (not a bare NaN) with the
    residual and the iteration count."""
    with jax.enable_x64(True):
        pot = schwinger(L=L, mass=0.1, beta=2.0, cg_maxiter=5)
        events = hmc.guard.attribute(pot, {"theta": links()}, phase="sampling", chain=1, draw=3, leapfrog_step=2)
        assert [e.kind for e in events] == ["solver_not_converged"] and events[0].term == "fermion"
        assert events[0].details["iterations"] == 5 and events[0].details["residual"] > 1e-8
        converged = hmc.guard.attribute(schwinger(L=L, mass=0.1, beta=2.0), {"theta": links()}, phase="sampling")
        assert "solver_not_converged" not in [e.kind for e in converged]


@pytest.mark.slow  # test_qcd's slow capped-solve test names both terms; one capped solve is named in the default tier
def test_attribution_names_each_hasenbusch_term_whose_solver_stopped_at_its_cap():
    """Both terms of the split report their solves' health: with a cap too low for either,
    each term is named (``fermion_ratio`` with its heat bath's solve too, which runs at the
    heavy mass); with a cap between the heavy solve's iterations and the light one's, only
    ``fermion_ratio`` is."""
    with jax.enable_x64(True):
        theta = links()

        def failing(cap):
            pot = schwinger(L=L, mass=0.1, beta=2.0, hasenbusch_mass=1.0, cg_maxiter=cap)
            events = hmc.guard.attribute(pot, {"theta": theta}, phase="sampling", chain=0, draw=0)
            return {e.term: e for e in events if e.kind == "solver_not_converged"}

        both = failing(3)
        assert set(both) == {"fermion_heavy", "fermion_ratio"}
        assert both["fermion_heavy"].details["iterations"] == 3 and both["fermion_heavy"].details["residual"] > 1e-8
        assert both["fermion_ratio"].details["heat_bath_iterations"] == 3
        assert both["fermion_ratio"].details["heat_bath_residual"] > 1e-8
        x = fermions.to_real(fermions.gaussian_spinor(jax.random.key(0), theta))
        iterations = {m: int(fermions.conjugate_gradient(fermions.normal_operator(theta, m), x, 1e-8, 500)[1][0])
                      for m in (0.1, 1.0)}
        assert iterations[1.0] < iterations[0.1]
        cap = (iterations[1.0] + iterations[0.1]) // 2
        assert set(failing(cap)) == {"fermion_ratio"}, (iterations, cap)


@pytest.mark.slow
def test_a_solver_at_its_iteration_cap_is_refused_then_rejected_and_named(x64_off_after):
    """A CG cap too low to converge: preflight refuses to start; allowed, every trajectory
    is rejected and the guard reports ``solver_not_converged`` with the term, the residual,
    the iteration count, the chain and the step."""
    from hmc.initial import GuardRefused

    pot = schwinger(L=L, mass=0.1, beta=2.0, cg_maxiter=5)
    kw = dict(seed=0, num_chains=2, num_warmup=0, step_size=0.1, num_samples=4, chunk_size=4, num_steps=2,
              precision="float64", mass_matrix="identity", progress=False)
    with pytest.raises(GuardRefused, match="solver_not_converged in term 'fermion'"):
        hmc.sample(pot, **kw)
    r = hmc.sample(pot, **kw, max_trip_fraction=1.0, allow=["solver_not_converged"])
    assert r.stats["guard_tripped"].all() and not r.stats["acceptance_rate"].any()
    events = [e for e in r.guard_events if e.phase == "sampling"]
    assert events and all(e.kind == "solver_not_converged" and e.term == "fermion" for e in events)
    e = events[0]
    assert e.details["iterations"] == 5 and e.details["residual"] > 1e-8
    assert e.chain is not None and e.leapfrog_step is not None and e.draw is not None
