"""Stan-style windowed warmup: dual averaging of the step size and a Welford
estimate of the (diagonal or dense) inverse mass matrix.

The building blocks are numpyro's (``dual_averaging``, ``welford_covariance``,
``build_adaptation_schedule`` from :mod:`numpyro.infer.hmc_util`); this module
only arranges them so that the estimate can be *pooled* over many chains (one
step size and one mass matrix shared by all chains, the usual choice when
hundreds of chains run on one device) or kept *per chain* (Stan's behaviour,
``vmap`` over chains).

Schedule (Stan reference manual, "HMC algorithm parameters"): an initial fast
buffer (step size only), slow windows of doubling length in which the mass
matrix is estimated and replaced at each window end (and the step size
adaptation restarted around ``log(10 * step_size)``), and a final fast buffer.

The step size. *Per chain* (Stan's choice) it is numpyro's dual averaging,
restarted at every window end; at the end of warmup it is the iterate average.
*Pooled*, the chain-averaged acceptance is almost free of noise, and dual
averaging's gain (made for one noisy chain) makes the step jump by factors of 3
between iterations; its average then lands well below the target. Pooled warmup
uses a proportional controller on ``log eps`` whose gain comes from a model of
the energy error (see :func:`pooled_gain`): it converges in a few iterations, is
not restarted when the mass matrix changes, and its iterates over the final fast
window are averaged. Both are capped at :data:`STABILITY_FRACTION` of the
integrator's stability limit, from the largest frequency of the preconditioned
Hessian (:func:`max_frequency`), re-estimated whenever the mass matrix changes:
the acceptance of a stiff mode falls off a cliff there, not smoothly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.scipy.special import ndtri
from numpyro.infer.hmc_util import build_adaptation_schedule, dual_averaging, welford_covariance

from hmc import integrators as _integrators

PyTree = Any

MASS_MATRIX_KINDS = ("identity", "diagonal", "dense")

#: The adapted step never exceeds this fraction of the integrator's stability limit.
STABILITY_FRACTION = 0.9
#: Loop gain of the pooled controller on a target whose energy error is Gaussian.
POOLED_DAMPING = 0.5
#: Iterations at the start of the final fast window left out of the pooled average.
SETTLE = 10
POWER_ITERATIONS = 20


class AdaptationState(NamedTuple):
    """Warmup state (for one chain, or shared by all chains when pooled).

    ``step_state`` is numpyro's dual-averaging state per chain, and the pooled
    controller's (log step, then count, sums of log steps and acceptances, smallest and
    largest log step over the averaged window); ``step_limit`` is the cap on the step
    (``inf`` until estimated, or where no limit was found); ``length_state`` the
    trajectory length's (log length, Adam's two moments, the count of its updates, and
    the sum and count of averaged log lengths), used with ``trajectory_length="auto"``.
    """

    step_size: Array
    inverse_mass_matrix: Array
    step_state: tuple
    welford_state: tuple
    step_limit: Array
    length_state: tuple

    @property
    def trajectory_length(self) -> Array:
        return jnp.exp(self.length_state[0])

    @property
    def length_jitter(self) -> Array:
        return self.length_state[6]


class Schedule(NamedTuple):
    """Per-iteration flags of the windowed schedule (host arrays of length ``num_warmup``):
    in a slow (mass matrix) window, at a slow window's end, and averaged by the pooled
    step-size controller (the final fast window but its first :data:`SETTLE` iterations;
    the second half of warmup when it has no slow window)."""

    in_slow_window: np.ndarray
    slow_window_end: np.ndarray
    averaged: np.ndarray

    @property
    def num_warmup(self) -> int:
        return int(self.in_slow_window.shape[0])


def build_schedule(num_warmup: int) -> Schedule:
    """Flags for each warmup iteration, from numpyro's Stan window schedule."""
    in_slow = np.zeros(num_warmup, bool)
    slow_end = np.zeros(num_warmup, bool)
    averaged = np.zeros(num_warmup, bool)
    if num_warmup <= 0:
        return Schedule(in_slow, slow_end, averaged)
    windows = build_adaptation_schedule(num_warmup)
    for window in windows[1:-1]:
        in_slow[window.start : window.end + 1] = True
        slow_end[window.end] = True
    if slow_end.any():
        final = int(np.flatnonzero(slow_end)[-1]) + 1
        averaged[min(final + SETTLE, (final + num_warmup) // 2):] = True
    else:
        averaged[num_warmup // 2:] = True
    return Schedule(in_slow, slow_end, averaged)


def halton(t: Array) -> Array:
    """The van der Corput sequence in base 2 at ``t + 1`` (``t >= 0``): 1/2, 1/4, 3/4, 1/8, ...
    Every chain uses the same value at a given transition, so their trajectories have the
    same number of steps (vmapped chains stay in lockstep) while the length still varies."""
    x = jnp.asarray(t, jnp.uint32) + jnp.uint32(1)
    for shift, mask in ((1, 0x55555555), (2, 0x33333333), (4, 0x0F0F0F0F), (8, 0x00FF00FF)):
        x = ((x >> shift) & jnp.uint32(mask)) | ((x & jnp.uint32(mask)) << shift)
    x = (x >> 16) | (x << 16)
    return x.astype(jnp.float32) * jnp.float32(2.0**-32)


def length_scale(t: Array, width: Array | None = None) -> Array:
    """The factor on ``T`` of transition ``t``: ``2 h(t)``, uniform over (0, 2), or with a
    half-width ``width < 1``, ``1 + width (2 h(t) - 1)``, uniform over ``1 +- width``."""
    h = halton(t)
    if width is None:
        return 2.0 * h
    return jnp.where(width < 1.0, 1.0 + width * (2.0 * h - 1.0), 2.0 * h)


def jittered_length(state: AdaptationState, t: Array) -> Array:
    """The trajectory length of transition ``t``: ``T`` times :func:`length_scale`."""
    scale = length_scale(t, state.length_jitter)
    return (state.trajectory_length * scale).astype(state.step_size.dtype)


#: Adam on log T for ChEES (Hoffman, Radul & Sountsov 2021): learning rate, beta2. The rate is
#: constant: decayed as (1 + n/100)^-1 or (1 + n/50)^-1/2 over the updates, it kept T from
#: drifting long on the Gaussian, funnel, oscillator and U(1) configs (8-25 % fewer gradients
#: per effective sample over three seeds) but could not grow T far enough on Rosenbrock
#: (T 0.25-0.7 against 1.6-3.4, 577-3966 gradients per effective sample against 150-186).
LENGTH_LEARNING_RATE = 0.025
LENGTH_BETA2 = 0.95


def chees_signal(start: Array, proposal: Array, tangent: Array, acceptance: Array, length: Array,
                 mean: Callable[[Array], Array] = lambda x: jnp.mean(x, axis=0),
                 row_sum: Callable[[Array], Array] = lambda x: jnp.sum(x, axis=1)) -> Array:
    """The acceptance-weighted gradient of ChEES with respect to ``log T`` over the chains.

    ChEES = E[(|x' - E x'|^2 - |x - E x|^2)^2] / 4, with ``x`` a chain's position at the
    start of a transition and ``x'`` the proposal (or their images in an embedding):
    the change of the squared distance from the centre, a proxy for how well a
    trajectory decorrelates the slowest direction. Its derivative along the proposal's
    end is ``(|x'-m'|^2 - |x-m|^2) (x'-m') . dx'/dt``, times ``t`` for ``log T``.

    (The rate ChEES / T, TFP's default criterion, was measured against it: better on
    Gaussians, 10-30x worse in gradients per effective sample on phi4 in its broken
    phase, Lennard-Jones and Rosenbrock, where it shortened the length to a third.
    ChEES / sqrt(T), measured again with today's warmup over three seeds: 8-18 % fewer
    gradients per effective sample on the Gaussian, funnel and oscillator configs, 3-6x
    more on Rosenbrock and, at two seeds of three, Lennard-Jones left stuck (R-hat 1.4-1.9).)
    ``start``, ``proposal``, ``tangent``: ``(chains, k)``; ``acceptance``: ``(chains,)``;
    ``mean``: the mean over chains, ``row_sum``: the sum over ``k`` per chain (the driver
    passes fixed-order ones, the same rounding on any device layout).
    """
    usable = jnp.isfinite(acceptance) & jnp.all(jnp.isfinite(proposal), axis=1) & jnp.all(
        jnp.isfinite(tangent), axis=1)
    weight = jnp.where(usable, acceptance, 0.0)
    proposal, tangent = jnp.where(usable[:, None], proposal, 0.0), jnp.where(usable[:, None], tangent, 0.0)
    centre = mean(start)
    total = jnp.maximum(mean(weight), jnp.finfo(start.dtype).tiny)
    centre_new = mean(weight[:, None] * proposal) / total
    change = row_sum((proposal - centre_new) ** 2) - row_sum((start - centre) ** 2)
    per_chain = length * change * row_sum((proposal - centre_new) * tangent)
    return mean(weight * per_chain) / total


def _length_init(length: Array) -> tuple:
    zero = jnp.zeros((), length.dtype)
    return (jnp.log(length), zero, zero, zero, zero, zero, jnp.ones((), length.dtype))


#: ``trajectory_length="auto"``: the length, in steps, of the first (fast) warmup window,
#: before ChEES starts from one step (:func:`update_length`)
EQUILIBRATION_LENGTH_STEPS = 10


def length_phases(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """Per warmup iteration: ``hold`` (the length is ``EQUILIBRATION_LENGTH_STEPS`` steps:
    the first window, but its last iteration) and ``restart`` (the first window's last
    iteration: the length restarts at one step, and ChEES adapts it from the next)."""
    n = schedule.num_warmup
    hold, restart = np.zeros(n, bool), np.zeros(n, bool)
    slow = np.flatnonzero(schedule.in_slow_window)
    if slow.size and slow[0] >= 1:
        hold[: slow[0] - 1] = True
        restart[slow[0] - 1] = True
    return hold, restart


def update_length(state: AdaptationState, signal: Array, averaged: Array, is_last: Array,
                  step_size: Array, max_num_steps: int, hold: Array = False, restart: Array = False
                  ) -> AdaptationState:
    """One Adam ascent step of ``log T`` on the ChEES signal; the length stays between one
    step and ``max_num_steps`` steps; its warmup value is the mean of ``log T`` over the
    averaged window.

    In the first warmup window (``hold``) the length is ten steps and is not adapted: from
    a hot start the chains order there, and short trajectories freeze what they order
    into (4 chains of phi4 32x32 in its broken phase kept stripes of both vacua, R-hat 3-4,
    when ChEES started from one step at the first iteration). At ``restart`` it drops to
    one step, from which ChEES grows it to its first maximum."""
    log_length, m, v, n, total, count, width = state.length_state
    dtype = log_length.dtype
    zero = jnp.zeros((), dtype)
    held = jnp.log(step_size * EQUILIBRATION_LENGTH_STEPS).astype(dtype)
    started = jnp.log(step_size).astype(dtype)
    signal = jnp.where(jnp.isfinite(signal), signal, 0.0).astype(dtype)
    n = n + 1.0
    m = signal  # Adam with beta1 = 0: the length follows the current signal
    v = LENGTH_BETA2 * v + (1.0 - LENGTH_BETA2) * signal**2
    v_hat = v / (1.0 - LENGTH_BETA2**n)
    move = LENGTH_LEARNING_RATE * signal / (jnp.sqrt(v_hat) + 1e-8)
    # a flat spectrum holds its quarter period, even below one step (a shorter step)
    flat = width < 1.0
    lowest = jnp.where(flat, -jnp.inf, jnp.log(step_size))
    log_length = jnp.clip(log_length + jnp.where(flat, 0.0, move), lowest, jnp.log(step_size * max_num_steps))
    w = averaged.astype(dtype)
    total, count = total + w * log_length, count + w
    final = jnp.where(count > 0, total / jnp.maximum(count, 1.0), log_length)
    log_length = jnp.where(is_last, final, log_length)
    fixed = jnp.asarray(hold) | jnp.asarray(restart)
    log_length = jnp.where(hold, held, jnp.where(restart, started, log_length))
    m, v, n = (jnp.where(fixed, zero, x) for x in (m, v, n))
    return state._replace(length_state=(log_length, m, v, n, total, count, width))


def pooled_gain(target_accept: float, order: int) -> float:
    """Gain ``g`` of the pooled controller ``log eps += g (a - target)``.

    Model: the energy error of a trajectory is Gaussian with mean ``mu`` and variance
    ``2 mu`` (which makes ``<exp(-dH)> = 1``), so the mean acceptance is
    ``a = 2 Phi(-sqrt(mu / 2))``, and ``mu`` grows as ``eps^(2 order)`` for an integrator
    of order ``order``. Then ``d a / d log eps = 2 order / (d log mu / d a)``, and
    ``g = POOLED_DAMPING / |d a / d log eps|`` at the target: on such a target every
    iteration removes half of the error. The controller is linear in ``a``, so its fixed
    point is where the *expected* acceptance is the target, however few chains.
    """
    z = float(ndtri(target_accept / 2.0))
    density = float(np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi))
    dlogmu_da = 1.0 / (z * density)  # negative: more acceptance, smaller energy error
    return POOLED_DAMPING * abs(dlogmu_da) / (2.0 * order)


def _preconditioned_hessian(grad_fn: Callable[[PyTree], PyTree], position: PyTree,
                            inverse_mass_matrix: Array | None) -> tuple[Callable[[Array], Array], Array]:
    """``(v -> L^T H L v, flat position)``: Hessian-vector products of the potential at
    ``position`` in the metric's units (``L L^T`` the inverse mass matrix), as central
    differences of ``grad_fn`` (the gradient the integrator uses, whatever differentiation
    rules the model's code carries)."""
    flat, unravel = ravel_pytree(position)
    dtype = flat.dtype
    if inverse_mass_matrix is None:
        scale = lambda v: v  # noqa: E731
    elif inverse_mass_matrix.ndim == 1:
        root = jnp.sqrt(inverse_mass_matrix)
        scale = lambda v: root * v  # noqa: E731
    else:
        chol = jnp.linalg.cholesky(inverse_mass_matrix)
        scale = lambda v: chol @ v  # noqa: E731
    scale_t = scale if inverse_mass_matrix is None or inverse_mass_matrix.ndim == 1 else (lambda v: chol.T @ v)
    h = jnp.asarray(1e-3 * np.sqrt(flat.size), dtype)

    def gradient(x: Array) -> Array:
        return ravel_pytree(grad_fn(unravel(x)))[0]

    def product(v: Array) -> Array:
        u = scale(v)
        return scale_t((gradient(flat + h * u) - gradient(flat - h * u)) / (2.0 * h))

    return product, flat


def _top_eigenvalue(operator: Callable[[Array], Array], key: Array, like: Array, iterations: int) -> Array:
    """The Rayleigh quotient after ``iterations`` power iterations of ``operator`` from a
    random vector: the eigenvalue of largest magnitude, approached from below."""
    dtype = like.dtype

    def normalized(v: Array) -> Array:
        return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(dtype).tiny)

    v = normalized(jax.random.normal(key, like.shape, dtype))
    v = jax.lax.fori_loop(0, iterations, lambda _, v: normalized(operator(v)), v)
    return jnp.vdot(v, operator(v))


def max_frequency(grad_fn: Callable[[PyTree], PyTree], position: PyTree, inverse_mass_matrix: Array | None,
                  key: Array, iterations: int = POWER_ITERATIONS) -> Array:
    """The largest frequency ``omega`` of the dynamics at ``position``: the square root of
    the largest eigenvalue of ``L^T H L`` (``H`` the Hessian of the potential, ``L L^T``
    the inverse mass matrix), by power iteration on Hessian-vector products.

    The products are central differences of ``grad_fn`` (the gradient the integrator
    uses, whatever differentiation rules the model's code carries). Power iteration
    approaches the eigenvalue from below. Returns 0 (no limit known) where the largest
    eigenvalue in magnitude is negative or anything is non-finite.
    """
    product, flat = _preconditioned_hessian(grad_fn, position, inverse_mass_matrix)
    curvature = _top_eigenvalue(product, key, flat, iterations)
    ok = jnp.isfinite(curvature) & (curvature > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, curvature, 1.0)), 0.0).astype(flat.dtype)


