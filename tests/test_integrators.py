import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmc import integrators, kernel
from physics_models import gaussian


def anharmonic(q):
    x = q["x"]
    return jnp.sum(0.5 * x**2 + 0.25 * x**4) + 0.3 * x[0] * x[1]


def run(name, q, p, step_size, n, potential=anharmonic, minv=None):
    metric = integrators.euclidean_metric(minv, q)
    state = integrators.IntegratorState(q, p, jax.grad(potential)(q))
    end, flags = integrators.integrate(name, jax.grad(potential), metric.velocity, state, step_size, n)
    h0 = potential(q) + metric.kinetic_energy(p)
    h1 = potential(end.position) + metric.kinetic_energy(end.momentum)
    return end, flags, h1 - h0


@pytest.mark.parametrize("name", sorted(integrators.COEFFICIENTS))
def test_energy_error_order(name):
    """Fitted log-log slope of |dH| at fixed time T against the step size."""
    with jax.enable_x64(True):
        q = {"x": jnp.array([1.0, -0.5, 0.3])}
        p = {"x": jnp.array([0.5, 0.2, -0.7])}
        total_time = 1.0
        ns = np.array([16, 32, 64, 128])
        errors = []
        for n in ns:
            _, _, dh = jax.jit(run, static_argnums=(0, 4))(name, q, p, total_time / n, int(n))
            errors.append(abs(float(dh)))
        slope = np.polyfit(np.log(total_time / ns), np.log(errors), 1)[0]
    expected = integrators.ORDER[name]
    assert abs(slope - expected) < 0.25, (name, slope, errors)


def test_minimum_norm_beats_leapfrog_per_gradient():
    """2MN at twice the step (same gradient count) has a smaller energy error than leapfrog."""
    with jax.enable_x64(True):
        q = {"x": jnp.array([1.0, -0.5, 0.3])}
        p = {"x": jnp.array([0.5, 0.2, -0.7])}
        _, _, dh_lf = run("leapfrog", q, p, 1.0 / 64, 64)
        _, _, dh_mn = run("minimum_norm", q, p, 1.0 / 32, 32)
    assert abs(float(dh_mn)) < abs(float(dh_lf))


@pytest.mark.parametrize("name", sorted(integrators.COEFFICIENTS))
@pytest.mark.parametrize("mass", ["identity", "diagonal", "dense"])
def test_time_reversibility(name, mass):
    with jax.enable_x64(True):
        q = {"x": jnp.array([1.0, -0.5, 0.3])}
        p = {"x": jnp.array([0.5, 0.2, -0.7])}
        minv = {
            "identity": None,
            "diagonal": jnp.array([0.5, 2.0, 1.5]),
            "dense": jnp.array([[1.0, 0.3, 0.0], [0.3, 2.0, -0.2], [0.0, -0.2, 0.7]]),
        }[mass]
        end, _, _ = run(name, q, p, 0.1, 25, minv=minv)
        flipped = jax.tree_util.tree_map(lambda x: -x, end.momentum)
        back, _, _ = run(name, end.position, flipped, 0.1, 25, minv=minv)
        np.testing.assert_allclose(back.position["x"], q["x"], atol=1e-11)
        np.testing.assert_allclose(-back.momentum["x"], p["x"], atol=1e-11)
        # and the trajectory really moved
        assert float(jnp.max(jnp.abs(end.position["x"] - q["x"]))) > 0.1


@pytest.mark.parametrize("name", sorted(integrators.COEFFICIENTS))
def test_unit_jacobian(name):
    with jax.enable_x64(True):

        def flow(z):
            q, p = {"x": z[:3]}, {"x": z[3:]}
            end, _, _ = run(name, q, p, 0.15, 7)
            return jnp.concatenate([end.position["x"], end.momentum["x"]])

        z0 = jnp.array([1.0, -0.5, 0.3, 0.5, 0.2, -0.7])
        det = jnp.linalg.det(jax.jacfwd(flow)(z0))
    assert abs(float(det) - 1.0) < 1e-10


