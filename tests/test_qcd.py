"""Wilson fermions for any group and dimension (physics_models.wilson, physics_models.qcd):
the operator and its even-odd form, the free field against momentum space, the U(1) case
against the Schwinger model, forces on the group, the guard on fermion actions, and (slow
tier) sampling against the exact determinant and the quenched limit."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models as pm
from hmc import groups
from hmc.guard.symmetry import property_events, symmetry_events
from physics_models import fermions
from physics_models import wilson

qcd_module = importlib.import_module("physics_models.qcd")


def random_links(group, shape, seed=1):
    return groups.get(group).random(jax.random.key(seed), (len(shape), *shape), jnp.complex128)


def random_field(shape, seed=2):
    x = jax.random.normal(jax.random.key(seed), (2, *shape), jnp.float64)
    return x[0] + 1j * x[1]


def test_gamma_matrices_are_a_hermitian_clifford_basis_with_the_stated_gamma5():
    for d in (2, 4):
        gamma, g5 = wilson.gammas(d)
        for mu in range(d):
            np.testing.assert_allclose(gamma[mu], gamma[mu].conj().T)
            np.testing.assert_allclose(g5 @ gamma[mu] + gamma[mu] @ g5, 0, atol=1e-15)
            for nu in range(d):
                np.testing.assert_allclose(gamma[mu] @ gamma[nu] + gamma[nu] @ gamma[mu], 2 * (mu == nu) * np.eye(2 * d // 2 if d == 2 else 4), atol=1e-15)
        np.testing.assert_allclose(g5, np.diag([1, -1]) if d == 2 else np.diag([1, 1, -1, -1]))
    with pytest.raises(ValueError, match="d = 2 or 4"):
        wilson.gammas(3)


def even_odd_parts(shape, csw, u, psi):
    """The full operator on ``psi``, its rebuild from the even-odd blocks, the dense ``D`` and
    the dense Schur complement (one jitted program)."""
    n = u.shape[-1]
    op = wilson.Wilson(shape, 0.3, csw)
    eo = wilson.Wilson(shape, 0.3, csw, even_odd=True)
    prep = wilson.prepare(eo, u)
    f = eo.field_strengths(u)
    f_even = None if f is None else jnp.stack([wilson.pack(x, shape, 0) for x in f])
    even, odd = wilson.pack(psi, shape, 0), wilson.pack(psi, shape, 1)
    rebuilt = wilson.unpack(eo.local(None, even, f_even) + wilson.hop_packed(eo, prep["u_even"], prep["u_odd"], odd, 0),
                            eo.local(None, odd, prep.get("f_odd")) + wilson.hop_packed(eo, prep["u_odd"], prep["u_even"], even, 1),
                            shape)
    size = int(np.prod(wilson.solve_shape(eo, n)))
    basis = jnp.eye(size, dtype=jnp.complex128).reshape(size, *wilson.solve_shape(eo, n))
    schur = jax.vmap(lambda e: wilson.matvec(eo, prep, e).reshape(size))(basis).T
    dense = wilson.dense(op, u)
    return op.apply(u, psi), rebuilt, dense, schur, wilson.log_det_local(eo, prep), wilson.invert(dense)


@pytest.mark.parametrize("group,shape,csw", [
    pytest.param("SU(2)", (2, 2, 2, 4), 1.3, marks=pytest.mark.slow),
    pytest.param("SU(3)", (4, 2), 1.0, marks=pytest.mark.slow), ("U(1)", (4, 6), 0.0)])
def test_even_odd_blocks_rebuild_the_operator_and_the_determinant_identity_holds(group, shape, csw):
    """``unpack(A_ee psi_e + H_eo psi_o, H_oe psi_e + A_oo psi_o) = D psi`` exactly, and
    ``log|det D| = log|det A_ee| + log|det D_hat|``; ``D`` is gamma_5-Hermitian; the
    Gauss-Jordan inverse and determinant against numpy's."""
    with jax.enable_x64(True):
        u = random_links(group, shape)
        n = u.shape[-1]
        psi = random_field((*shape, 2 if len(shape) == 2 else 4, n))
        full, rebuilt, dense, schur, local, (inverse, log_det) = jax.jit(
            lambda u, psi: even_odd_parts(shape, csw, u, psi))(u, psi)
        np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(full), atol=1e-13)
        dense = np.asarray(dense)
        g5 = np.kron(np.eye(int(np.prod(shape))), np.kron(wilson.gammas(len(shape))[1], np.eye(n)))
        np.testing.assert_allclose(g5 @ dense @ g5, dense.conj().T, atol=1e-14)
        local = float(local) if csw else len(schur) * np.log(0.3 + len(shape))
        np.testing.assert_allclose(np.linalg.slogdet(np.asarray(schur))[1] + local, np.linalg.slogdet(dense)[1],
                                   rtol=1e-12)
        np.testing.assert_allclose(float(log_det), np.linalg.slogdet(dense)[1], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(inverse) @ dense, np.eye(len(dense)), atol=1e-11)