def min_frequency(grad_fn: Callable[[PyTree], PyTree], position: PyTree, inverse_mass_matrix: Array | None,
                  key: Array, omega_max: Array, iterations: int = POWER_ITERATIONS) -> Array:
    """The smallest frequency of the dynamics at ``position``, by power iteration on
    ``c - L^T H L`` with ``c = 1.05 omega_max^2`` (:func:`max_frequency`): its largest
    eigenvalue is ``c - omega_min^2``. Approached from above (the Rayleigh quotient is
    below that eigenvalue). Returns 0 where the smallest curvature is not positive (a
    negative one: a saddle or a barrier top) or anything is non-finite."""
    product, flat = _preconditioned_hessian(grad_fn, position, inverse_mass_matrix)
    shift = (1.05 * omega_max**2).astype(flat.dtype)
    top = _top_eigenvalue(lambda v: shift * v - product(v), key, flat, iterations)
    curvature = shift - top
    ok = jnp.isfinite(curvature) & (curvature > 0) & (omega_max > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, curvature, 1.0)), 0.0).astype(flat.dtype)


#: ``trajectory_length="auto"`` on a flat spectrum (:func:`flat_spectrum`): every frequency of
#: the preconditioned Hessian within this factor of the unit frequency of the adapted metric
FLAT_SPREAD = 1.5
#: the jitter's half-width on a flat spectrum: lengths uniform over ``T (1 +- FLAT_JITTER)``
FLAT_JITTER = 0.2


