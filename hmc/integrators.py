"""Symplectic splitting integrators from one coefficient table.

Every integrator is a palindromic sequence of alternating *kicks* (momentum
updates, ``p -= b * eps * dU/dq``) and *drifts* (position updates,
``q += a * eps * M^{-1} p``), starting and ending with a kick:

    b_0, a_0, b_1, a_1, ..., a_{k-1}, b_k

The last kick of one step and the first kick of the next act at the same
position, so the gradient computed after the final drift of a step is reused
("first same as last"): a step costs ``k`` gradient evaluations.

References
----------
- Velocity Verlet / leapfrog: Duane, Kennedy, Pendleton, Roweth, PLB 195 (1987) 216.
- Minimum-norm (2MN): Omelyan, Mryglod, Folk, Comput. Phys. Commun. 151 (2003) 272,
  ``lambda = 0.1931833275037836``.
- Fourth-order triple jump: Yoshida, Phys. Lett. A 150 (1990) 262.
- Force-gradient (``force_gradient``): Chin, Phys. Lett. A 226 (1997) 344; Omelyan,
  Mryglod, Folk (2003); Kennedy, Clark, Silva, arXiv:0910.2950; without the Hessian, as
  Yin & Mawhinney, arXiv:1111.5059: the middle kick's force is evaluated at a position
  shifted along the force itself (:data:`FORCE_GRADIENT`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree

from hmc import rng as _rng

PyTree = Any

OMELYAN_LAMBDA = 0.1931833275037836
_YOSHIDA_W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
_YOSHIDA_W0 = -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0))

#: name -> (b_0, a_0, b_1, ..., b_k): kick, drift, kick, ..., kick.
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "leapfrog": (0.5, 1.0, 0.5),
    "minimum_norm": (OMELYAN_LAMBDA, 0.5, 1.0 - 2.0 * OMELYAN_LAMBDA, 0.5, OMELYAN_LAMBDA),
    "yoshida4": (
        0.5 * _YOSHIDA_W1,
        _YOSHIDA_W1,
        0.5 * (_YOSHIDA_W1 + _YOSHIDA_W0),
        _YOSHIDA_W0,
        0.5 * (_YOSHIDA_W0 + _YOSHIDA_W1),
        _YOSHIDA_W1,
        0.5 * _YOSHIDA_W1,
    ),
    "force_gradient": (1.0 / 6.0, 0.5, 2.0 / 3.0, 0.5, 1.0 / 6.0),
}

#: name -> {kick index: xi}: kicks whose force is evaluated at a shifted position,
#: ``F(q + xi h^2 M^{-1} F(q))`` with ``F = -dU/dq`` and ``h`` the level's step. To second
#: order in ``h`` that is ``F + xi h^2 (dF/dq) M^{-1} F``, the force-gradient term of Chin's
#: fourth-order scheme (``[B, [A, B]]`` with weight ``h^3 / 72`` on a kick of ``2 h / 3``),
#: at the cost of one more force instead of a Hessian-vector product. A kick that depends on
#: ``q`` only has Jacobian 1 and the table is palindromic, so the step stays volume
#: preserving and reversible: HMC with it is exact.
FORCE_GRADIENT: dict[str, dict[int, float]] = {"force_gradient": {2: 1.0 / 24.0}}

#: Convergence order of the energy error of each integrator.
ORDER = {"leapfrog": 2, "minimum_norm": 2, "yoshida4": 4, "force_gradient": 4}


def gradient_evaluations_per_step(integrator: str, timescales: Any = None) -> int:
    """Number of fresh gradients one step of ``integrator`` needs; with ``timescales``
    (``[{"terms": [...], "steps": n}, ...]``), the outermost level's force evaluations."""
    if timescales:
        steps = tuple(int(level.get("steps", 1)) if isinstance(level, dict) else int(level[1]) for level in timescales)
        tables = tuple((level.get("integrator") if isinstance(level, dict) else
                        (level[2] if len(level) > 2 else None)) or integrator for level in timescales)
        return evaluations_per_step(integrator, steps, tables)[0]
    return len(coefficients(integrator)) // 2 + len(FORCE_GRADIENT.get(integrator, {}))


def shift(integrator: str, kick: int) -> float:
    """``xi`` of the ``kick``-th coefficient (an even index) of ``integrator``'s table: the
    kick's force is evaluated at ``q + xi h^2 M^{-1} F(q)``; 0 for a plain kick."""
    return FORCE_GRADIENT.get(integrator, {}).get(kick, 0.0)


