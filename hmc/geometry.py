"""Group-valued leaves in the sampler: the force on a group, momenta in its algebra, the
exponential drift.

A leaf declared in :attr:`hmc.Potential.groups` holds matrices ``U`` of a group (shape
``(..., N, N)``, complex). Its momentum ``P`` is an element of the Lie algebra (traceless
anti-Hermitian), ``P = sum_a p_a T_a`` with ``tr(T_a T_b) = -delta_ab / 2``; the kinetic
energy is ``K = sum_a p_a^2 / 2 = -tr P^2`` per matrix, so ``p_a ~ N(0, 1)`` (openQCD's
convention; see :mod:`hmc.groups` for Grid's). Hamilton's equations on the group are

    dU/dt = P U,        dp_a/dt = -F_a,   F_a = d/dt S(exp(t T_a) U) at t = 0,

the drift ``U <- exp(eps P) U`` and the kick ``P <- P - eps F`` with ``F = sum_a F_a T_a``.

The force comes from autodiff: with ``G`` JAX's gradient of the action with respect to the
matrix entries (``dS = Re sum_ij G_ij dU_ij``), ``F_a = Re tr(U G^T T_a)`` and so
``F = -(1/2) Pi(U G^T)``, ``Pi`` the projection on the algebra. :func:`lift` is the identity
on the values and applies that map to the cotangent, so ``jax.grad`` of an action written as
a plain function of ``q["U"]`` *is* the algebra force: every kernel, integrator and guard
check that calls ``jax.grad`` gets it without knowing about groups.

Links are projected back on the group after every drift (:meth:`hmc.groups.Group.reunitarize`:
Gram-Schmidt with the determinant fixed for SU(3), the quaternion form for SU(2), polar for SU(N)):
the closed-form exponentials keep ``U^dag U = 1`` to rounding, and the projection stops the
rounding from accumulating over a run (in float32 it otherwise drifts by about 1e-7 per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from hmc import rng as _rng
from hmc.groups import matmul

PyTree = Any


def _transpose(m: Array) -> Array:
    return jnp.swapaxes(m, -1, -2)


def force(group: Any, u: Array, cotangent: Array) -> Array:
    """The algebra force ``F = -(1/2) Pi(U G^T)`` from JAX's gradient ``G`` at ``U``:
    ``F_a = d/dt S(exp(t T_a) U)`` at 0 in the basis ``tr(T_a T_b) = -delta_ab / 2``."""
    return -0.5 * group.algebra(matmul(u, _transpose(cotangent)))


def _lift_for(group: Any) -> Any:
    @jax.custom_vjp
    def lift(u: Array) -> Array:
        return u

    def forward(u: Array) -> tuple[Array, Array]:
        return u, u

    def backward(u: Array, cotangent: Array) -> tuple[Array]:
        return (force(group, u, cotangent),)

    lift.defvjp(forward, backward)
    return lift


_LIFTS: dict[Any, Any] = {}


def lift(group: Any, u: Array) -> Array:
    """``u`` itself; its gradient is the algebra force (see the module docstring)."""
    if group not in _LIFTS:
        _LIFTS[group] = _lift_for(group)
    return _LIFTS[group](u)


def lifted(groups: Mapping[str, Any], position: PyTree) -> PyTree:
    """``position`` with each group leaf passed through :func:`lift`."""
    if not groups:
        return position
    return {**position, **{name: lift(group, position[name]) for name, group in groups.items()}}


#: the largest distance from the group (``max |U^dag U - 1|`` or ``|det U - 1|``) that
#: rounding explains, by the bytes of the working real dtype; beyond it a state is off the group
DEFECT_TOLERANCE = {4: 1e-5, 8: 1e-12}


def defect_tolerance(dtype: Any) -> float:
    """:data:`DEFECT_TOLERANCE` for a real or complex dtype."""
    real = jnp.real(jnp.zeros((), dtype)).dtype
    return DEFECT_TOLERANCE.get(jnp.dtype(real).itemsize, 1e-5)


def state_defect(groups: Mapping[str, Any], position: PyTree) -> Array:
    """The largest distance from its group over the group leaves of one state (a real scalar)."""
    values = [jnp.max(jnp.stack(group.defect(position[name]))) for name, group in groups.items()]
    return jnp.max(jnp.stack(values))


def projected(groups: Mapping[str, Any], position: PyTree) -> PyTree:
    """``position`` with each group leaf projected on its group (at the leaf's precision):
    initial states drawn in single precision and cast to double are unitary to 1e-7 only."""
    if not groups:
        return position
    return {**position, **{name: group.project(position[name]) for name, group in groups.items()}}


def check_state(groups: Mapping[str, Any], position: PyTree) -> None:
    """A clear error when the state does not hold the declared group leaves."""
    if not groups:
        return
    if not isinstance(position, Mapping):
        raise TypeError(f"a Potential with groups {list(groups)} needs a dict state, got {type(position).__name__}")
    for name, group in groups.items():
        if name not in position:
            raise ValueError(f"groups names leaf {name!r}, but the state has leaves {sorted(position)}")
        leaf = position[name]
        n = group.n
        if jnp.ndim(leaf) < 2 or tuple(jnp.shape(leaf)[-2:]) != (n, n):
            raise ValueError(f"leaf {name!r} is declared {group.name}: it must have shape (..., {n}, {n}), "
                             f"got {tuple(jnp.shape(leaf))}")
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise ValueError(f"leaf {name!r} is declared {group.name}: it must be complex, got {jnp.result_type(leaf)}")
    for name, leaf in position.items():
        if name not in groups and jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise ValueError(f"leaf {name!r} is complex but not a group leaf: an ordinary leaf is real (write a "
                             "complex field, a Higgs doublet, as its real and imaginary parts on a last axis of 2)")


def group_metric(groups: Mapping[str, Any], inverse_mass_matrix: Any, position: PyTree) -> Any:
    """The :class:`hmc.integrators.Metric` of a state with group leaves: momenta in the
    algebra for those, Gaussian for the others, one scalar mass for every leaf. An adapted
    diagonal or dense mass matrix is refused by the driver; ``inverse_mass_matrix`` is
    ``None`` (unit mass) or a uniform flat vector, whose first element is the scalar (what
    tempering passes: ``1 / beta`` on every coordinate)."""
    from hmc.integrators import Metric

    if inverse_mass_matrix is not None and jnp.ndim(inverse_mass_matrix) != 1:
        raise ValueError(f"the mass on group leaves {sorted(groups)} is a scalar: use mass_matrix='identity'")
    w = None if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix)[0]
    names = sorted(position)

    def sample_momentum(rng_key: Array, like: PyTree) -> PyTree:
        keys = _rng.split(rng_key, len(names))
        out = {}
        for key, name in zip(keys, names):
            x = like[name]
            if name in groups:
                out[name] = groups[name].random_algebra(key, tuple(x.shape[:-2]), x.dtype)
            else:
                out[name] = _rng.normal(key, jnp.shape(x), jnp.asarray(x).dtype)
            if w is not None:
                out[name] = out[name] / jnp.sqrt(w).astype(out[name].real.dtype)
        return out

    def kinetic_energy(momentum: PyTree) -> Array:
        total = None
        for name in names:
            p = momentum[name]
            value = groups[name].kinetic(p) if name in groups else 0.5 * jnp.sum(p * p)
            total = value if total is None else total + value
        return total if w is None else w * total

    def velocity(momentum: PyTree) -> PyTree:
        return momentum if w is None else {name: w * p for name, p in momentum.items()}

    def drift(position: PyTree, velocity: PyTree, h: Array) -> PyTree:
        out = {}
        for name in names:
            q, v = position[name], velocity[name]
            if name in groups:
                out[name] = groups[name].reunitarize(matmul(groups[name].exp((h * v).astype(q.dtype)), q))
            else:
                out[name] = q + h * v
        return out

    return Metric(sample_momentum, kinetic_energy, velocity, drift)


def embedding(position: PyTree) -> Array:
    """A real vector of every leaf (real and imaginary parts of complex ones): where
    ``trajectory_length="auto"`` measures a trajectory's move (a group leaf embedded in
    its matrix space)."""
    parts = []
    for leaf in jax.tree_util.tree_leaves(position):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            parts += [jnp.ravel(leaf.real), jnp.ravel(leaf.imag)]
        else:
            parts.append(jnp.ravel(leaf))
    return jnp.concatenate(parts)