def flat_spectrum(state: AdaptationState, omega_min: Array, omega_max: Array) -> AdaptationState:
    """The length's jitter after an estimate of the metric: narrow on a flat spectrum.

    ChEES's jitter, uniform over ``(0, 2T)``, keeps every mode of a spread spectrum moving
    (a fixed length makes some mode turn by a multiple of pi). Where every frequency of the
    Hessian in the adapted metric's units (whose unit is the target's standard deviation)
    is within :data:`FLAT_SPREAD` of 1 at every chain, as for a well-preconditioned
    Gaussian, no mode can resonate at a quarter period, and the wide jitter only costs:
    half its lengths are too short to decorrelate ``|x|^2`` and ChEES drifts to its
    second maximum (3-4x the gradients per effective sample of the quarter period, on the
    gaussian and funnel configs). There the jitter narrows to ``1 +- FLAT_JITTER`` and
    ``T`` is the quarter period ``pi / (2 omega)`` (``omega`` the geometric mean of the
    two), held there: :func:`update_length` skips ChEES's step while the jitter is narrow
    (with large steps ChEES's optimum moves past the quarter period, where a trajectory
    takes two steps instead of one)."""
    log_length, m, v, n, total, count, width = state.length_state
    dtype = log_length.dtype
    ok = (omega_min > 0) & (omega_max > 0) & jnp.isfinite(omega_max)
    flat = ok & (omega_min >= 1.0 / FLAT_SPREAD) & (omega_max <= FLAT_SPREAD)
    omega = jnp.sqrt(jnp.where(ok, omega_min * omega_max, 1.0))
    quarter = jnp.log(0.5 * np.pi / omega).astype(dtype)
    zero = jnp.zeros((), dtype)
    log_length = jnp.where(flat, quarter, log_length)
    m, v, n = (jnp.where(flat, zero, x) for x in (m, v, n))
    width = jnp.where(flat, jnp.asarray(FLAT_JITTER, dtype), jnp.ones((), dtype))
    return state._replace(length_state=(log_length, m, v, n, total, count, width))