@functools.lru_cache(maxsize=None)
def stability_limit(integrator: str) -> float:
    """The largest ``eps * omega`` at which ``integrator`` is stable on a harmonic mode of
    frequency ``omega`` (2 for leapfrog, 2.553 for 2MN, 1.573 for Yoshida4, 3.464 = sqrt(12) for the
    force-gradient scheme).

    One step maps ``(q, p)`` of ``H = (p^2 + q^2) / 2`` linearly, with determinant 1; it is
    stable while ``|trace| < 2``. Found from the coefficient table: a scan for the first
    ``eps`` where ``|trace|`` reaches 2, then bisection.
    """

    def trace(eps: float) -> float:
        m = np.eye(2)
        for i, c in enumerate(coefficients(integrator)):
            # kicks (even i): p -= c eps q', q' = (1 - xi eps^2) q; drifts (odd i): q += c eps p
            kick = -c * eps * (1.0 - shift(integrator, i) * eps ** 2)
            m = (np.array([[1.0, 0.0], [kick, 1.0]]) if i % 2 == 0 else np.array([[1.0, c * eps], [0.0, 1.0]])) @ m
        return abs(np.trace(m)) - 2.0

    grid = np.linspace(1e-3, 8.0, 8000)
    first = next(e for e in grid if trace(e) >= 0.0)
    low, high = first - (grid[1] - grid[0]), first
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if trace(mid) < 0.0 else (low, mid)
    return float(low)


def coefficients(integrator: str) -> tuple[float, ...]:
    try:
        return COEFFICIENTS[integrator]
    except KeyError:
        raise ValueError(
            f"unknown integrator {integrator!r}; choose one of {sorted(COEFFICIENTS)}"
        ) from None


# -- mass matrix -----------------------------------------------------------------
class Metric(NamedTuple):
    """Euclidean metric built from an inverse mass matrix.

    ``inverse_mass_matrix`` is ``None`` (identity), a flat vector of shape
    ``(d,)`` (diagonal) or a ``(d, d)`` matrix (dense), with ``d`` the number of
    scalar coordinates of the raveled state.
    """

    sample_momentum: Callable[[Array, PyTree], PyTree]
    kinetic_energy: Callable[[PyTree], Array]
    velocity: Callable[[PyTree], PyTree]
    #: ``drift(q, v, h)``: the position moved for a time ``h`` at velocity ``v``; ``None``
    #: is ``q + h v`` (a group leaf moves by ``exp(h v) U``, :mod:`hmc.geometry`)
    drift: Callable[[PyTree, PyTree, Array], PyTree] | None = None


def _tree_scale(tree: PyTree, scale: Array | float) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x * scale, tree)