@pytest.mark.slow
def test_free_field_propagator_condensate_and_correlators_match_momentum_space():
    """All links 1: the CG point propagator (with even-odd), the noise condensate and the
    pion correlators equal the free Wilson propagator summed in momentum space."""
    with jax.enable_x64(True):
        shape, mass, n = (2, 2, 4, 8), 0.2, 2
        op = wilson.Wilson(shape, mass, even_odd=True)
        u = groups.SU(2).identity((4, *shape), jnp.complex128)
        free = wilson.free_propagator(shape, mass)  # (*shape, S, S), colour identity
        prop = np.asarray(jax.jit(lambda u: qcd_module.point_propagator(op, u, 1e-13, 500))(u))
        expected = np.einsum("xyztab,ij->bjxyztai", free, np.eye(n))  # (src S, src N, *shape, S, N)
        np.testing.assert_allclose(prop, expected, atol=1e-11)
        pp, ap = qcd_module.correlators(op, jnp.asarray(expected))
        np.testing.assert_allclose(np.asarray(qcd_module.correlators(op, jnp.asarray(prop))[0]), pp, rtol=1e-10)
        assert np.all(np.asarray(pp) > 0)
        # the PCAC mass of the free quark approaches the bare mass (tree level)
        big = wilson.free_propagator((4, 4, 4, 16), 0.1)
        g = wilson.gammas(4)[0][3]
        pp16 = np.einsum("...ab,...ab->...", big, big.conj()).real.sum(axis=(0, 1, 2))
        ap16 = np.einsum("ab,...bc,...ac->...", g, big, big.conj()).real.sum(axis=(0, 1, 2))
        m = qcd_module.pcac_mass(pp16, ap16)
        assert np.all(np.abs(m[4:10] - 0.1) < 0.01), m
        # the noise condensate is eta^dag D^{-1} eta exactly, D^{-1}(x, y) = S(x - y) (antiperiodic)
        noise = qcd_module.condensate_noise(shape, op.spins, n, 2)
        value, _ = jax.jit(lambda u: qcd_module.condensate_estimate(op, u, noise, 1e-13, 500))(u)
        inverse = translated_inverse(free, shape)
        flat = noise.reshape(2, -1, op.spins, n)
        exact = np.mean([np.einsum("xai,xyab,ybi->", e, inverse, e).real for e in flat]) / np.prod(shape)
        np.testing.assert_allclose(float(value), exact, rtol=1e-10)


def translated_inverse(free, shape):
    """``D^{-1}(x, y)`` ``(V, V, S, S)`` from ``S(x - y)``, with the sign of a wrap in time."""
    sites = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, len(shape))
    diff = sites[:, None, :] - sites[None, :, :]
    wrapped = diff % np.array(shape)
    sign = np.where(diff[..., -1] < 0, -1.0, 1.0)
    return free[tuple(wrapped[..., k] for k in range(len(shape)))] * sign[..., None, None]