def step_limit(omega: Array, integrator: str, jitter_factor: float = 1.0) -> Array:
    """:data:`STABILITY_FRACTION` of the largest stable step at frequency ``omega``
    (``inf`` for ``omega = 0``), divided by ``jitter_factor`` (the largest factor a
    step-size jitter applies)."""
    bound = STABILITY_FRACTION * _integrators.stability_limit(integrator) / jitter_factor
    return jnp.where(omega > 0, bound / jnp.where(omega > 0, omega, 1.0), jnp.inf).astype(omega.dtype)


def jitter_factor(num_steps: int | None, jitter: float | None) -> float:
    """The largest factor a step-size jitter applies: ``1 + jitter`` with a fixed number of
    steps; 1 with a trajectory length (its steps are never longer than the adapted one)."""
    return 1.0 + float(jitter or 0.0) if num_steps is not None else 1.0


def with_limit(state: AdaptationState, limit: Array, pooled: bool) -> AdaptationState:
    """``state`` with a new step cap, its step (and the pooled controller's) clipped to it."""
    limit = jnp.asarray(limit, state.step_size.dtype)
    step = jnp.minimum(state.step_size, limit)
    control = state.step_state
    if pooled:
        control = (jnp.minimum(control[0], jnp.log(limit)),) + tuple(control[1:])
    return state._replace(step_size=step, step_state=control, step_limit=limit)