def _normal_like(rng_key: Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = _rng.split(rng_key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [_rng.normal(k, jnp.shape(x), jnp.asarray(x).dtype) for k, x in zip(keys, leaves)]
    )


def euclidean_metric(inverse_mass_matrix: Array | None, position: PyTree) -> Metric:
    """Momentum sampler, kinetic energy ``p^T M^{-1} p / 2`` and velocity ``M^{-1} p``.

    ``position`` only supplies the pytree structure (it may be abstract).
    """
    if inverse_mass_matrix is None:

        def sample_momentum(rng_key: Array, like: PyTree) -> PyTree:
            return _normal_like(rng_key, like)

        def kinetic_energy(momentum: PyTree) -> Array:
            return 0.5 * sum(jnp.sum(p * p) for p in jax.tree_util.tree_leaves(momentum))

        def velocity(momentum: PyTree) -> PyTree:
            return momentum

        return Metric(sample_momentum, kinetic_energy, velocity)

    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
    _, unravel = ravel_pytree(position)

    if inverse_mass_matrix.ndim == 1:
        # Diagonal: stay in pytree form; the diagonal is unraveled once per trajectory.
        minv = unravel(inverse_mass_matrix)
        inv_sqrt_minv = jax.tree_util.tree_map(lambda m: 1.0 / jnp.sqrt(m), minv)

        def sample_momentum(rng_key: Array, like: PyTree) -> PyTree:
            z = _normal_like(rng_key, like)
            return jax.tree_util.tree_map(lambda zi, s: zi * s, z, inv_sqrt_minv)

        def velocity(momentum: PyTree) -> PyTree:
            return jax.tree_util.tree_map(lambda p, m: p * m, momentum, minv)

        def kinetic_energy(momentum: PyTree) -> Array:
            return 0.5 * sum(
                jnp.sum(p * p * m)
                for p, m in zip(jax.tree_util.tree_leaves(momentum), jax.tree_util.tree_leaves(minv))
            )

        return Metric(sample_momentum, kinetic_energy, velocity)

    if inverse_mass_matrix.ndim != 2:
        raise ValueError(
            f"inverse_mass_matrix must be None, (d,) or (d, d); got shape {inverse_mass_matrix.shape}"
        )
    # Dense: M^{-1} = L L^T, momentum p = L^{-T} z has covariance M.
    chol = jnp.linalg.cholesky(inverse_mass_matrix)

    def sample_momentum(rng_key: Array, like: PyTree) -> PyTree:
        flat, _ = ravel_pytree(like)
        z = _rng.normal(rng_key, flat.shape, flat.dtype)
        p = jax.scipy.linalg.solve_triangular(chol.T, z, lower=False)
        return unravel(p)

    def velocity(momentum: PyTree) -> PyTree:
        flat, _ = ravel_pytree(momentum)
        return unravel(inverse_mass_matrix @ flat)

    def kinetic_energy(momentum: PyTree) -> Array:
        flat, _ = ravel_pytree(momentum)
        return 0.5 * flat @ (inverse_mass_matrix @ flat)

    return Metric(sample_momentum, kinetic_energy, velocity)


def metric_for(potential: Any, inverse_mass_matrix: Array | None, position: PyTree) -> Metric:
    """The metric of ``potential``'s state: :func:`euclidean_metric`, or with group leaves
    (:attr:`hmc.Potential.groups`) momenta in their algebra and the exponential drift
    (:func:`hmc.geometry.group_metric`)."""
    groups = getattr(potential, "groups", None)
    if groups:
        from hmc import geometry

        return geometry.group_metric(groups, inverse_mass_matrix, position)
    return euclidean_metric(inverse_mass_matrix, position)


def _euclidean_drift(position: PyTree, velocity: PyTree, h: Array) -> PyTree:
    return _tree_axpy(h, velocity, position)


# -- integration -----------------------------------------------------------------
class IntegratorState(NamedTuple):
    """Phase-space point with the gradient at ``position`` (reused by the next kick)."""

    position: PyTree
    momentum: PyTree
    potential_energy_grad: PyTree


class GuardFlags(NamedTuple):
    """Per-trajectory record of the in-loop gradient check.

    ``ok`` stays ``True`` while every fresh gradient is finite; ``first_step``
    is the global index of the first failing gradient evaluation (``-1`` if
    none), ``position`` the position where it was evaluated and ``momentum``
    the momentum there (before the failing kick), which tells an integrator
    that had already blown up from a gradient that broke at a sane state.
    """

    ok: Array
    first_step: Array
    position: PyTree
    momentum: PyTree


def init_guard_flags(position: PyTree, momentum: PyTree) -> GuardFlags:
    return GuardFlags(jnp.array(True), jnp.array(-1, jnp.int32), position, momentum)


def _tree_axpy(alpha: Array, x: PyTree, y: PyTree) -> PyTree:
    """``y + alpha * x`` leafwise."""
    return jax.tree_util.tree_map(lambda xi, yi: yi + alpha * xi, x, y)


def tree_sum(tree: PyTree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    total = jnp.sum(leaves[0])
    for leaf in leaves[1:]:
        total = total + jnp.sum(leaf)
    return total


def _check(flags: GuardFlags, g: PyTree, q: PyTree, p: PyTree, index: Array) -> GuardFlags:
    """Record the first non-finite gradient: ``isfinite(sum(g))`` is one reduction, and
    NaN and Inf both propagate through a sum."""
    finite = jnp.isfinite(tree_sum(g))
    first = flags.ok & ~finite
    keep = lambda new, old: jnp.where(first, new, old)  # noqa: E731
    return GuardFlags(
        flags.ok & finite,
        jnp.where(first, index, flags.first_step).astype(jnp.int32),
        jax.tree_util.tree_map(keep, q, flags.position),
        jax.tree_util.tree_map(keep, p, flags.momentum),
    )


# -- nested timescales ------------------------------------------------------------
class Split(NamedTuple):
    """A potential split into levels for nested integration (Sexton & Weingarten, Nucl.
    Phys. B380 (1992) 665), outermost level first.

    ``energies[l]`` is level ``l``'s part of the potential; ``steps[0]`` is the number of
    outermost sub-steps per integrator step (1: the step itself), ``steps[l]`` for
    ``l >= 1`` the number of level-``l`` steps per drift of level ``l - 1``. Only the
    innermost level moves the position. ``integrators[l]`` names level ``l``'s coefficient
    table (``None``: every level uses the integrator the step is built with), as lattice
    codes let each level choose, e.g. a leapfrog middle level that makes one force per call.
    """

    energies: tuple[Callable[[PyTree], Array], ...]
    steps: tuple[int, ...]
    integrators: tuple[str, ...] | None = None

    def energy(self, position: PyTree) -> Array:
        """The total potential, summed over levels in level order (the one function both
        ends of a trajectory are measured with)."""
        total = jnp.asarray(self.energies[0](position))
        for fn in self.energies[1:]:
            total = total + fn(position)
        return total

    def value_and_grads(self, position: PyTree) -> tuple[Array, tuple[PyTree, ...]]:
        """``(U(q), (dU_0/dq, dU_1/dq, ...))``."""
        pairs = [jax.value_and_grad(fn)(position) for fn in self.energies]
        total = pairs[0][0]
        for value, _ in pairs[1:]:
            total = total + value
        return total, tuple(g for _, g in pairs)


class Schedule(NamedTuple):
    """One integrator step flattened: kick groups and drifts alternating,
    ``groups[0], drifts[0], groups[1], ..., drifts[m-1], groups[m]``.

    A kick group is ``((level, coefficient), ...)``, sorted by level: the kicks that act
    at one position, adjacent kicks of a level merged; a drift moves the position by
    ``coefficient * eps * M^{-1} p``. Coefficients are in units of the step size ``eps``.
    ``boundary`` is ``groups[m]`` merged with the next step's ``groups[0]``. ``shifts[i]``
    holds ``(level, xi)`` for the force-gradient kicks of ``groups[i]`` (see
    :data:`FORCE_GRADIENT`; ``xi`` in units of ``eps^2``): that level's force is evaluated at
    ``q - xi eps^2 M^{-1} dU/dq`` for the kick.
    """

    groups: tuple[tuple[tuple[int, float], ...], ...]
    drifts: tuple[float, ...]
    boundary: tuple[tuple[int, float], ...]
    shifts: tuple[tuple[tuple[int, float], ...], ...] = ()


def _group_kick(group: list, shifted: dict, level: int, coefficient: float, xi: float) -> None:
    """Add a kick to the group at one position; a force-gradient kick is not merged with
    another kick of its level (their forces act at different points)."""
    if (xi or level in shifted) and any(lev == level for lev, _ in group):
        raise ValueError(f"a force-gradient kick of level {level} meets another kick of that level at one position")
    if xi:
        shifted[level] = xi
    _merge(group, level, coefficient)


def _merge(group: list, level: int, coefficient: float) -> None:
    for k, (lev, c) in enumerate(group):
        if lev == level:
            group[k] = (lev, c + coefficient)
            return
    group.append((level, coefficient))


@functools.lru_cache(maxsize=None)
def schedule(integrator: str, steps: tuple[int, ...] = (1,), integrators: tuple[str, ...] | None = None) -> Schedule:
    """The flattened step of ``integrator`` nested over ``len(steps)`` levels (see
    :class:`Split`), built once: each level's step is its coefficient table (``integrators[l]``,
    or ``integrator`` for all) with its drifts replaced by ``steps[l + 1]`` steps of the next
    level, and kicks that act at one position are merged. One level with one step is the
    coefficient table itself."""
    if not steps or any(int(n) != n or n < 1 for n in steps):
        raise ValueError(f"steps per level must be integers >= 1, got {steps!r}")
    if integrators is not None and len(integrators) != len(steps):
        raise ValueError(f"one integrator per level: {len(steps)} levels, got {integrators!r}")
    names = [integrator if integrators is None else integrators[level] or integrator for level in range(len(steps))]
    tables = [coefficients(name) for name in names]
    ops: list[tuple] = []

    def emit(level: int, scale: float) -> None:
        for i, c in enumerate(tables[level]):
            if i % 2 == 0:
                ops.append(("kick", level, c * scale, shift(names[level], i) * scale ** 2))
            elif level == len(steps) - 1:
                ops.append(("drift", c * scale))
            else:
                inner = steps[level + 1]
                for _ in range(inner):
                    emit(level + 1, c * scale / inner)

    for _ in range(steps[0]):
        emit(0, 1.0 / steps[0])
    groups: list[list] = [[]]
    shifted: list[dict] = [{}]
    drifts: list[float] = []
    for op in ops:
        if op[0] == "drift":
            drifts.append(op[1])
            groups.append([])
            shifted.append({})
        else:
            _group_kick(groups[-1], shifted[-1], *op[1:])
    if shifted[0] or shifted[-1]:
        raise ValueError("a force-gradient kick must be an inner kick of its table, not its first or last")
    boundary = list(groups[-1])
    for level, c in groups[0]:
        _merge(boundary, level, c)
    ordered = lambda g: tuple(sorted(g, key=lambda lc: lc[0]))  # noqa: E731
    return Schedule(tuple(ordered(g) for g in groups), tuple(drifts), ordered(boundary),
                    tuple(tuple(sorted(d.items())) for d in shifted))


def evaluations_per_step(integrator: str, steps: tuple[int, ...] = (1,),
                         integrators: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """Fresh gradient evaluations of each level per integrator step (a force-gradient kick
    counts two: the force at the position and at the shifted one)."""
    plan = schedule(integrator, tuple(steps), None if integrators is None else tuple(integrators))
    return tuple(sum(any(lev == level for lev, _ in g) for g in plan.groups[1:])
                 + sum(any(lev == level for lev, _ in d) for d in plan.shifts[1:]) for level in range(len(steps)))


class _Scheme(NamedTuple):
    """One integrator step's schedule and the functions it calls (one per level)."""

    plan: Schedule
    step_size: Array
    guard: bool
    grad_fns: tuple
    value_and_grad_fns: tuple
    velocity_fn: Callable
    drift_fn: Callable = _euclidean_drift


def _kick(s: _Scheme, group: tuple, g: tuple, p: PyTree) -> PyTree:
    for level, c in group:
        p = _tree_axpy(-c * s.step_size, g[level], p)
    return p


def _shifted_forces(s: _Scheme, shifts: tuple, q: PyTree, p: PyTree, g: list, flags: GuardFlags,
                    index: Array) -> tuple[tuple, GuardFlags]:
    """The gradients a kick group acts with: a force-gradient level's evaluated again at
    ``q - xi eps^2 M^{-1} g`` (checked by the guard like any fresh gradient)."""
    g = list(g)
    for level, xi in shifts:
        moved = s.drift_fn(q, s.velocity_fn(g[level]), -xi * s.step_size ** 2)
        g[level] = s.grad_fns[level](moved)
        if s.guard:
            flags = _check(flags, g[level], moved, p, index)
    return tuple(g), flags


def _one_step(s: _Scheme, q: PyTree, p: PyTree, g: tuple, flags: GuardFlags, step: Array, last: bool) -> tuple:
    """One step (kicks merged across steps, see :func:`_trajectory`); ``g`` holds the
    latest gradient of each level."""
    values = []
    g = list(g)
    n_groups = len(s.plan.drifts)
    for i in range(n_groups):
        q = s.drift_fn(q, s.velocity_fn(p), s.plan.drifts[i] * s.step_size)
        end = i == n_groups - 1
        fresh = []
        for level, _ in s.plan.groups[i + 1]:
            if last and end:
                value, g[level] = s.value_and_grad_fns[level](q)
                values.append(value)
            else:
                g[level] = s.grad_fns[level](q)
            fresh.append(g[level])
        if s.guard:
            flags = _check(flags, fresh[0] if len(fresh) == 1 else tuple(fresh), q, p, step * n_groups + i)
        kick_g, flags = _shifted_forces(s, s.plan.shifts[i + 1], q, p, g, flags, step * n_groups + i)
        p = _kick(s, s.plan.boundary if end and not last else s.plan.groups[i + 1], kick_g, p)
    value = None
    if values and values[0] is not None:
        value = values[0]
        for v in values[1:]:
            value = value + v
    return q, p, tuple(g), flags, value


def _trajectory(
    plan: Schedule,
    grad_fns: tuple,
    value_and_grad_fns: tuple,
    velocity_fn: Callable[[PyTree], PyTree],
    state: IntegratorState,
    step_size: Array,
    num_steps: Array | int,
    guard: bool,
    nested: bool = False,
    drift_fn: Callable | None = None,
) -> tuple[IntegratorState, GuardFlags, Array | None]:
    """``num_steps`` steps with the kicks between steps merged.

    The last kick group of a step and the first of the next act at the same position,
    so they are applied as one update (``b_k + b_0`` for each level): a leapfrog step is
    then one drift, one gradient and one kick. The last step is peeled off the loop: it
    ends with its own kicks only, and its gradients come from ``value_and_grad_fns``,
    which also return the potential energy at the end point at no extra pass.
    ``step_index`` numbers gradient evaluations (kick groups) across the trajectory so
    that a failing one can be located. ``nested``: ``state.potential_energy_grad`` is the
    tuple of the levels' gradients, and so is the end's.
    """
    single = not nested
    scheme = _Scheme(plan, step_size, guard, grad_fns, value_and_grad_fns, velocity_fn, drift_fn or _euclidean_drift)

    def body(step: Array, carry: tuple) -> tuple:
        return _one_step(scheme, *carry, step, last=False)[:4]

    q, p, g = state
    g = (g,) if single else tuple(g)
    p = _kick(scheme, plan.groups[0], g, p)
    carry = (q, p, g, init_guard_flags(q, state.momentum))
    first = 0
    if isinstance(num_steps, int) and num_steps >= 2:
        # the first step also outside the loop: the loop then starts from fresh buffers
        # and XLA need not copy the start point (kept for a rejection) into its carry
        carry, first = body(0, carry), 1
    carry = jax.lax.fori_loop(first, num_steps - 1, body, carry)
    q, p, g, flags, value = _one_step(scheme, *carry, num_steps - 1, last=True)
    return IntegratorState(q, p, g[0] if single else g), flags, value


def integrate(
    integrator: str,
    grad_fn: Callable[[PyTree], PyTree] | None,
    velocity_fn: Callable[[PyTree], PyTree],
    state: IntegratorState,
    step_size: Array,
    num_steps: Array | int,
    guard: bool = True,
    split: Split | None = None,
    drift_fn: Callable | None = None,
) -> tuple[IntegratorState, GuardFlags]:
    """Run ``num_steps >= 1`` steps (static int or traced) from ``state``.

    With ``guard=True`` each fresh gradient is checked and the first failing position
    (and the momentum there, before the failing kick) is kept in the flags. With a
    ``split`` the step is nested over its levels (``grad_fn`` is then unused) and
    ``state.potential_energy_grad`` is the tuple of the levels' gradients.
    """
    if split is None:
        plan, grads = schedule(integrator), (grad_fn,)
    else:
        plan = schedule(integrator, tuple(split.steps), split.integrators)
        grads = tuple(jax.grad(fn) for fn in split.energies)
    with_none = tuple((lambda f: (lambda q: (None, f(q))))(f) for f in grads)
    end, flags, _ = _trajectory(plan, grads, with_none, velocity_fn, state, step_size, num_steps, guard,
                                split is not None, drift_fn)
    return end, flags


def integrate_to_energy(
    integrator: str,
    potential_fn: Callable[[PyTree], Array],
    velocity_fn: Callable[[PyTree], PyTree],
    state: IntegratorState,
    step_size: Array,
    num_steps: Array | int,
    guard: bool = True,
    split: Split | None = None,
    drift_fn: Callable | None = None,
) -> tuple[IntegratorState, GuardFlags, Array]:
    """:func:`integrate`, plus the potential energy at the end point, computed with the
    last gradient (one ``value_and_grad`` in place of a ``grad``). With a ``split`` the
    energy is :meth:`Split.energy` (``potential_fn`` is then unused)."""
    if split is None:
        plan, energies = schedule(integrator), (potential_fn,)
    else:
        plan, energies = schedule(integrator, tuple(split.steps), split.integrators), tuple(split.energies)
    return _trajectory(plan, tuple(jax.grad(f) for f in energies), tuple(jax.value_and_grad(f) for f in energies),
                       velocity_fn, state, step_size, num_steps, guard, split is not None, drift_fn)