def test_u1_in_two_dimensions_is_the_schwinger_model():
    """``qcd("U(1)", (L, L))``'s operator has the Schwinger model's determinant on the same
    links (the models put time on different axes: the links are transposed)."""
    with jax.enable_x64(True):
        L, mass = 4, 0.1
        theta = jax.random.uniform(jax.random.key(3), (2, L, L), jnp.float64, -np.pi, np.pi)
        swapped = jnp.stack([theta[1].T, theta[0].T])  # schwinger's time axis 0 -> qcd's axis 1
        u = jnp.exp(1j * swapped)[..., None, None]
        ours = float(jax.jit(lambda u: qcd_module.log_abs_det(wilson.Wilson((L, L), mass), u))(u))
        theirs = float(jax.jit(lambda t: fermions.log_abs_det(fermions.dense_dirac(t, mass)))(theta))
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
        pot = pm.qcd(group="U(1)", shape=(L, L), beta=2.0, mass=mass, fermions="exact")
        plaquette = float(jax.jit(pot.observables["plaquette"])({"U": u}))
        np.testing.assert_allclose(plaquette, float(jnp.mean(jnp.cos(pm.gauge.plaquette_angles(theta)))), rtol=1e-12)


def lie_check(energy, force, u, group, links, generators=(0, 1)):
    """Finite differences along ``exp(t T_a) U`` at a few links against the algebra force."""
    gen = groups.get(group).generators(jnp.complex128)
    for link in links:
        for a in generators:
            def moved(t, a=a, link=link):
                return u.at[link].set(groups.get(group).exp(t * gen[a]) @ u[link])
            h = 1e-5
            fd = (float(energy(moved(h))) - float(energy(moved(-h)))) / (2 * h)
            lie = -2.0 * float(jnp.real(jnp.trace(force[link] @ gen[a])))
            assert abs(fd - lie) < 1e-6 * max(1.0, abs(fd)), (link, a, fd, lie)


@pytest.mark.parametrize("kw", [pytest.param(dict(group="SU(2)", shape=(2, 2, 2, 2), csw=1.1), marks=pytest.mark.slow),
                                pytest.param(dict(group="SU(3)", shape=(4, 2), hasenbusch_mass=0.6, csw=0.8),
                                             marks=pytest.mark.slow),
                                pytest.param(dict(group="SU(2)", shape=(2, 2, 2, 2), fermions="exact", csw=0.5),
                                             marks=pytest.mark.slow),
                                pytest.param(dict(group="SU(2)", shape=(2, 4), csw=0.7), marks=pytest.mark.slow)])
def test_fermion_forces_on_the_group_are_the_lie_derivatives_and_heat_baths_are_exact(kw):
    with jax.enable_x64(True):
        pot = pm.qcd(mass=0.2, cg_tol=1e-13, **kw)
        shape = kw["shape"]
        u = random_links(kw["group"], shape)
        fields = jax.jit(pot.refresh)(jax.random.key(4), {"U": u})
        for term, fn in pot.terms.items():
            if term == "gauge":
                continue
            energy = jax.jit(lambda links, fn=fn: fn(pot.lifted({"U": links, **fields})))
            force = jax.jit(jax.grad(energy))(u)
            lie_check(energy, force, u, kw["group"], [(0, *([0] * len(shape))), (len(shape) - 1, *([1] * len(shape)))])
        if kw.get("fermions") == "exact":
            return
        # phi = M^dag eta: the inverse form at the fresh field is |eta|^2 (refresh's fold_in keys)
        op = wilson.Wilson(shape, 0.2, kw["csw"], even_odd=True)
        name = "phi" if "phi" in fields else "phi_heavy"
        if name == "phi_heavy":
            op = wilson.Wilson(shape, 0.6, kw["csw"], even_odd=True)
        eta = jax.jit(lambda u: qcd_module.gaussian_field(hmc.rng.fold_in(jax.random.key(4), 0), op, u))(u)
        value = float(jax.jit(lambda u, phi: qcd_module._inverse_form(op, u, phi, 1e-13, 1000)[0])(u, fields[name]))
        np.testing.assert_allclose(value, float(jnp.vdot(eta, eta).real), rtol=1e-9)