def _da_init(step_size: Array) -> tuple:
    da_init, _ = dual_averaging()
    dtype = jnp.asarray(step_size).dtype
    state = da_init(jnp.log(10.0 * step_size))
    # numpyro's init makes default-dtype scalars; keep the adaptation in the state's dtype.
    return tuple(jnp.asarray(x, dtype) if i != 3 else x for i, x in enumerate(state))


def _pooled_init(step_size: Array) -> tuple:
    zero = jnp.zeros((), step_size.dtype)
    # log step; over the averaged window: count, sums of x = log step and of a; min and max x
    return (jnp.log(step_size), zero, zero, zero, jnp.asarray(jnp.inf, step_size.dtype),
            jnp.asarray(-jnp.inf, step_size.dtype))


def _pooled_final(control: tuple, gain: float, target_accept: float) -> Array:
    """The final log step: the mean of the averaged iterates, moved by the mean acceptance's
    miss of the target along the model's slope (``POOLED_DAMPING / gain``), within the
    range of steps tried there. The iterates fluctuate on a curved acceptance, so their
    mean alone misses the target; a slope fitted to the noisy window is noisier still."""
    log_step, n, sx, sy, lo, hi = control
    n_safe = jnp.maximum(n, 1.0)
    corrected = sx / n_safe + (sy / n_safe - target_accept) * (gain / POOLED_DAMPING)
    return jnp.where(n > 0, jnp.clip(corrected, lo, hi), log_step)