def test_harmonic_endpoint_leapfrog():
    """Leapfrog on U = x^2/2 is a rotation by theta with cos(theta) = 1 - h^2/2 (exact map)."""
    with jax.enable_x64(True):
        h, n = 0.3, 10
        end, _, _ = run("leapfrog", {"x": jnp.array([1.0])}, {"x": jnp.array([0.0])}, h, n, lambda q: 0.5 * jnp.sum(q["x"] ** 2))
        theta = np.arccos(1 - h**2 / 2)
        np.testing.assert_allclose(float(end.position["x"][0]), np.cos(n * theta), atol=1e-12)


@pytest.mark.parametrize("mass", ["diagonal", "dense"])
def test_momentum_covariance_is_the_mass_matrix(mass):
    minv = jnp.array([0.25, 4.0]) if mass == "diagonal" else jnp.array([[1.0, 0.8], [0.8, 2.0]])
    like = {"x": jnp.zeros(2)}
    metric = integrators.euclidean_metric(minv, like)
    keys = jax.random.split(jax.random.key(0), 200_000)
    p = jax.vmap(lambda k: metric.sample_momentum(k, like)["x"])(keys)
    mass_matrix = np.linalg.inv(np.diag(minv) if minv.ndim == 1 else np.asarray(minv))
    cov = np.cov(np.asarray(p).T)
    # standard error of a covariance entry ~ sqrt((s_ii s_jj + s_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(mass_matrix), np.diag(mass_matrix)) + mass_matrix**2) / p.shape[0])
    assert np.all(np.abs(cov - mass_matrix) < 5 * se)
    # kinetic energy p^T M^{-1} p / 2 has mean d/2
    ke = jax.vmap(lambda v: metric.kinetic_energy({"x": v}))(p)
    assert abs(float(ke.mean()) - 1.0) < 5 * float(ke.std()) / np.sqrt(p.shape[0])


def test_exp_minus_delta_h_has_mean_one():
    """Creutz's identity <exp(-dH)> = 1 from exact stationary draws (iid, so the MCSE is sd/sqrt(n))."""
    pot = gaussian(dim=20, condition_number=10.0, correlation=0.3)
    k = kernel.build_kernel(pot.energy, "leapfrog", num_steps=8)
    n = 20_000
    keys = jax.random.split(jax.random.key(1), 2 * n)
    q = jax.vmap(pot.init)(keys[:n])  # init draws exactly from the target
    states = jax.vmap(lambda x: kernel.init(x, pot.energy))(q)
    _, info = jax.jit(jax.vmap(k, in_axes=(0, 0, None)))(keys[n:], states, 0.35)
    w = np.exp(-np.asarray(info.delta_energy, np.float64))
    acceptance = float(np.mean(info.acceptance_rate))
    assert 0.3 < acceptance < 0.95, acceptance  # a regime where dH is far from zero
    z = (w.mean() - 1.0) / (w.std(ddof=1) / np.sqrt(n))
    assert abs(z) < 4.0, (w.mean(), z)


def test_guard_flag_records_first_failure():
    """A where-trap beyond x = 2.5: the unselected sqrt has a NaN gradient there."""

    def trap(q):
        x = q["x"]
        return jnp.sum(0.5 * x**2 + jnp.where(x < 2.5, 0.1 * jnp.sqrt(2.5 - x), 0.0))

    q = {"x": jnp.array([-1.0, -2.0])}
    end, flags, _ = run("leapfrog", q, {"x": jnp.array([5.0, 0.0])}, 0.1, 20, potential=trap)
    assert not bool(flags.ok)
    step = int(flags.first_step)
    assert 0 <= step < 20
    bad_q = np.asarray(flags.position["x"])
    assert bad_q[0] >= 2.5 and np.isfinite(bad_q).all()
    # every earlier step stayed in the clean region
    before, before_flags, _ = run("leapfrog", q, {"x": jnp.array([5.0, 0.0])}, 0.1, step, potential=trap)
    assert bool(before_flags.ok) and float(before.position["x"][0]) < 2.5
    _, clean_flags, _ = run("leapfrog", q, {"x": jnp.array([0.1, 0.0])}, 0.1, 20, potential=trap)
    assert bool(clean_flags.ok) and int(clean_flags.first_step) == -1