def broken_potential(kind, fermions="pseudofermion", shape=(2, 2, 2, 2)):
    """SU(2) with a deliberately broken hopping term."""

    class Broken(wilson.Wilson):
        def hop(self, u, psi):
            identity = np.eye(self.spins)
            out = jnp.zeros_like(psi)
            forward_sign, backward_sign = wilson.time_signs(self.shape, psi.real.dtype)
            for mu in range(self.d):
                forward = wilson.colour(u[mu], jnp.roll(psi, -1, axis=mu))
                if kind == "missing_dagger":
                    backward = jnp.roll(wilson.colour(u[mu], psi), 1, axis=mu)  # fault: U, not U^dag
                else:
                    backward = jnp.roll(wilson.colour_dagger(u[mu], psi), 1, axis=mu)
                if mu == self.d - 1:
                    forward, backward = forward * forward_sign, backward * backward_sign
                sign = -1 if kind == "wrong_sign" else 1  # fault: (1 - gamma) on both hops
                out = out + wilson._spin(identity - self._gamma[mu], forward)
                out = out + wilson._spin(identity + sign * self._gamma[mu], backward)
            return -0.5 * out

    op = Broken(shape, 0.2, 0.0, False)
    return qcd_module.qcd_potential(groups.SU(2), shape, 2.0, 0.0, "hot", op, fermions, 2,
                                    1e-10, 500, None, 1, ())


def test_the_guard_names_a_missing_dagger_in_the_fermion_term():
    """The default tier's stand-in for the test below (2D, one broken operator): the correct
    action passes both checks with its pseudofermion field; a missing dagger in the hopping
    term breaks gauge invariance and gamma_5-Hermiticity, each finding naming the term."""
    with jax.enable_x64(True):
        shape = (2, 4)
        q = {"U": random_links("SU(2)", shape)}
        pot = pm.qcd(group="SU(2)", shape=shape, beta=2.0, mass=0.2, measure=())
        assert symmetry_events(pot, q) == [] and property_events(pot, q) == []
        missing = broken_potential("missing_dagger", "exact", shape)
        assert [(e.kind, e.term) for e in symmetry_events(missing, q)] == [("symmetry_broken", "fermion_exact")]
        assert [(e.kind, e.term) for e in property_events(missing, q)] == [("property_broken", "fermion_exact")]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 4), (2, 2, 2, 2)])
def test_the_guard_checks_gauge_invariance_with_the_pseudofermions_and_gamma5_hermiticity(shape):
    """The correct action passes both checks (the transform rotates the pseudofermion field;
    left alone the field would break the invariance); a missing dagger breaks both, a wrong
    sign breaks gamma_5-Hermiticity: each finding names the term. (With a broken operator
    the pseudofermion solve of ``gamma_5 M gamma_5 M`` fails, a NaN energy that preflight
    reports on its own; the gauge check is shown on the determinant term.)"""
    with jax.enable_x64(True):
        pot = pm.qcd(group="SU(2)", shape=shape, beta=2.0, mass=0.2, n_noise=1)
        q = {"U": random_links("SU(2)", shape)}
        assert symmetry_events(pot, q) == [] and property_events(pot, q) == []
        unrotated = dataclasses.replace(pot, symmetries={"gauge": lambda key, q: {
            **q, "U": groups.gauge_transform(q["U"], groups.SU(2).random(key, shape, q["U"].dtype))}})
        [event] = symmetry_events(unrotated, q)
        assert (event.kind, event.term) == ("symmetry_broken", "fermion")
        assert [(e.kind, e.term) for e in property_events(broken_potential("missing_dagger", shape=shape), q)] == [
            ("property_broken", "fermion")]
        [event] = property_events(broken_potential("wrong_sign", shape=shape), q)
        assert (event.kind, event.term) == ("property_broken", "fermion") and "gamma5_hermiticity" in event.message
        missing = broken_potential("missing_dagger", "exact", shape)
        assert [(e.kind, e.term) for e in symmetry_events(missing, q)] == [("symmetry_broken", "fermion_exact")]
        assert [(e.kind, e.term) for e in property_events(missing, q)] == [("property_broken", "fermion_exact")]
        assert symmetry_events(broken_potential("wrong_sign", "exact", shape), q) == []  # covariant, not gamma_5-Hermitian


