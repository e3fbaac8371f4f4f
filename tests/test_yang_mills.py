"""physics_models.yang_mills and physics_models.exact_gauge: the exact 2D references against the
round-3 anchor table, the action and every observable on hand-built abelian configurations whose
loops are known in closed form, and gauge invariance in float64. No sampling here."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import iv

import physics_models
from physics_models import exact_gauge

# the package exports the factory under the module's name: reach the module itself
ym = importlib.import_module("physics_models.yang_mills")

# <P> of the 2D Wilson action: infinite volume, then L x L tori, L = 2, 3, 4, 8
# (anchors_round3_gauge.md, section 2.1; that table took its derivatives by finite differences)
TABLE = {
    ("SU(2)", 1.0): (0.240193723870, 0.243260534543, 0.240196180330, 0.240193723990, 0.240193723877),
    ("SU(2)", 2.0): (0.433127426722, 0.446144970431, 0.433328859042, 0.433128003000, 0.433127426702),
    ("SU(2)", 4.0): (0.658047267359, 0.678662075559, 0.660587508358, 0.658185074542, 0.658047267343),
    ("SU(2)", 8.0): (0.819249410356, 0.833754410090, 0.823504937447, 0.820306823401, 0.819249486206),
    ("SU(3)", 2.0): (0.128627785323, 0.128934288735, 0.128627796117, 0.128627785323, 0.128627785323),
    ("SU(3)", 4.0): (0.279619149413, 0.282935288759, 0.279624839550, 0.279619150173, 0.279619149413),
    ("SU(3)", 6.0): (0.422531739774, 0.432128251726, 0.422663491485, 0.422532056754, 0.422531739774),
    ("SU(3)", 10.0): (0.618175739042, 0.633961801633, 0.619635571396, 0.618226848714, 0.618175739042),
}
BETA = 5.5
C1 = tuple(ym.IMPROVEMENT.values())
CHARGES = {"U(1)": (1,), "SU(2)": (1, -1), "SU(3)": (1, -1, 0)}

# these tiny programs run once: XLA's backend optimisation would cost more than it saves (3x the
# compile time of the 4d program on the test machine)
QUICK = {"xla_backend_optimization_level": 0}


def measure(potential):
    """One compiled program: every observable, the energy and the action at every named c1."""
    def run(links):
        q = {"U": links}
        out = dict(potential.observe(q))
        out["actions"] = jnp.stack([ym.gauge_action(links, BETA, c1) for c1 in C1])
        out["energy"] = potential.energy(q)
        return out
    return jax.jit(run, compiler_options=QUICK)


FOUR_D = ym.yang_mills("SU(3)", (3, 3, 3, 3), beta=BETA, loops=(1, 2))
TWO_D = ym.yang_mills("U(1)", (3, 3), beta=BETA)  # loops (3, 3) clipped to (2, 2)
MEASURE = {"4d": measure(FOUR_D), "2d": measure(TWO_D)}
SHAPES = {"4d": (3, 3, 3, 3), "2d": (3, 3)}
EXTENTS = {"4d": (1, 2), "2d": (2, 2)}
FLUXES = {
    "4d": {(0, 1): 1, (0, 2): 2, (0, 3): -1, (1, 2): 1, (2, 3): 2},
    "2d": {(0, 1): 1},
}


# -- exact references -----------------------------------------------------------------------
def test_exact_plaquette_reproduces_the_anchor_table_and_closed_forms():
    for (group, beta), values in TABLE.items():
        got = [exact_gauge.plaquette_2d(group, beta)] + [exact_gauge.plaquette_2d(group, beta, L * L)
                                                          for L in (2, 3, 4, 8)]
        np.testing.assert_allclose(got, values, atol=1e-9, rtol=0, err_msg=f"{group} beta={beta}")
    for beta in (0.5, 2.0, 8.0):
        assert exact_gauge.plaquette_2d("SU(2)", beta) == pytest.approx(iv(2, beta) / iv(1, beta), abs=1e-14)
        assert exact_gauge.plaquette_2d("U(1)", beta) == pytest.approx(iv(1, beta) / iv(0, beta), abs=1e-14)
    # strong coupling, SU(3): beta/18 + beta^2/216 + O(beta^3)
    assert exact_gauge.plaquette_2d("SU(3)", 0.01) == pytest.approx(0.01 / 18 + 1e-4 / 216, abs=1e-7)
    # the tori are the large-volume limit at L = 100 (V = 10^4)
    assert exact_gauge.plaquette_2d("SU(3)", 6.0, 10**4) == pytest.approx(TABLE["SU(3)", 6.0][0], abs=1e-9)


def weyl_plaquette(n, beta, points=32):
    """``<(1/N) Re tr U>`` under ``exp((beta/N) Re tr U)`` by the Weyl integral over the eigenphases
    of SU(N) (a periodic trapezoid rule: spectrally accurate)."""
    grid = np.meshgrid(*[2 * np.pi * np.arange(points) / points] * (n - 1), indexing="ij")
    phases = [*grid, -sum(grid)]
    vandermonde = np.ones_like(grid[0])
    for i in range(n):
        for j in range(i + 1, n):
            vandermonde = vandermonde * np.abs(np.exp(1j * phases[i]) - np.exp(1j * phases[j])) ** 2
    x = sum(np.cos(p) for p in phases) / n
    weight = vandermonde * np.exp(beta * x)
    return float(np.sum(weight * x) / np.sum(weight))


def test_exact_plaquette_matches_the_weyl_integral_for_su3_and_su4():
    for n, beta in ((3, 6.0), (3, 10.0), (4, 3.0), (4, 8.0)):
        assert exact_gauge.plaquette_2d(f"SU({n})", beta) == pytest.approx(weyl_plaquette(n, beta), abs=1e-13)


@pytest.mark.parametrize("group", ["U(1)", "SU(2)", "SU(3)", "SU(4)"])
def test_exact_wilson_loops_unit_area_is_the_plaquette_and_large_volume_is_an_area_law(group):
    for volume in (2, 4, 6, 9):
        assert exact_gauge.wilson_loop_2d(group, 2.0, 1, volume) == pytest.approx(
            exact_gauge.plaquette_2d(group, 2.0, volume), abs=1e-13)
    u = exact_gauge.plaquette_2d(group, 3.0)
    for area in (2, 4, 6):
        assert exact_gauge.wilson_loop_2d(group, 3.0, area, 10**4) == pytest.approx(u**area, abs=1e-12)
        assert exact_gauge.wilson_loop_2d(group, 3.0, area) == pytest.approx(u**area, abs=1e-15)
    # a finite torus differs from the area law (what makes it a test of the torus formula)
    assert abs(exact_gauge.wilson_loop_2d(group, 3.0, 2, 4) - u**2) > 1e-4


def test_exact_references_refuse_bad_arguments():
    with pytest.raises(ValueError, match="group"):
        exact_gauge.plaquette_2d("SO(3)", 1.0)
    with pytest.raises(ValueError, match="beta"):
        exact_gauge.plaquette_2d("SU(2)", 0.0)
    with pytest.raises(ValueError, match="area"):
        exact_gauge.wilson_loop_2d("SU(2)", 1.0, 4, 4)
    assert exact_gauge.add_fundamental_box((2, 1)) == [(3, 1), (2, 2), (1, 0)]  # 8 x 3 = 15 + 6bar + 3
    assert [exact_gauge.weyl_dimension(d) for d in ((2, 1), (3, 1), (2, 2), (1, 0))] == [8, 15, 6, 3]


def test_u1_is_the_theory_of_u1_gauge():
    for L, beta in ((4, 2.0), (8, 2.0), (3, 1.0)):
        assert ym.yang_mills("U(1)", (L, L), beta=beta).exact["plaquette"] == pytest.approx(
            physics_models.u1_gauge(L=L, beta=beta).exact["plaquette"], abs=1e-13)
    reference = physics_models.u1_gauge(L=3, beta=BETA)
    measure_u1 = jax.jit(lambda q: (reference.energy(q), reference.observables["plaquette"](q)),
                         compiler_options=QUICK)
    with jax.enable_x64(True):
        theta = np.random.default_rng(0).uniform(-math.pi, math.pi, (2, 3, 3))
        got = MEASURE["2d"](jnp.asarray(np.exp(1j * theta)[..., None, None]))
        energy, plaquette = measure_u1({"theta": jnp.asarray(theta)})
        assert float(got["energy"]) == pytest.approx(float(energy), abs=1e-12) and float(energy) > 1.0
        assert float(got["plaquette"]) == pytest.approx(float(plaquette), abs=1e-14)


# -- hand-built configurations --------------------------------------------------------------
def flux_angles(shape, fluxes):
    """Link angles ``A_mu(x)`` whose plaquette angle is ``2 pi m / (L_mu L_nu)`` everywhere in each
    plane ``(mu, nu): m`` (the constant-flux bundle: a linear gauge field plus a twist at the edge)."""
    x = np.indices(shape)
    angles = np.zeros((len(shape), *shape))
    for (mu, nu), m in fluxes.items():
        angles[nu] += 2 * np.pi * m * x[mu] / (shape[mu] * shape[nu])
        angles[mu] -= np.where(x[mu] == shape[mu] - 1, 2 * np.pi * m * x[nu] / shape[nu], 0.0)
    return angles


def abelian_links(angles, charges):
    """``U_mu(x) = diag(exp(i q_k A_mu(x)))``."""
    phases = np.exp(1j * angles[..., None] * np.asarray(charges, np.float64))
    return jnp.asarray(phases[..., :, None] * np.eye(len(charges)))


def expected_on_flux(shape, fluxes, charges, extent):
    """Every observable of the constant-flux configuration in closed form."""
    d, q = len(shape), np.asarray(charges, np.float64)
    theta = {(mu, nu): 2 * np.pi * fluxes.get((mu, nu), 0) / (shape[mu] * shape[nu])
             for mu, nu in ym.planes(d)}
    theta.update({(nu, mu): -t for (mu, nu), t in list(theta.items())})
    pairs = [(mu, nu) for mu in range(d) for nu in range(d) if mu != nu]
    loop = lambda area: np.mean([np.mean(np.cos(q * area * theta[p])) for p in pairs])  # noqa: E731
    phase = np.sum(flux_angles(shape, fluxes)[d - 1], axis=-1)[..., None] * q
    polyakov = np.mean(np.exp(1j * phase), axis=-1)
    out = {"plaquette": loop(1), "rectangle": loop(2), "polyakov_loop": np.mean(polyakov.real),
           "polyakov_loop_abs": abs(np.mean(polyakov)),
           "wilson_loops": np.array([[loop(r * t) for t in range(1, extent[1] + 1)]
                                     for r in range(1, extent[0] + 1)])}
    if d == 4:
        s = {p: np.sin(q * t) for p, t in theta.items()}
        density = np.sum(s[0, 1] * s[2, 3] - s[0, 2] * s[1, 3] + s[0, 3] * s[1, 2])
        out["topological_charge"] = math.prod(shape) * density / (4 * np.pi**2)
    return out


def _action_expected(shape, plaquette, rectangle):
    d, volume = len(shape), math.prod(shape)
    planes, rectangles = volume * d * (d - 1) // 2, volume * d * (d - 1)
    return np.array([BETA * ((1 - 8 * c1) * planes * (1 - plaquette) + c1 * rectangles * (1 - rectangle))
                     for c1 in C1])


@pytest.mark.parametrize("case", [pytest.param("4d", marks=pytest.mark.slow), "2d"])
def test_observables_and_action_on_a_constant_abelian_flux(case):
    potential = {"4d": FOUR_D, "2d": TWO_D}[case]
    shape, extent, group = SHAPES[case], EXTENTS[case], potential.groups["U"].name
    with jax.enable_x64(True):
        links = abelian_links(flux_angles(shape, FLUXES[case]), CHARGES[group])
        got = MEASURE[case](links)
        expected = expected_on_flux(shape, FLUXES[case], CHARGES[group], extent)
        for name, value in expected.items():
            np.testing.assert_allclose(np.asarray(got[name]), value, atol=1e-12, rtol=0, err_msg=name)
        assert got["wilson_loops"].shape == extent
        actions = _action_expected(shape, expected["plaquette"], expected["rectangle"])
        np.testing.assert_allclose(np.asarray(got["actions"]), actions, rtol=1e-13)
        assert float(got["energy"]) == pytest.approx(actions[0], rel=1e-13)  # the term is Wilson's
    if case == "4d":
        assert abs(expected["topological_charge"]) > 0.1 and expected["polyakov_loop"] != 1.0


@pytest.mark.parametrize("case", [pytest.param("4d", marks=pytest.mark.slow), "2d"])
def test_cold_start_is_the_classical_vacuum(case):
    group = {"4d": FOUR_D, "2d": TWO_D}[case].groups["U"]
    potential = ym.yang_mills(group, SHAPES[case], beta=BETA, loops=EXTENTS[case], start="cold")
    links = potential.init(jax.random.key(0))["U"]
    assert links.dtype == jnp.complex64 and links.shape[0] == len(links.shape) - 3
    with jax.enable_x64(True):
        got = MEASURE[case](links.astype(jnp.complex128))
        for name in ("plaquette", "rectangle", "polyakov_loop", "polyakov_loop_abs", "wilson_loops"):
            np.testing.assert_allclose(np.asarray(got[name]), 1.0, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(np.asarray(got["actions"]), 0.0, atol=1e-11)  # x/3 rounds
        if case == "4d":
            assert float(got["topological_charge"]) == 0.0


def haar_unitary(rng, shape, n):
    """Haar-random U(n) matrices ``(*shape, n, n)`` on the host (QR with the phases of R's diagonal)."""
    z = rng.normal(size=(*shape, n, n)) + 1j * rng.normal(size=(*shape, n, n))
    q, r = np.linalg.qr(z)
    diagonal = np.diagonal(r, axis1=-2, axis2=-1)
    return q * (diagonal / np.abs(diagonal))[..., None, :]


def host_gauge_transform(links, g):
    """``U'_mu(x) = g(x) U_mu(x) g(x + mu)^dag`` in numpy (independent of :mod:`hmc.groups`)."""
    return np.stack([g @ links[mu] @ np.conj(np.swapaxes(np.roll(g, -1, axis=mu), -1, -2))
                     for mu in range(len(links))])


@pytest.mark.parametrize("case", [pytest.param("4d", marks=pytest.mark.slow), "2d"])
def test_action_and_every_observable_are_gauge_invariant(case):
    """4d: Haar U(3) links and transformation built on the host (unitarity of g is all that gauge
    invariance needs; no compilation); 2d: the model's own ``symmetries["gauge"]`` (hmc.groups)."""
    potential, shape = {"4d": FOUR_D, "2d": TWO_D}[case], SHAPES[case]
    n = potential.groups["U"].n
    rng = np.random.default_rng(7)
    links = haar_unitary(rng, (len(shape), *shape), n)
    with jax.enable_x64(True):
        if case == "4d":
            moved = jnp.asarray(host_gauge_transform(links, haar_unitary(rng, shape, n)))
        else:
            transform = jax.jit(potential.symmetries["gauge"], compiler_options=QUICK)
            moved = transform(jax.random.key(7), {"U": jnp.asarray(links)})["U"]
        links = jnp.asarray(links)
        assert moved.dtype == jnp.complex128 and float(jnp.max(jnp.abs(moved - links))) > 0.1
        before, after = MEASURE[case](links), MEASURE[case](moved)
        for name in before:
            np.testing.assert_allclose(np.asarray(after[name]), np.asarray(before[name]),
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        loops = np.asarray(before["wilson_loops"])
        assert loops[0, 0] == pytest.approx(float(before["plaquette"]), abs=1e-14)
        if case == "4d":  # W(1, 2) runs over the same loops as the rectangles
            assert loops[0, 1] == pytest.approx(float(before["rectangle"]), abs=1e-14)
            assert abs(float(before["topological_charge"])) > 1e-6
        else:
            np.testing.assert_allclose(loops, loops.T, atol=1e-14)


# -- the factory ------------------------------------------------------------------------------
def test_factory_contract_exact_values_and_registry():
    assert physics_models.get("yang_mills") is ym.yang_mills
    assert set(physics_models.parameters("yang_mills")) >= {"group", "shape", "beta", "action", "c1"}
    assert set(FOUR_D.terms) == {"gauge"} and FOUR_D.groups["U"].name == "SU(3)"
    assert set(FOUR_D.observables) == {"plaquette", "rectangle", "polyakov_loop", "polyakov_loop_abs",
                                       "wilson_loops", "topological_charge"}
    assert FOUR_D.exact == {"polyakov_loop": 0.0, "topological_charge": 0.0}
    assert TWO_D.exact["plaquette"] == pytest.approx(exact_gauge.plaquette_2d("U(1)", BETA, 9), abs=1e-15)
    expected = [[exact_gauge.wilson_loop_2d("U(1)", BETA, r * t, 9) for t in (1, 2)] for r in (1, 2)]
    np.testing.assert_allclose(TWO_D.exact["wilson_loops"], expected, atol=1e-15)
    assert "plaquette" not in ym.yang_mills("SU(2)", (4, 3), beta=BETA, action="iwasaki").exact
    su2 = ym.yang_mills("SU(2)", (4, 3), beta=BETA)
    assert su2.exact["plaquette"] == exact_gauge.plaquette_2d("SU(2)", BETA, 12)
    assert ym.rectangle_coefficient("symanzik") == -1 / 12
    assert ym.rectangle_coefficient("wilson", -0.2) == -0.2
    assert ym.rectangle_coefficient("iwasaki", -0.331) == -0.331


@pytest.mark.parametrize("params, key", [
    ({"action": "luscher"}, "symanzik"),
    ({"action": "iwasaki", "c1": -1 / 12}, "contradicts"),
    ({"shape": (4,)}, "shape"),
    ({"shape": (4, 1)}, "shape"),
    ({"beta": 0.0}, "beta"),
    ({"start": "warm"}, "start"),
    ({"loops": (0, 2)}, "loops"),
    ({"group": "SO(3)"}, "group"),
])
def test_factory_rejects_bad_parameters(params, key):
    with pytest.raises(ValueError, match=key):
        ym.yang_mills(**{"shape": (2, 2), **params})