def _unmerged_reference(name, q, p, step_size, n):
    """Textbook splitting: every step applies all of its kicks and drifts in turn."""
    coeffs = integrators.coefficients(name)
    grad = jax.grad(anharmonic)

    def force_at(q, i):  # a force-gradient kick's force acts at q - xi h^2 dU/dq (unit mass)
        xi = integrators.shift(name, i)
        return grad(jax.tree_util.tree_map(lambda a, g: a - xi * step_size ** 2 * g, q, grad(q)) if xi else q)

    for _ in range(n):
        for i, c in enumerate(coeffs):
            if i % 2 == 0:
                p = jax.tree_util.tree_map(lambda a, g: a - c * step_size * g, p, force_at(q, i))
            else:
                q = jax.tree_util.tree_map(lambda a, b: a + c * step_size * b, q, p)
    return q, p


@pytest.mark.parametrize("name", sorted(integrators.COEFFICIENTS))
@pytest.mark.parametrize("n", [1, 2, 7])
def test_merged_kicks_match_the_textbook_scheme(name, n):
    """Kicks merged across steps and the peeled last step change rounding only."""
    with jax.enable_x64(True):
        q = {"x": jnp.array([1.0, -0.5, 0.3])}
        p = {"x": jnp.array([0.5, 0.2, -0.7])}
        q_ref, p_ref = _unmerged_reference(name, q, p, 0.1, n)
        state = integrators.IntegratorState(q, p, jax.grad(anharmonic)(q))
        end, _, value = integrators.integrate_to_energy(
            name, anharmonic, lambda m: m, state, 0.1, jnp.asarray(n), guard=True
        )
        np.testing.assert_allclose(end.position["x"], q_ref["x"], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(end.momentum["x"], p_ref["x"], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(end.potential_energy_grad["x"], jax.grad(anharmonic)(q_ref)["x"], rtol=1e-13)
        np.testing.assert_allclose(value, anharmonic(q_ref), rtol=1e-13)


def test_the_force_gradient_shift_moves_along_the_preconditioned_force():
    """The shifted point is ``q - xi h^2 M^{-1} dU/dq``: with a diagonal mass matrix the
    energy error stays fourth order (a shift without ``M^{-1}`` drops it to second)."""
    minv = jnp.array([0.3, 2.5, 1.0])
    with jax.enable_x64(True):
        q = {"x": jnp.array([1.0, -0.5, 0.3])}
        p = {"x": jnp.array([0.5, 0.2, -0.7])}
        ns = np.array([16, 32, 64, 128])
        errors = [abs(float(run("force_gradient", q, p, 1.0 / n, int(n), minv=minv)[2])) for n in ns]
    slope = np.polyfit(np.log(1.0 / ns), np.log(errors), 1)[0]
    assert abs(slope - 4) < 0.25, (slope, errors)


def test_a_broken_force_at_the_shifted_point_trips_the_guard():
    """U = -x (plus a negligible sqrt(0.1 - x)) while x < 0.1, NaN beyond. From q = 0, p = 0 one force-gradient step of h = 1
    drifts to x = 1/12, where the force is fine; the middle kick's force is evaluated at
    x = 1/12 + h^2 / 24 = 1/8, beyond the edge: the guard records that gradient and where."""

    def edge(q):
        x = q["x"]
        return jnp.sum(-x + 1e-12 * jnp.sqrt(0.1 - x))

    with jax.enable_x64(True):
        q, p = {"x": jnp.zeros(1)}, {"x": jnp.zeros(1)}
        state = integrators.IntegratorState(q, p, jax.grad(edge)(q))
        _, flags = integrators.integrate("force_gradient", jax.grad(edge), lambda m: m, state, 1.0, 1)
        _, plain = integrators.integrate("minimum_norm", jax.grad(edge), lambda m: m, state, 0.3, 1)
    assert not bool(flags.ok) and int(flags.first_step) == 0
    np.testing.assert_allclose(flags.position["x"], [1.0 / 8.0])
    assert bool(plain.ok)