def test_factory_parameters_kappa_and_errors():
    pot = pm.qcd(group="SU(2)", shape=(2, 2, 2, 2), kappa=0.125, fermions="none")
    assert set(pot.terms) == {"gauge"} and set(pot.observables) == {"plaquette"} and pot.groups["U"].name == "SU(2)"
    assert qcd_module.bare_mass(None, 0.125, 4) == 0.0 and qcd_module.bare_mass(None, None, 4) == 0.1
    two_d = pm.qcd(group="SU(2)", shape=(4, 4), beta=2.0, fermions="none")
    assert two_d.exact["plaquette"] == pytest.approx(pm.exact_gauge.plaquette_2d("SU(2)", 2.0, 16))
    pot = pm.qcd(group="SU(3)", shape=(4, 4, 4, 8), hasenbusch_mass=0.5)
    assert set(pot.terms) == {"gauge", "fermion_heavy", "fermion_ratio"} and set(pot.auxiliary) == {"phi_heavy", "phi_ratio"}
    assert {"condensate", "pion", "pion_axial", "cg_iterations"} <= set(pot.observables) and "pcac_mass" in pot.derived
    assert "qcd" in pm.REGISTRY
    for kwargs, match in [(dict(shape=(4, 4, 4)), "2 or 4 axes"), (dict(fermions="staggered"), "fermions must be"),
                          (dict(n_flavors=1), "two degenerate flavours"), (dict(mass=0.1, kappa=0.1), "not both"),
                          (dict(hasenbusch_mass=0.05), "hasenbusch_mass"), (dict(shape=(3, 4), even_odd=True), "even"),
                          (dict(cg_tol=0), "cg_tol"), (dict(beta=-1.0), "beta")]:
        with pytest.raises(ValueError, match=match):
            pm.qcd(**kwargs)


# -- sampling (slow tier) -------------------------------------------------------------------------
@pytest.fixture
def x64_off_after():
    """``precision="float64"`` switches x64 on for the whole process: off again after."""
    yield
    jax.config.update("jax_enable_x64", False)


def sample(pot, seed, chains=4, warmup=150, draws=400, **kwargs):
    kwargs = {"trajectory_length": 1.0, **kwargs} if "num_steps" not in kwargs else kwargs
    return hmc.sample(pot, seed=seed, num_chains=chains, num_warmup=warmup, num_samples=draws, progress=False,
                      precision="float64", **kwargs)


def combined_z(a, b, name):
    ra, rb = a.summary().observables[name], b.summary().observables[name]
    return (ra.mean - rb.mean) / np.hypot(ra.mcse, rb.mcse)


# two of the validation's tiny lattices (scripts/qcd_validate.py runs every case of VALIDATION.md)
PSEUDO_VS_EXACT = [("SU(2)", (2, 2, 2, 2), 1.5), ("SU(2)", (4, 4), 1.5)]


