"""Warmup's building blocks on synthetic inputs: cheap, exact checks of the adaptation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