def init(
    step_size: Array | float,
    dimension: int,
    mass_matrix: str = "diagonal",
    dtype: Any = jnp.float32,
    inverse_mass_matrix: Array | None = None,
    pooled: bool = False,
    trajectory_length: Array | float = 1.0,
) -> AdaptationState:
    """Initial warmup state; ``dimension`` is the number of scalar coordinates; ``pooled``:
    one state for all chains, with the pooled step-size controller; ``trajectory_length``:
    where an adapted length starts."""
    if mass_matrix not in MASS_MATRIX_KINDS:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRIX_KINDS}, got {mass_matrix!r}")
    step_size = jnp.asarray(step_size, dtype)
    dense = mass_matrix == "dense"
    if inverse_mass_matrix is None:
        inverse_mass_matrix = jnp.eye(dimension, dtype=dtype) if dense else jnp.ones(dimension, dtype)
    welford_init, _, _ = welford_covariance(diagonal=not dense)
    mean, m2, n = welford_init(dimension)
    return AdaptationState(
        step_size,
        jnp.asarray(inverse_mass_matrix, dtype),
        _pooled_init(step_size) if pooled else _da_init(step_size),
        (mean.astype(dtype), m2.astype(dtype), n),
        jnp.asarray(jnp.inf, dtype),
        _length_init(jnp.asarray(trajectory_length, dtype)),
    )


def _dual_averaging_step(state: AdaptationState, acceptance_rate: Array, target_accept: float,
                         is_last: Array) -> tuple[Array, tuple]:
    dtype = state.step_size.dtype
    _, da_update = dual_averaging()
    da_state = da_update(jnp.asarray(target_accept - acceptance_rate, dtype), state.step_state)
    da_state = tuple(jnp.asarray(x, dtype) if i != 3 else x for i, x in enumerate(da_state))
    log_step, log_step_avg = da_state[0], da_state[1]
    finfo = jnp.finfo(dtype)
    step = jnp.clip(jnp.exp(jnp.where(is_last, log_step_avg, log_step)), finfo.tiny,
                    jnp.minimum(state.step_limit, finfo.max))
    return step, da_state


def _pooled_step(state: AdaptationState, acceptance_rate: Array, gain: float, target_accept: float,
                 averaged: Array, is_last: Array) -> tuple[Array, tuple]:
    dtype = state.step_size.dtype
    log_step, n, sx, sy, lo, hi = state.step_state
    # the statistic belongs to the step just used: accumulate before moving
    w = averaged.astype(dtype)
    n, sx, sy = n + w, sx + w * log_step, sy + w * jnp.asarray(acceptance_rate, dtype)
    lo, hi = jnp.where(averaged, jnp.minimum(lo, log_step), lo), jnp.where(averaged, jnp.maximum(hi, log_step), hi)
    # in the averaged window the gain decays (Robbins-Monro), so the iterates settle
    step_gain = gain / (1.0 + n / SETTLE)
    move = jnp.clip(step_gain * (acceptance_rate - target_accept), -np.log(2.0), np.log(2.0))
    move = jnp.where(jnp.isfinite(move), move, -np.log(2.0))
    finfo = jnp.finfo(dtype)
    log_step = jnp.clip(log_step + move.astype(dtype), jnp.log(finfo.tiny), jnp.log(state.step_limit))
    control = (log_step, n, sx, sy, lo, hi)
    final = jnp.minimum(_pooled_final(control, gain, target_accept), jnp.log(state.step_limit))
    return jnp.exp(jnp.where(is_last, final, log_step)), control