@pytest.mark.slow
@pytest.mark.parametrize("group,shape,beta", PSEUDO_VS_EXACT)
def test_pseudofermions_agree_with_the_exact_determinant(group, shape, beta, x64_off_after):
    """Two flavours at m = 0.1 with pseudofermions (even-odd) and with ``-2 log|det D|``: the
    plaquette and the condensate agree within their combined MCSE; both differ from the
    quenched plaquette by more than their errors (the fermions matter at these couplings)."""
    common = dict(group=group, shape=shape, beta=beta, mass=0.1, measure=("condensate",), n_noise=2)
    pseudo = sample(pm.qcd(fermions="pseudofermion", **common), seed=1)
    exact = sample(pm.qcd(fermions="exact", **common), seed=2)
    for result in (pseudo, exact):
        assert result.guard_events == []
        assert max(float(np.max(r.r_hat)) for r in result.summary().observables.values()) < 1.05
    for name in ("plaquette", "condensate"):
        assert abs(combined_z(pseudo, exact, name)) < 4.5, name
    quenched = sample(pm.qcd(fermions="none", group=group, shape=shape, beta=beta), seed=3)
    assert abs(combined_z(exact, quenched, "plaquette")) > 3.0


@pytest.mark.slow
def test_heavy_quarks_reproduce_the_quenched_exact_values(x64_off_after):
    """At a large mass the fermion determinant is a constant up to ``O(kappa^4)``: the 2D
    torus plaquette (exact) and the 4D strong-coupling plaquette of SU(2) at beta = 0.5."""
    from scipy.special import iv

    two_d = pm.qcd(group="SU(2)", shape=(4, 4), beta=2.0, mass=20.0, measure=())
    exact = pm.qcd(group="SU(2)", shape=(4, 4), beta=2.0, fermions="none").exact["plaquette"]
    row = sample(two_d, seed=4, chains=8, warmup=200, draws=800).summary().observables["plaquette"]
    assert abs(row.mean - exact) / row.mcse < 4.5, (row.mean, exact, row.mcse)
    four_d = pm.qcd(group="SU(2)", shape=(4, 4, 4, 4), beta=0.5, mass=20.0, measure=())
    row = sample(four_d, seed=5, chains=4, warmup=150, draws=300).summary().observables["plaquette"]
    strong = iv(2, 0.5) / iv(1, 0.5)  # + O(u^5), 3e-5 here
    assert abs(row.mean - strong) / row.mcse < 4.5, (row.mean, strong, row.mcse)


@pytest.mark.slow
def test_u1_in_two_dimensions_samples_as_the_schwinger_model(x64_off_after):
    """``qcd("U(1)", (6, 6))`` against ``schwinger(L=6)``: plaquette and condensate."""
    ours = sample(pm.qcd(group="U(1)", shape=(6, 6), beta=2.0, mass=0.1, measure=("condensate",)), seed=6,
                  chains=8, draws=500)
    theirs = sample(pm.schwinger(L=6, beta=2.0, mass=0.1), seed=7, chains=8, draws=500)
    for name in ("plaquette", "condensate"):
        assert abs(combined_z(ours, theirs, name)) < 4.5, name


@pytest.mark.slow
def test_a_capped_solve_is_named_by_the_guard_for_each_fermion_term(x64_off_after):
    """A CG cap too low to converge: preflight refuses to start naming ``fermion``; with
    Hasenbusch's split, attribution names both terms with their iterations."""
    from hmc.initial import GuardRefused

    pot = pm.qcd(group="SU(2)", shape=(2, 2, 2, 2), beta=2.0, mass=0.1, cg_maxiter=3, measure=())
    with pytest.raises(GuardRefused, match="solver_not_converged in term 'fermion'"):
        sample(pot, seed=0, chains=2, warmup=0, draws=2, step_size=0.1, num_steps=2)
    with jax.enable_x64(True):
        split = pm.qcd(group="SU(2)", shape=(2, 2, 2, 2), beta=2.0, mass=0.1, hasenbusch_mass=1.0, cg_maxiter=3)
        events = hmc.guard.attribute(split, {"U": random_links("SU(2)", (2, 2, 2, 2))}, phase="sampling")
        named = {e.term: e for e in events if e.kind == "solver_not_converged"}
        assert set(named) == {"fermion_heavy", "fermion_ratio"} and named["fermion_heavy"].details["iterations"] == 3
