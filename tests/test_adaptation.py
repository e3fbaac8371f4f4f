"""Warmup's building blocks on synthetic inputs: cheap, exact checks of the adaptation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmc import adaptation


def test_schedule_has_stan_windows():
    s = adaptation.build_schedule(500)
    assert s.num_warmup == 500
    # Stan's defaults: 75 fast iterations, slow windows 25, 50, 100, 200 (the last
    # stretched to the terminal 50), then 50 fast ones
    assert not s.in_slow_window[:75].any() and not s.in_slow_window[-50:].any()
    assert s.in_slow_window[75:450].all()
    np.testing.assert_array_equal(np.flatnonzero(s.slow_window_end), [99, 149, 249, 449])


def _run(acceptance_of, num_warmup=400, step=1.0, target=0.8, adapt_mass_matrix=False, samples=None):
    schedule = adaptation.build_schedule(num_warmup)
    state = adaptation.init(step, 2, "diagonal")

    def body(state, t):
        a = acceptance_of(state.step_size)
        x = jnp.zeros((1, 2)) if samples is None else samples[t]
        new = adaptation.update(state, t, a, x, schedule=schedule, target_accept=target,
                                adapt_mass_matrix=adapt_mass_matrix)
        return new, (state.step_size, a)

    return jax.lax.scan(body, state, jnp.arange(num_warmup))


def test_dual_averaging_reaches_the_target_on_a_smooth_acceptance_curve():
    # acceptance exp(-(eps / 2)^2): 0.8 at eps = 2 sqrt(-log 0.8) = 0.9447
    final, (steps, accepts) = _run(lambda eps: jnp.exp(-(eps / 2.0) ** 2))
    expected = 2.0 * np.sqrt(-np.log(0.8))
    assert abs(float(final.step_size) / expected - 1.0) < 0.05, float(final.step_size)
    assert abs(float(jnp.mean(accepts[-50:])) - 0.8) < 0.05


def test_dual_averaging_moves_down_from_a_step_too_large():
    final, _ = _run(lambda eps: jnp.where(eps < 0.5, 0.95, 0.0), step=10.0)
    assert float(final.step_size) < 0.5


def test_welford_mass_matrix_is_the_sample_variance_of_the_last_slow_window():
    rng = np.random.default_rng(0)
    samples = jnp.asarray(rng.normal(size=(400, 1, 2)) * np.array([3.0, 0.5]), jnp.float32)
    final, _ = _run(lambda eps: jnp.float32(0.8), samples=samples, adapt_mass_matrix=True)
    schedule = adaptation.build_schedule(400)
    ends = np.flatnonzero(schedule.slow_window_end)
    starts = np.concatenate([[np.flatnonzero(schedule.in_slow_window)[0]], ends[:-1] + 1])
    window = np.asarray(samples[starts[-1]:ends[-1] + 1, 0])
    var = window.var(axis=0, ddof=1)
    n = len(window)
    # Stan's regularisation towards 1e-3 with weight 5 / (n + 5)
    expected = n / (n + 5.0) * var + 1e-3 * 5.0 / (n + 5.0)
    np.testing.assert_allclose(np.asarray(final.inverse_mass_matrix), expected, rtol=1e-4)


def test_initial_step_heuristic_brackets_the_target():
    def acceptance(eps):
        return jnp.exp(-eps)  # 0.5 at eps = log 2 = 0.693

    up = float(adaptation.find_reasonable_step_size(acceptance, jnp.float32(0.01)))
    down = float(adaptation.find_reasonable_step_size(acceptance, jnp.float32(50.0)))
    # doubling from below stops at the last step still above 0.5, halving from above at
    # the first one above it: either way the step is within a factor 2 below log 2
    for eps in (up, down):
        assert float(acceptance(eps)) > 0.5 and float(acceptance(2 * eps)) < 0.5


def test_stability_limits_of_the_integrators():
    from hmc import integrators

    # eps * omega at which one step on a harmonic mode stops being stable
    assert abs(integrators.stability_limit("leapfrog") - 2.0) < 1e-9
    assert abs(integrators.stability_limit("minimum_norm") - 2.5531) < 1e-3
    assert abs(integrators.stability_limit("yoshida4") - 1.5734) < 1e-3
    # force-gradient: trace = -2 - (x^2 - 12)^3 / 432 with x = eps * omega, a triple root at sqrt(12)
    assert abs(integrators.stability_limit("force_gradient") - 12.0 ** 0.5) < 1e-4


def _quadratic(seed, n, k_range, m_range, index, k_value, m_value):
    """``U = sum k_i x_i^2 / 2`` with inverse mass ``m_i`` (``omega_i^2 = k_i m_i``), one
    coordinate set apart: ``(gradient, a position, m)``."""
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.uniform(*k_range, n), jnp.float32).at[index].set(k_value)
    minv = jnp.asarray(rng.uniform(*m_range, n), jnp.float32).at[index].set(m_value)
    position = {"x": jnp.asarray(rng.normal(size=n), jnp.float32)}
    return jax.grad(lambda q: 0.5 * jnp.sum(k * q["x"] ** 2)), position, minv


def test_max_frequency_of_a_preconditioned_quadratic():
    # the largest omega is 25 (i = 7)
    grad, position, minv = _quadratic(3, 50, (0.5, 5.0), (0.5, 2.0), 7, 50.0, 12.5)
    omega = adaptation.max_frequency(grad, position, minv, jax.random.key(0))
    assert abs(float(omega) - 25.0) < 0.25, float(omega)
    dense = adaptation.max_frequency(grad, position, jnp.diag(minv), jax.random.key(0))
    assert abs(float(dense) - 25.0) < 0.25, float(dense)
    # a gradient that is NaN everywhere gives no limit, not a NaN
    nan = adaptation.max_frequency(lambda q: {"x": q["x"] * jnp.nan}, position, minv, jax.random.key(0))
    assert float(nan) == 0.0 and float(adaptation.step_limit(nan, "leapfrog")) == np.inf


def _pooled(acceptance_of, num_warmup=400, step=1.0, target=0.8, limit=None, order=2):
    schedule = adaptation.build_schedule(num_warmup)
    state = adaptation.init(step, 2, "diagonal", pooled=True)
    if limit is not None:
        state = adaptation.with_limit(state, limit, pooled=True)
    gain = adaptation.pooled_gain(target, order)

    def body(state, t):
        a = acceptance_of(state.step_size, t)
        new = adaptation.update(state, t, a, jnp.zeros((1, 2)), schedule=schedule, target_accept=target,
                                adapt_mass_matrix=False, pooled_gain=gain)
        return new, (state.step_size, a)

    return jax.lax.scan(body, state, jnp.arange(num_warmup))


def test_pooled_controller_reaches_the_target_on_smooth_curves():
    expected = 2.0 * np.sqrt(-np.log(0.8))
    for step in (1e-3, 1.0, 30.0):
        final, (steps, accepts) = _pooled(lambda eps, t: jnp.exp(-(eps / 2.0) ** 2), step=step)
        assert abs(float(final.step_size) / expected - 1.0) < 0.01, (step, float(final.step_size))
    # steep (acceptance ~ exp(-eps^8)), the controller's model exponent four times too small
    final, _ = _pooled(lambda eps, t: jnp.exp(-0.223 * eps**8))
    assert abs(float(final.step_size) - 1.0) < 0.02, float(final.step_size)


def test_pooled_controller_is_unbiased_under_noise():
    # the mean over 4 chains of Bernoulli-like acceptances around exp(-(eps/2)^2): the
    # controller is linear in the statistic, so its average lands where E[a] = target
    def noisy(eps, t):
        u = jax.random.uniform(jax.random.fold_in(jax.random.key(5), t), (4,))
        return jnp.mean((u < jnp.exp(-(eps / 2.0) ** 2)).astype(jnp.float32))

    expected = 2.0 * np.sqrt(-np.log(0.8))
    final, _ = _pooled(noisy, num_warmup=1000)
    # the final window's average of ~440 noisy iterates; E[a] within 0.05 of the target
    assert abs(np.exp(-(float(final.step_size) / 2.0) ** 2) - 0.8) < 0.05, float(final.step_size)
    assert abs(float(final.step_size) / expected - 1.0) < 0.2


def test_pooled_controller_stops_at_the_step_cap_of_a_cliff():
    # acceptance 0.97 up to eps = 1, zero beyond: the target is out of reach, and the
    # step sits at the cap (0.9), not below it as dual averaging leaves it (0.71 here)
    final, (steps, accepts) = _pooled(lambda eps, t: jnp.where(eps < 1.0, 0.97, 0.0), limit=0.9)
    assert abs(float(final.step_size) - 0.9) < 1e-5
    assert float(jnp.min(accepts[-100:])) == np.float32(0.97)
    da, _ = _run(lambda eps: jnp.where(eps < 1.0, 0.97, 0.0))
    assert float(da.step_size) < 0.8


@pytest.mark.slow  # a 300-warmup run; the cap's parts are tested cheaply
def test_sampler_caps_the_step_at_the_oscillators_stability_limit():
    # the lattice oscillator's acceptance stays near 1 up to the 2MN limit: the note
    # names the cap, and the cap uses the true largest frequency of the adapted metric
    import hmc
    import physics_models

    pot = physics_models.harmonic_oscillator(n_sites=32, a=0.5)
    r = hmc.sample(pot, num_chains=8, num_warmup=300, num_samples=20, trajectory_length=1.5, jitter=0.2,
                   record=[], progress=False)
    assert r.step_note is not None and "out of reach" in r.step_note, r.step_note
    assert "estimated stability limit" in r.step_note, r.step_note
    flat = jnp.asarray(r.final_positions["x"][0])
    hess = jax.hessian(lambda x: pot.energy({"x": x}))(flat)
    root = np.sqrt(np.asarray(r.inverse_mass_matrix, np.float64))
    omega = np.sqrt(np.linalg.eigvalsh(root[:, None] * np.asarray(hess, np.float64) * root[None, :]).max())
    from hmc import integrators

    exact_cap = adaptation.STABILITY_FRACTION * integrators.stability_limit("minimum_norm") / omega
    assert abs(float(r.step_size) / exact_cap - 1.0) < 0.03, (float(r.step_size), exact_cap)
    assert r.stats["acceptance_rate"].mean() > 0.9


def test_halton_is_van_der_corput_base_two():
    values = np.asarray(adaptation.halton(jnp.arange(7)))
    np.testing.assert_allclose(values, [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875])
    many = np.asarray(adaptation.halton(jnp.arange(4095)))
    assert abs(many.mean() - 0.5) < 1e-3 and 0.0 < many.min() and many.max() < 1.0


def test_chees_signal_points_up_for_short_trajectories_and_down_for_long_ones():
    # exact dynamics of a unit Gaussian, x' = x cos t + p sin t: ChEES grows with t up to
    # about a quarter period and falls beyond it (the squared norm comes back)
    rng = np.random.default_rng(0)
    x, p = rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))

    def signal(t):
        proposal, velocity = x * np.cos(t) + p * np.sin(t), -x * np.sin(t) + p * np.cos(t)
        return float(adaptation.chees_signal(jnp.asarray(x), jnp.asarray(proposal), jnp.asarray(velocity),
                                             jnp.ones(4000), jnp.asarray(t)))

    assert signal(0.3) > 0 and signal(1.0) > 0
    assert signal(2.2) < 0 and signal(2.8) < 0


@pytest.mark.slow
def test_auto_trajectory_length_scales_with_the_target_and_keeps_chains_in_lockstep():
    import hmc

    lengths = []
    for scale in (1.0, 10.0):
        pot = hmc.Potential(terms={"q": lambda q, s=scale: 0.5 * jnp.sum((q["x"] / s) ** 2)},
                            init=lambda k, s=scale: {"x": s * jax.random.normal(k, (20,))},
                            observables={"x2": lambda q: q["x"] ** 2})
        r = hmc.sample(pot, num_chains=8, num_warmup=300, num_samples=50, trajectory_length="auto",
                       mass_matrix="identity", progress=False)
        # every chain takes the same number of steps in every transition (Halton jitter)
        assert (r.stats["n_steps"] == r.stats["n_steps"][:1]).all()
        assert (r.warmup_stats["n_steps"] == r.warmup_stats["n_steps"][:1]).all()
        assert len(set(r.stats["n_steps"][0].tolist())) > 2  # and the length does vary
        lengths.append(float(r.warmup_stats["trajectory_length"][0, -1]))
    assert 5.0 < lengths[1] / lengths[0] < 20.0, lengths  # the length is in the target's units


def test_a_new_metric_rescales_the_adapted_length_by_its_slowest_frequency():
    state = (jnp.log(jnp.asarray(8.0)), 0.1, 0.2, 3.0, 0.0, 0.0)
    old, new = jnp.ones(3), jnp.asarray([1.0, 4.0, 100.0])  # the slowest mode was 10x slower
    out = adaptation.rescaled_length(state, old, new)
    np.testing.assert_allclose(float(jnp.exp(out[0])), 0.8, rtol=1e-6)
    assert out[1:] == state[1:]  # Adam's moments are kept
    # dense: the smallest generalised eigenvalue; a correlated target whose marginal
    # variances are all 1 still has a slow direction, which the diagonals would miss
    corr = jnp.asarray([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    dense = adaptation.rescaled_length(state, jnp.eye(3), corr)
    np.testing.assert_allclose(float(jnp.exp(dense[0])), 8.0 / np.sqrt(1.9), rtol=1e-5)


@pytest.mark.slow
def test_auto_length_comes_back_to_the_whitened_scale_after_the_metric_adapts():
    # Scales 1..10 and a diagonal metric: warmup starts with the identity, where the slow
    # mode wants a length of about 10, and ends whitened, where the first ChEES maximum is
    # about 1-2. Without rescaling at the window ends the length stayed long (T = 23 on
    # 100 dimensions, 111 gradients per effective sample against about 4).
    import hmc

    scales = jnp.linspace(1.0, 10.0, 40)
    pot = hmc.Potential.from_logdensity(lambda q: -0.5 * jnp.sum((q / scales) ** 2),
                                        lambda k: jax.random.normal(k, (40,)))
    r = hmc.sample(pot, num_chains=8, num_warmup=300, num_samples=20, trajectory_length="auto", progress=False)
    length = float(r.warmup_stats["trajectory_length"][0, -1])
    assert 0.8 < length < 4.0, length


def test_auto_length_holds_ten_steps_in_the_first_window_then_adapts_from_one():
    import hmc

    schedule = adaptation.build_schedule(500)
    hold, restart = adaptation.length_phases(schedule)
    first_slow = int(np.flatnonzero(schedule.in_slow_window)[0])
    assert hold[: first_slow - 1].all() and not hold[first_slow - 1:].any()
    assert np.flatnonzero(restart).tolist() == [first_slow - 1]
    assert not any(adaptation.length_phases(adaptation.build_schedule(n))[0].any() for n in (0, 1))

    pot = hmc.Potential.from_logdensity(lambda q: -0.5 * jnp.sum(q**2), lambda k: jax.random.normal(k, (5,)))
    r = hmc.sample(pot, num_chains=4, num_warmup=200, num_samples=10, trajectory_length="auto", progress=False)
    first = int(np.flatnonzero(adaptation.build_schedule(200).in_slow_window)[0])
    length, step = r.warmup_stats["trajectory_length"][0], r.warmup_stats["adapted_step"][0]
    # ten of the adapted steps through the first window, one at its end, ChEES's from there on
    np.testing.assert_allclose(length[: first - 1], 10 * step[: first - 1], rtol=1e-5)
    np.testing.assert_allclose(length[first - 1], step[first - 1], rtol=1e-5)
    assert not np.isclose(length[first + 20], step[first + 20])  # adapted since


@pytest.mark.slow
def test_auto_length_lets_a_hot_start_order_without_frozen_stripes():
    # phi4 32x32 in its broken phase from the model's hot start, 4 chains: with ChEES from
    # one step at the first iteration, chains froze into stripes of both vacua (R-hat of
    # |m| 4.2 and 3.2 at seeds 0 and 1); ten steps through the first window let them order
    import hmc
    from hmc import diagnostics
    from physics_models import phi4

    for seed in (0, 1):
        r = hmc.sample(phi4(shape=(32, 32), m2=-1.0, lam=0.5), seed=seed, num_chains=4, num_warmup=500,
                       num_samples=300, trajectory_length="auto", record=[], progress=False)
        abs_m = np.asarray(r.draws["abs_magnetization"], np.float64)
        assert float(diagnostics.rhat(abs_m)) < 1.1, (seed, abs_m.mean(axis=1))


def test_auto_trajectory_length_refuses_what_it_cannot_adapt():
    import pytest

    import hmc
    import physics_models

    pot = physics_models.gaussian(dim=3)
    cases = [
        (dict(kernel="ghmc"), "kernel 'hmc'"),
        (dict(adaptation="per_chain"), "adaptation='pooled'"),
        (dict(num_warmup=50), "num_warmup >= 100"),
        (dict(jitter=0.2), "jitter applies to a fixed trajectory_length"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            hmc.sample(pot, num_chains=2, num_samples=5, trajectory_length="auto", progress=False,
                       **{"num_warmup": 150, **extra})


def test_min_frequency_of_a_preconditioned_quadratic():
    # the smallest omega is 0.4 (i = 3)
    grad, position, minv = _quadratic(4, 30, (1.0, 3.0), (0.8, 1.2), 3, 0.4, 0.4)
    top = adaptation.max_frequency(grad, position, minv, jax.random.key(0))
    low = adaptation.min_frequency(grad, position, minv, jax.random.key(1), top)
    assert abs(float(low) - 0.4) < 0.02, float(low)
    dense = adaptation.min_frequency(grad, position, jnp.diag(minv), jax.random.key(1), top)
    assert abs(float(dense) - 0.4) < 0.02, float(dense)
    # a saddle (one negative curvature) has no smallest frequency: 0, and so no flat spectrum
    saddle = _quadratic(4, 30, (1.0, 3.0), (0.8, 1.2), 5, -1.0, 1.0)[0]
    assert float(adaptation.min_frequency(saddle, position, minv, jax.random.key(1), top)) == 0.0


def test_flat_spectrum_narrows_the_jitter_and_starts_at_the_quarter_period():
    state = adaptation.init(0.5, 4, "diagonal", pooled=True, trajectory_length=3.0)
    assert float(state.length_jitter) == 1.0
    flat = adaptation.flat_spectrum(state, jnp.asarray(0.9), jnp.asarray(1.1))
    assert float(flat.length_jitter) == np.float32(adaptation.FLAT_JITTER)
    np.testing.assert_allclose(float(flat.trajectory_length), 0.5 * np.pi / np.sqrt(0.99), rtol=1e-6)
    # spread, unbounded or stiff relative to the metric's unit: the jitter stays uniform over (0, 2T)
    for lo, hi in ((0.3, 1.1), (0.0, 1.0), (0.9, 1.6), (1.6, 1.7)):
        out = adaptation.flat_spectrum(flat, jnp.asarray(lo), jnp.asarray(hi))
        assert float(out.length_jitter) == 1.0, (lo, hi)
        assert float(out.trajectory_length) == float(flat.trajectory_length)


def test_length_scale_is_uniform_over_its_jitter():
    t = jnp.arange(4095)
    # width 1 (or none) is the full ChEES jitter, bit for bit
    assert (np.asarray(adaptation.length_scale(t, jnp.asarray(1.0))) == np.asarray(2.0 * adaptation.halton(t))).all()
    narrow = np.asarray(adaptation.length_scale(t, jnp.asarray(0.2)))
    assert 0.8 < narrow.min() and narrow.max() < 1.2 and abs(narrow.mean() - 1.0) < 1e-3


@pytest.mark.slow
def test_auto_length_on_a_flat_spectrum_takes_the_quarter_period_with_a_narrow_jitter():
    # A correlated Gaussian under a dense metric is a unit Gaussian in the metric's units: every
    # frequency is 1, a trajectory of a quarter period is an independent draw, and ChEES's wide
    # jitter (or its second maximum) cost 3-4x the gradients per effective sample there
    import hmc
    from hmc import diagnostics

    cov = np.asarray([[4.0, 1.2, 0.0], [1.2, 1.0, 0.2], [0.0, 0.2, 0.25]])
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    pot = hmc.Potential.from_logdensity(lambda q: -0.5 * q @ prec @ q, lambda k: jax.random.normal(k, (3,)))
    r = hmc.sample(pot, num_chains=8, num_warmup=400, num_samples=1000, trajectory_length="auto",
                   mass_matrix="dense", progress=False)
    jitter, length = r.warmup_stats["length_jitter"][0], r.warmup_stats["trajectory_length"][0]
    assert jitter[0] == 1.0 and jitter[-1] == np.float32(adaptation.FLAT_JITTER)
    assert 0.5 * np.pi / 1.5 < length[-1] < 0.5 * np.pi * 1.5, length[-1]
    assert "a flat spectrum" in adaptation.length_report(r.warmup_stats)
    x = np.asarray(r.draws["q"], np.float64)
    for value, exact in ((x, np.zeros(3)), (x**2, np.diag(cov))):
        mean = value.mean(axis=(0, 1))
        error = value.std(axis=(0, 1)) / np.sqrt(diagnostics.ess_bulk(value))
        assert np.all(np.abs(mean - exact) < 4.0 * error), (mean, exact, error)
    # a spread spectrum keeps ChEES's jitter: the oscillator under a diagonal metric
    import physics_models as pm

    spread = hmc.sample(pm.harmonic_oscillator(n_sites=16), num_chains=4, num_warmup=200, num_samples=10,
                        progress=False)
    assert (spread.warmup_stats["length_jitter"] == 1.0).all()
    assert adaptation.length_report(spread.warmup_stats) is None


def test_transitions_take_the_narrow_jitter_the_warmup_chose():
    from hmc.chunks import at_transition
    from hmc.kernels.base import Params

    t = jnp.arange(256)
    narrow = jax.vmap(lambda i: at_transition(Params(jnp.float32(0.1), None, jnp.float32(2.0), jnp.float32(0.2)),
                                              i).trajectory_length)(t)
    assert 1.6 <= float(narrow.min()) and float(narrow.max()) <= 2.4
    wide = jax.vmap(lambda i: at_transition(Params(jnp.float32(0.1), None, jnp.float32(2.0), jnp.float32(1.0)),
                                            i).trajectory_length)(t)
    assert (np.asarray(wide) == np.asarray(2.0 * 2.0 * adaptation.halton(t))).all()
