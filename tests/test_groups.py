"""hmc.groups: generators, exact exponentials against scipy, projection, the momentum and
Haar distributions (z-bounded by their Monte Carlo standard errors), gauge covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from hmc import groups

GROUPS = [groups.U1(), groups.SU(2), groups.SU(3), groups.SU(4)]
IDS = [g.name for g in GROUPS]
Z_BOUND = 5.0


def algebra_batch(g, seed, scales, per_scale=16):
    """Complex128 algebra elements with ``||X||_F = scale`` exactly, then the zero matrix."""
    with jax.enable_x64(True):
        t = np.asarray(g.generators(np.complex128))
    p = np.random.default_rng(seed).normal(size=(len(scales), per_scale, g.dim))
    x = np.einsum("spa,aij->spij", p, t)
    x *= np.asarray(scales)[:, None, None, None] / np.linalg.norm(x, axis=(-2, -1), keepdims=True)
    return np.concatenate([x.reshape(-1, g.n, g.n), np.zeros((1, g.n, g.n), complex)])


def expm(x):
    return scipy.linalg.expm(np.asarray(x, np.complex128))


def haar_su(n, count, seed):
    """Haar SU(n) in numpy, independent of the module: QR of a complex Gaussian with R's
    diagonal phases moved into Q (Mezzadri 2007), then det fixed."""
    z = np.random.default_rng(seed).normal(size=(count, n, n, 2)) @ np.array([1, 1j])
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=-2, axis2=-1)
    u = q * (d / np.abs(d))[:, None, :]
    return u * np.exp(-1j * np.angle(np.linalg.det(u)) / n)[:, None, None]


def np_defect(u):
    """``(max |U^dag U - 1|, max |det U - 1|)`` in numpy (0 for the det of U(1))."""
    u = np.asarray(u, np.complex128)
    unitarity = np.abs(np.conj(np.swapaxes(u, -1, -2)) @ u - np.eye(u.shape[-1])).max()
    return unitarity, (np.abs(np.linalg.det(u) - 1).max() if u.shape[-1] > 1 else 0.0)


def z_score(samples, expected):
    samples = np.asarray(samples, np.float64)
    return abs(samples.mean() - expected) / (samples.std(ddof=1) / np.sqrt(len(samples)))


@pytest.mark.parametrize("g", GROUPS, ids=IDS)
def test_generators_coordinates_and_the_algebra_projection(g):
    with jax.enable_x64(True):
        t = np.asarray(g.generators())
        assert t.shape == (g.dim, g.n, g.n) and t.dtype == np.complex128
        np.testing.assert_allclose(np.einsum("aij,bji->ab", t, t), -0.5 * np.eye(g.dim), atol=1e-15)
        np.testing.assert_allclose(t, -np.conj(np.swapaxes(t, -1, -2)), atol=0)
        if g.n > 1:
            np.testing.assert_allclose(np.trace(t, axis1=-2, axis2=-1), 0, atol=1e-15)
        p = np.random.default_rng(1).normal(size=(5, g.dim))
        m = np.random.default_rng(2).normal(size=(5, g.n, g.n, 2)) @ np.array([1, 1j])

        @jax.jit
        def run(p, m):
            x, a = g.from_coordinates(p), g.algebra(m)
            return x, g.coordinates(x), g.kinetic(x), a, g.algebra(a), g.from_coordinates(g.coordinates(a))

        x, coords, kinetic, a, again, rebuilt = (np.asarray(v) for v in run(p, m))
    np.testing.assert_allclose(coords, p, atol=1e-14)
    np.testing.assert_allclose(kinetic, 0.5 * np.sum(p**2), rtol=1e-13)
    np.testing.assert_allclose(kinetic, -np.trace(x @ x, axis1=-2, axis2=-1).real.sum(), rtol=1e-13)
    np.testing.assert_allclose(a, -np.conj(np.swapaxes(a, -1, -2)), atol=1e-15)
    if g.n > 1:
        np.testing.assert_allclose(np.trace(a, axis1=-2, axis2=-1), 0, atol=1e-15)
    np.testing.assert_allclose(again, a, atol=1e-15)
    np.testing.assert_allclose(rebuilt, a, atol=1e-14)


def su3_algebra(eigenvalues, seed):
    """``X = iQ``, ``Q = V diag(eigenvalues) V^dag`` with a Haar-random ``V``, and ``c0 = det Q``."""
    v = haar_su(3, len(eigenvalues), seed)
    q = np.einsum("bij,bj,bkj->bik", v, np.asarray(eigenvalues, float), np.conj(v))
    return 1j * q, np.linalg.det(q).real  # c0 = tr Q^3 / 3 = det Q for traceless Q


S = np.sqrt(1e-4 / 3)  # c1 = 3 S^2 = 1e-4: where the SU(3) series hands over to the closed form
#: eigenvalues of Q: c0 < 0 and > 0, degenerate (w = 0) and nearly so, c0 = 0, the series switch
SU3_CASES = [(1.0, 0.3, -1.3), (-1.0, -0.3, 1.3), (2.5, 1.0, -3.5), (-2.5, -1.0, 3.5),
             (0.7, 0.7, -1.4), (-0.7, -0.7, 1.4), (1.0, 1.0 + 1e-9, -2.0 - 1e-9), (1.0, 0.0, -1.0),
             (S, S, -2 * S), (S * (1 + 1e-12), S, -S * (2 + 1e-12)), (S * (1 - 1e-12), S, -S * (2 - 1e-12)),
             (3e-6, 1e-6, -4e-6)]


def exp_cases(g):
    """Norms 1e-9 .. 3 and zero; for SU(3) also :data:`SU3_CASES`."""
    x = algebra_batch(g, 3, [1e-9, 1e-3, 0.5, 2.5, 3.0], per_scale=8)
    return np.concatenate([x, su3_algebra(SU3_CASES, 4)[0]]) if g.n == 3 else x


def test_the_su3_cases_cover_both_signs_of_c0_and_degenerate_eigenvalues():
    _, c0 = su3_algebra(SU3_CASES, 4)
    assert list(np.sign(c0[:7])) == [-1, 1, -1, 1, -1, 1, -1]
    assert abs(c0[7]) < 1e-15


@pytest.mark.parametrize("g", GROUPS, ids=IDS)
def test_exp_matches_scipy_in_float64_and_float32_and_stays_in_the_group(g):
    x = exp_cases(g)

    def run(x):
        u = g.exp(x)
        return u, g.defect(u)

    exp = jax.jit(run)
    with jax.enable_x64(True):
        u, defect = exp(x)
        unitarity, det = (float(v) for v in defect)
    reference = expm(x)
    assert np.abs(np.asarray(u) - reference).max() < 1e-13
    assert unitarity < 1e-14 and det < 1e-14
    u32 = np.asarray(exp(x.astype(np.complex64))[0])
    assert u32.dtype == np.complex64
    assert np.abs(u32 - reference).max() < 2e-6  # with the input's rounding to float32


def gradient_cases(g):
    """Points ``X0`` and directions ``Y``: ``X0 = 0`` along every generator and along a
    random ``Y`` (the first ``dim + 1``), a generic point, and for SU(3) degenerate
    eigenvalues, ``c0 = 0`` and the series switch."""
    with jax.enable_x64(True):
        t = np.asarray(g.generators())
    y = algebra_batch(g, 6, [1.3], per_scale=3)[:-1]
    x0, directions = [np.zeros_like(t), np.zeros_like(y[:1]), y[1:2]], [t, y[:1], y[2:3]]
    if g.n == 3:
        x0.append(su3_algebra(SU3_CASES[4:9], 7)[0])
        directions.append(algebra_batch(g, 8, [0.7], per_scale=5)[:-1])
    return np.concatenate(x0), np.concatenate(directions), g.dim + 1


@pytest.mark.slow
@pytest.mark.parametrize("g", GROUPS, ids=IDS)
def test_exp_gradient_is_finite_and_exact(g):
    """Reverse-mode ``d/dt Re tr(A exp(X0 + t Y))`` at ``t = 0``: ``Re tr(A Y)`` where
    ``X0 = 0`` (so the gradient in the coordinates at ``X = 0``), a central difference
    elsewhere (for SU(3): where eigenvalues meet, ``arccos`` is singular at 1)."""
    x0, y, at_zero = gradient_cases(g)
    a = np.random.default_rng(5).normal(size=(g.n, g.n, 2)) @ np.array([1, 1j])
    h = 1e-5

    def f(t):
        return jnp.real(jnp.trace(a @ g.exp(x0 + t[:, None, None] * y), axis1=-2, axis2=-1))

    def run(t):
        return jax.grad(lambda t: jnp.sum(f(t)))(t), (f(t + h) - f(t - h)) / (2 * h)

    with jax.enable_x64(True):
        grad, central = (np.asarray(v) for v in jax.jit(run)(jnp.zeros(len(x0))))
    assert np.all(np.isfinite(grad))
    exact = np.real(np.trace(a @ y[:at_zero], axis1=-2, axis2=-1))
    np.testing.assert_allclose(grad[:at_zero], exact, atol=1e-13)
    np.testing.assert_allclose(grad, central, atol=1e-8)


@pytest.mark.parametrize("g", GROUPS, ids=IDS)
def test_project_restores_the_group_keeps_elements_and_removes_only_the_hermitian_part(g):
    rng = np.random.default_rng(10)
    u = haar_su(g.n, 64, 11) if g.n > 1 else np.exp(2j * np.pi * rng.uniform(size=(64, 1, 1)))
    gauss = rng.normal(size=(2, 64, g.n, g.n, 2)) @ np.array([1, 1j])
    hermitian = 0.5 * (gauss[0] + np.conj(np.swapaxes(gauss[0], -1, -2)))
    hermitian /= np.linalg.norm(hermitian, ord=2, axis=(-2, -1), keepdims=True)
    # U (1 + H / 2) is U times a positive Hermitian matrix: its nearest unitary is U
    inputs = np.stack([u, u @ (np.eye(g.n) + 0.5 * hermitian), u + 1e-3 * gauss[1], u + 1e-7 * gauss[1]])
    with jax.enable_x64(True):
        projected = np.asarray(jax.jit(g.project)(inputs))
    unitarity, det = np_defect(projected[2])
    np.testing.assert_allclose(projected[0], u, atol=1e-14)
    np.testing.assert_allclose(projected[1], u, atol=1e-13)
    assert unitarity < 1e-14 and det < 1e-14
    assert np.abs(projected[3] - u).max() < 1e-6


@pytest.mark.parametrize("g", GROUPS, ids=IDS)
def test_momentum_coordinates_are_unit_normal_and_the_kinetic_energy_is_dim_over_two(g):
    draws = 4000

    def run(key):
        p = g.random_algebra(key, (draws,))
        return p, g.algebra(p), g.kinetic(p), g.coordinates(p)

    p, again, total, coords = jax.jit(run)(jax.random.key(12))
    assert p.shape == (draws, g.n, g.n) and p.dtype == jnp.complex64
    np.testing.assert_allclose(again, p, atol=1e-6)
    kinetic = np.sum(np.abs(np.asarray(p, np.complex128)) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(float(total), kinetic.sum(), rtol=1e-5)
    assert z_score(kinetic, g.dim / 2) < Z_BOUND
    coords = np.asarray(coords, np.float64)
    for a in range(g.dim):
        assert z_score(coords[:, a], 0.0) < Z_BOUND
        assert z_score(coords[:, a] ** 2, 1.0) < Z_BOUND
    for a, b in zip(*np.triu_indices(g.dim, 1)):
        assert z_score(coords[:, a] * coords[:, b], 0.0) < Z_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("g", GROUPS[:3], ids=IDS[:3])
def test_random_elements_are_in_the_group_with_haar_moments(g):
    """Haar: ``E tr U = 0`` and ``E |tr U|^2 = 1`` for SU(N); ``E U = E U^2 = 0`` for U(1)."""

    def run(key):
        u = g.random(key, (4000,))
        return u, g.defect(u)

    u, defect = jax.jit(run)(jax.random.key(13))
    assert u.shape == (4000, g.n, g.n) and u.dtype == jnp.complex64
    np.testing.assert_allclose(defect, np_defect(u), atol=1e-7)
    assert max(defect) < 2e-6
    u = np.asarray(u, np.complex128)
    if g.n == 1:
        moments = [(u[:, 0, 0], 0.0), (u[:, 0, 0] ** 2, 0.0)]
    else:
        trace = np.trace(u, axis1=-2, axis2=-1)
        moments = [(trace.real, 0.0), (np.abs(trace) ** 2, 1.0)] + ([(trace.imag, 0.0)] if g.n > 2 else [])
    for moment, expected in moments:
        assert z_score(moment.real, expected) < Z_BOUND
        if np.iscomplexobj(moment):
            assert z_score(moment.imag, expected) < Z_BOUND


def test_identity_and_near_identity():
    one = groups.SU(3).identity((2, 3))
    assert one.shape == (2, 3, 3, 3) and one.dtype == jnp.complex64
    np.testing.assert_array_equal(one, np.broadcast_to(np.eye(3), (2, 3, 3, 3)))
    g = groups.SU(2)
    with jax.enable_x64(True):
        u = jax.jit(g.near_identity, static_argnums=(1, 2, 3))(jax.random.key(14), (8,), 0.1, jnp.complex128)
    unitarity, det = np_defect(u)
    assert u.dtype == jnp.complex128 and unitarity < 1e-14 and det < 1e-14
    assert 0 < np.abs(np.asarray(u) - np.eye(2)).max() < 1.0


def test_gauge_transform_follows_the_link_convention_and_keeps_plaquette_traces():
    g = groups.SU(3)

    def plaquette_trace(links):
        u0, u1 = links[0], links[1]
        up = lambda v, mu: np.roll(v, -1, axis=mu)  # noqa: E731
        dag = lambda v: np.conj(np.swapaxes(v, -1, -2))  # noqa: E731
        return np.trace(u0 @ up(u1, 0) @ dag(up(u0, 1)) @ dag(u1), axis1=-2, axis2=-1)

    def run(key):
        fields = g.random(key, (3, 3, 4), jnp.complex128)
        return fields[:2], fields[2], groups.gauge_transform(fields[:2], fields[2])

    with jax.enable_x64(True):
        links, gauge, moved = (np.asarray(v) for v in jax.jit(run)(jax.random.key(15)))
    # the link from x = (2, 3) in direction 0 ends at (0, 3) (periodic)
    expected = gauge[2, 3] @ links[0, 2, 3] @ np.conj(gauge[0, 3]).T
    np.testing.assert_allclose(moved[0, 2, 3], expected, atol=1e-15)
    np.testing.assert_allclose(plaquette_trace(moved), plaquette_trace(links), atol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        groups.gauge_transform(links, gauge[:2])


def test_get_parses_every_spelling_and_names_a_bad_spec():
    assert groups.get("U(1)") == groups.get("u1") == groups.get(" U ( 1 ) ") == groups.U1()
    for spec in ["SU(2)", "su2", "SU 2"]:
        assert isinstance(groups.get(spec), groups.SU2)
    for spec in ["SU(3)", "su3", "SU3", "su(3)"]:
        assert isinstance(groups.get(spec), groups.SU3)
    five = groups.get("SU (5)")
    assert five == groups.SU(5) == groups.SUN(5) and five.name == "SU(5)" and five.dim == 24
    assert groups.get(five) is five and hash(five) == hash(groups.SUN(5))
    assert groups.U1().name == "U(1)" and groups.SU(3).name == "SU(3)" and groups.U1().dim == 1
    for bad in ["SU(1)", "SO(3)", "banana", "SU(3", "U(2)", ""]:
        with pytest.raises(ValueError, match=r"unknown group .*accepted forms are 'U\(1\)' or 'SU\(N\)'"):
            groups.get(bad)
    with pytest.raises(ValueError, match="N >= 2"):
        groups.SU(1)


def test_dagger_is_the_conjugate_transpose_of_the_last_two_axes():
    m = np.arange(12).reshape(3, 2, 2) * (1 + 2j)
    np.testing.assert_array_equal(groups.dagger(m), np.conj(np.swapaxes(m, -1, -2)))