def update(
    state: AdaptationState,
    iteration: Array,
    acceptance_rate: Array,
    samples: Array,
    *,
    schedule: Schedule,
    target_accept: float = 0.8,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    pooled_gain: float | None = None,
    adapt_length: bool = False,
) -> AdaptationState:
    """Advance the warmup by one iteration.

    Parameters
    ----------
    iteration
        Warmup iteration index ``t`` in ``[0, num_warmup)``.
    acceptance_rate
        Scalar statistic for the step size (the mean over chains when pooled).
    samples
        ``(n, d)`` flat positions after this iteration: the chains feeding the
        mass-matrix estimate (``n = 1`` per chain, ``n = num_chains`` pooled).
    pooled_gain
        The pooled controller's gain (:func:`pooled_gain`; the state must come from
        ``init(..., pooled=True)``); ``None``: dual averaging.
    adapt_length
        ``trajectory_length="auto"``: a new metric rescales the length
        (:func:`rescaled_length`).
    """
    dense = state.inverse_mass_matrix.ndim == 2
    pooled = pooled_gain is not None
    _, welford_update, welford_final = welford_covariance(diagonal=not dense)
    in_slow = jnp.asarray(schedule.in_slow_window)[iteration]
    at_window_end = jnp.asarray(schedule.slow_window_end)[iteration]
    is_last = iteration == schedule.num_warmup - 1

    step_size, control = state.step_size, state.step_state
    if adapt_step_size and pooled:
        averaged = jnp.asarray(schedule.averaged)[iteration]
        step_size, control = _pooled_step(state, acceptance_rate, pooled_gain, target_accept, averaged, is_last)
    elif adapt_step_size:
        step_size, control = _dual_averaging_step(state, acceptance_rate, target_accept, is_last)

    minv, welford_state = state.inverse_mass_matrix, state.welford_state
    if adapt_mass_matrix:

        def accumulate(ws: tuple) -> tuple:
            ws, _ = jax.lax.scan(lambda s, x: (welford_update(x, s), None), ws, samples)
            return ws

        welford_state = jax.lax.cond(in_slow, accumulate, lambda ws: ws, welford_state)

        def finish_window(args: tuple) -> tuple:
            ws, minv, step, control, length_state = args
            cov, _, _ = welford_final(ws, regularize=True)
            mean, m2, n = ws
            fresh = (jnp.zeros_like(mean), jnp.zeros_like(m2), jnp.zeros_like(n))
            cov = cov.astype(minv.dtype)
            # dual averaging restarts around the new metric (Stan); the pooled controller
            # carries on from where it is
            if adapt_length:
                length_state = rescaled_length(length_state, minv, cov)
            return fresh, cov, step, control if pooled else _da_init(step), length_state

        welford_state, minv, step_size, control, length_state = jax.lax.cond(
            at_window_end,
            finish_window,
            lambda args: args,
            (welford_state, minv, step_size, control, state.length_state),
        )
        return AdaptationState(step_size, minv, control, welford_state, state.step_limit, length_state)
    return AdaptationState(step_size, minv, control, welford_state, state.step_limit, state.length_state)


def rescaled_length(length_state: tuple, old: Array, new: Array) -> tuple:
    """The adapted trajectory length carried across a change of the metric.

    The slowest mode sets the length ChEES picks, and its period scales with the slowest
    frequency ``min_i sqrt(old_i / new_i)`` of the old metric, when the new inverse mass
    matrix is the target's variance (the new metric's slowest frequency is 1). The
    length is multiplied by that ratio, so it starts the next window where the last one
    ended in the new units instead of far past the first maximum. For a dense metric the
    ratio is the smallest generalised eigenvalue of ``old v = lambda new v`` (one
    factorisation per window: the length is adapted only with pooled adaptation, so the
    metric is one matrix, not a batch)."""
    if old.ndim == 2:
        chol = jnp.linalg.cholesky(new)
        half = jax.scipy.linalg.solve_triangular(chol, old, lower=True)
        whitened = jax.scipy.linalg.solve_triangular(chol, half.T, lower=True)
        ratio = jnp.linalg.eigvalsh(0.5 * (whitened + whitened.T))[0]
    else:
        ratio = jnp.min(old / jnp.maximum(new, jnp.finfo(new.dtype).tiny))
    shift = jnp.where(jnp.isfinite(ratio) & (ratio > 0), 0.5 * jnp.log(ratio), 0.0).astype(length_state[0].dtype)
    return (length_state[0] + shift,) + tuple(length_state[1:])


