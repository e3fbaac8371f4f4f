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
At the end of warmup the step size is the dual-averaging iterate average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro.infer.hmc_util import build_adaptation_schedule, dual_averaging, welford_covariance

PyTree = Any

MASS_MATRIX_KINDS = ("identity", "diagonal", "dense")


class AdaptationState(NamedTuple):
    """Warmup state (for one chain, or shared by all chains when pooled)."""

    step_size: Array
    inverse_mass_matrix: Array
    dual_averaging_state: tuple
    welford_state: tuple


class Schedule(NamedTuple):
    """Per-iteration flags of the windowed schedule (host arrays of length ``num_warmup``)."""

    in_slow_window: np.ndarray
    slow_window_end: np.ndarray

    @property
    def num_warmup(self) -> int:
        return int(self.in_slow_window.shape[0])


def build_schedule(num_warmup: int) -> Schedule:
    """Flags for each warmup iteration, from numpyro's Stan window schedule."""
    in_slow = np.zeros(num_warmup, bool)
    slow_end = np.zeros(num_warmup, bool)
    if num_warmup <= 0:
        return Schedule(in_slow, slow_end)
    windows = build_adaptation_schedule(num_warmup)
    for window in windows[1:-1]:
        in_slow[window.start : window.end + 1] = True
        slow_end[window.end] = True
    return Schedule(in_slow, slow_end)


def _da_init(step_size: Array) -> tuple:
    da_init, _ = dual_averaging()
    dtype = jnp.asarray(step_size).dtype
    state = da_init(jnp.log(10.0 * step_size))
    # numpyro's init makes default-dtype scalars; keep the adaptation in the state's dtype.
    return tuple(jnp.asarray(x, dtype) if i != 3 else x for i, x in enumerate(state))


def init(
    step_size: Array | float,
    dimension: int,
    mass_matrix: str = "diagonal",
    dtype: Any = jnp.float32,
    inverse_mass_matrix: Array | None = None,
) -> AdaptationState:
    """Initial warmup state; ``dimension`` is the number of scalar coordinates."""
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
        _da_init(step_size),
        (mean.astype(dtype), m2.astype(dtype), n),
    )


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
) -> AdaptationState:
    """Advance the warmup by one iteration.

    Parameters
    ----------
    iteration
        Warmup iteration index ``t`` in ``[0, num_warmup)``.
    acceptance_rate
        Scalar statistic for dual averaging (the mean over chains when pooled).
    samples
        ``(n, d)`` flat positions after this iteration: the chains feeding the
        mass-matrix estimate (``n = 1`` per chain, ``n = num_chains`` pooled).
    """
    dense = state.inverse_mass_matrix.ndim == 2
    dtype = state.step_size.dtype
    _, da_update = dual_averaging()
    _, welford_update, welford_final = welford_covariance(diagonal=not dense)
    in_slow = jnp.asarray(schedule.in_slow_window)[iteration]
    at_window_end = jnp.asarray(schedule.slow_window_end)[iteration]
    is_last = iteration == schedule.num_warmup - 1

    step_size, da_state = state.step_size, state.dual_averaging_state
    if adapt_step_size:
        da_state = da_update(jnp.asarray(target_accept - acceptance_rate, dtype), da_state)
        da_state = tuple(jnp.asarray(x, dtype) if i != 3 else x for i, x in enumerate(da_state))
        log_step, log_step_avg = da_state[0], da_state[1]
        finfo = jnp.finfo(dtype)
        step_size = jnp.clip(jnp.exp(jnp.where(is_last, log_step_avg, log_step)), finfo.tiny, finfo.max)

    minv, welford_state = state.inverse_mass_matrix, state.welford_state
    if adapt_mass_matrix:

        def accumulate(ws: tuple) -> tuple:
            ws, _ = jax.lax.scan(lambda s, x: (welford_update(x, s), None), ws, samples)
            return ws

        welford_state = jax.lax.cond(in_slow, accumulate, lambda ws: ws, welford_state)

        def finish_window(args: tuple) -> tuple:
            ws, minv, step, da = args
            cov, _, _ = welford_final(ws, regularize=True)
            mean, m2, n = ws
            fresh = (jnp.zeros_like(mean), jnp.zeros_like(m2), jnp.zeros_like(n))
            return fresh, cov.astype(minv.dtype), step, _da_init(step)

        welford_state, minv, step_size, da_state = jax.lax.cond(
            at_window_end,
            finish_window,
            lambda args: args,
            (welford_state, minv, step_size, da_state),
        )
    return AdaptationState(step_size, minv, da_state, welford_state)


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