def limit_report(warmup_stats: dict[str, np.ndarray], target_accept: float, integrator: str | None,
                 jitter_factor: float = 1.0) -> str | None:
    """A sentence for the log and the summary when the adapted step sits at the stability
    cap with an acceptance well above ``target_accept`` (the target is out of reach below
    the cap: on a Gaussian mode the acceptance stays high up to the limit and falls to zero
    beyond it; on other targets the limit is an estimate and the note says so); ``None``
    otherwise.
    Read from the warmup record (``step_limit``, ``adapted_step``, ``acceptance_rate``)."""
    limits = np.asarray(warmup_stats.get("step_limit", []))
    if integrator is None or limits.size == 0 or not np.all(np.isfinite(limits[:, -1])):
        return None
    limit, step = float(np.max(limits[:, -1])), float(np.max(np.asarray(warmup_stats["adapted_step"])[:, -1]))
    schedule = build_schedule(limits.shape[1])
    acceptance = float(np.mean(np.asarray(warmup_stats["acceptance_rate"])[:, schedule.averaged]))
    if step < 0.98 * limit or acceptance < target_accept + 0.05:
        return None
    unstable = limit / STABILITY_FRACTION
    omega = _integrators.stability_limit(integrator) / (unstable * jitter_factor)
    # the cap is the harmonic limit at the stiffest curvature the power iterations found: exact
    # for a Gaussian mode, an estimate elsewhere (a quartic tail, measured where the chains
    # stood, can stay stable well beyond it), so the note says "estimated"
    return (f"the acceptance target {target_accept:g} is out of reach below the step cap: acceptance "
            f"{acceptance:.3f} at the cap, {STABILITY_FRACTION:g} x the estimated stability limit of {integrator} "
            f"(eps * omega_max = {_integrators.stability_limit(integrator):.4g} with omega_max ~ {omega:.4g}, the "
            f"stiffest curvature found: a harmonic mode that stiff is unstable beyond eps ~ {unstable:.4g}; a "
            f"non-Gaussian target may stay stable further); the adapted step is {step:.4g}, at the cap; each "
            "trajectory covers its length in equal steps no longer than that (their mean is the summary's step size)")


def length_report(warmup_stats: dict[str, np.ndarray]) -> str | None:
    """A sentence for the log and the summary when warmup ended on a flat spectrum
    (:func:`flat_spectrum`: the adapted length's jitter is narrow); ``None`` otherwise."""
    widths = np.asarray(warmup_stats.get("length_jitter", []))
    if widths.size == 0 or float(widths[0, -1]) >= 1.0:
        return None
    length, width = float(np.asarray(warmup_stats["trajectory_length"])[0, -1]), float(widths[0, -1])
    text = (f"T = {length:.4g}, jittered +-{width:.0%} (every frequency of the preconditioned "
            f"Hessian is within {FLAT_SPREAD:g}x of the target's scale: a flat spectrum, so the quarter period "
            f"pi / (2 omega) and not ChEES's length jittered over (0, 2T))")
    step = np.asarray(warmup_stats.get("adapted_step", []))
    if step.size and length * (1.0 + width) <= float(step[0, -1]):
        text += f"; every trajectory is one step of its own length, shorter than the adapted eps = {float(step[0, -1]):.4g}"
    return text


def find_reasonable_step_size(
    acceptance_fn: Callable[[Array], Array],
    initial: Array,
    target: float = 0.5,
    max_iterations: int = 100,
) -> Array:
    """Double or halve the step size until one step's acceptance crosses ``target``.

    Hoffman & Gelman, JMLR 15 (2014) 1593, Algorithm 4. ``acceptance_fn(eps)``
    returns the acceptance probability of a single integrator step (a mean
    over chains when pooled); a non-finite acceptance counts as zero.
    """
    initial = jnp.asarray(initial)

    def accept(eps: Array) -> Array:
        a = acceptance_fn(eps)
        return jnp.where(jnp.isfinite(a), a, 0.0)

    direction = jnp.where(accept(initial) > target, 1.0, -1.0).astype(initial.dtype)

    def cond(carry: tuple) -> Array:
        eps, i, done = carry
        return ~done & (i < max_iterations)

    def body(carry: tuple) -> tuple:
        eps, i, _ = carry
        new = eps * jnp.where(direction > 0, 2.0, 0.5).astype(eps.dtype)
        a = accept(new)
        crossed = jnp.where(direction > 0, a < target, a > target)
        # Going up, stop at the last step size still above target.
        eps = jnp.where(crossed & (direction > 0), eps, new)
        return eps, i + 1, crossed

    eps, _, _ = jax.lax.while_loop(cond, body, (initial, jnp.array(0), jnp.array(False)))
    finfo = jnp.finfo(initial.dtype)
    return jnp.clip(eps, finfo.tiny, finfo.max)
