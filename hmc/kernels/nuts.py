"""The No-U-Turn sampler under the guard (``kernel="nuts"``).

The tree is numpyro's iterative builder (``numpyro.infer.hmc_util.build_tree``:
multinomial sampling biased to the last doubling, the generalised U-turn criterion,
divergence past ``divergence_threshold``, a maximum tree depth, Hoffman & Gelman,
JMLR 15 (2014) 1593; Betancourt, arXiv:1701.02434), driven by our integrators one
step per leaf. Each leaf's integrator step checks its gradients (the guard's per-step
flag) and the leaf carries the flag with the position where it tripped. A non-finite
gradient makes that leaf's energy non-finite, so the tree stops there and the leaf is
its outermost one in that direction: the transition's trip is read from the two
boundary leaves. A trip at a sane state (the energy there still within the divergence
threshold of the start, or NaN) is a broken gradient: the transition is rejected and
its info locates the trip (``guard_step`` is the leaf's index in the tree, 0-based).
A trip after the energy blew up is a divergence, as in Stan.

Under ``vmap`` every chain's tree loop runs until the deepest chain's tree is built;
``num_steps`` in the info is each chain's own number of leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from hmc import integrators as _integrators
from hmc import rng as _rng
from hmc.kernels.base import Kernel, Params, check_guard
from hmc.kernels.hmc import _blew_up, beyond_a_wall

PyTree = Any


class NUTSState(NamedTuple):
    """State of one chain: position and the potential energy and gradient there."""

    position: PyTree
    potential_energy: Array
    potential_energy_grad: PyTree


class NUTSInfo(NamedTuple):
    """The interface's fields (:class:`hmc.kernels.base.Info`) plus the tree's depth.

    ``acceptance_rate`` is the mean Metropolis acceptance over the tree's leaves (Stan's
    ``accept_stat__``, what step-size adaptation targets); ``num_steps`` the number of
    leaves (integrator steps); ``energy`` the Hamiltonian of the chosen leaf;
    ``delta_energy`` its difference from the start.
    """

    acceptance_rate: Array
    is_accepted: Array
    is_divergent: Array
    energy: Array
    delta_energy: Array
    num_steps: Array
    step_size: Array
    guard_tripped: Array
    guard_step: Array
    guard_position: PyTree
    tree_depth: Array
    proposal: PyTree = None
    proposal_velocity: PyTree = None


class _Mark(NamedTuple):
    """What a leaf carries besides its position: whether its step's gradients were all
    finite, and where the first one that was not was evaluated."""

    ok: Array
    position: PyTree
    momentum: PyTree


def _flat_inverse_mass(params: Params, position: PyTree) -> Array:
    """The inverse mass matrix as numpyro's U-turn test takes it (ones for the identity)."""
    if params.inverse_mass_matrix is not None:
        return jnp.asarray(params.inverse_mass_matrix)
    flat, _ = jax.flatten_util.ravel_pytree(position)
    return jnp.ones_like(flat)


def _leaf_update(spec: NUTS, potential_fn: Callable, metric: Any, checked: bool) -> Callable:
    """numpyro's ``verlet_update``: one step of our integrator from a leaf, its guard flag
    carried in the leaf's position ``(q, mark)``."""
    from numpyro.infer.hmc_util import IntegratorState as TreeLeaf

    def update(step_size: Array, _inverse_mass: Array, leaf: tuple) -> Any:
        (position, _), momentum, _, grad = leaf
        start = _integrators.IntegratorState(position, momentum, grad)
        end, flags, potential = _integrators.integrate_to_energy(
            spec.integrator, potential_fn, metric.velocity, start, step_size, 1, guard=checked, drift_fn=metric.drift)
        mark = _Mark(flags.ok, flags.position, flags.momentum)
        return TreeLeaf((end.position, mark), end.momentum, potential, end.potential_energy_grad)

    return update


def _boundary_trip(tree: Any) -> _Mark:
    """The trip of the tree, if any: a tripped leaf ends the tree, so it is a boundary leaf."""
    left, right = tree.z_left[1], tree.z_right[1]
    pick = lambda a, b: jnp.where(left.ok, b, a)  # noqa: E731
    return _Mark(left.ok & right.ok, jax.tree_util.tree_map(pick, left.position, right.position),
                 jax.tree_util.tree_map(pick, left.momentum, right.momentum))


def _transition(potential_fn: Callable[[PyTree], Array], spec: NUTS, guard: str) -> Callable:
    from numpyro.infer.hmc_util import IntegratorState as TreeLeaf
    from numpyro.infer.hmc_util import build_tree

    checked = guard != "off"

    def step(rng_key: Array, state: NUTSState, params: Params) -> tuple[NUTSState, NUTSInfo]:
        key_momentum, key_tree = _rng.split(rng_key, 2)
        dtype = state.potential_energy.dtype
        eps = jnp.asarray(params.step_size, dtype)
        metric = _integrators.metric_for(potential_fn, params.inverse_mass_matrix, state.position)
        momentum = metric.sample_momentum(key_momentum, state.position)
        mark = _Mark(jnp.asarray(True), state.position, momentum)
        leaf = TreeLeaf((state.position, mark), momentum, state.potential_energy, state.potential_energy_grad)
        tree = build_tree(_leaf_update(spec, potential_fn, metric, checked), lambda _m, p: metric.kinetic_energy(p),
                          leaf, _flat_inverse_mass(params, state.position), eps, key_tree,
                          max_delta_energy=spec.divergence_threshold, max_tree_depth=spec.max_tree_depth)
        trip = _boundary_trip(tree)
        tripped = ~trip.ok
        energy_start = state.potential_energy + metric.kinetic_energy(momentum)
        flags = _integrators.GuardFlags(trip.ok, jnp.zeros((), jnp.int32), trip.position, trip.momentum)
        blew_up = _blew_up(metric, flags, potential_fn(trip.position), energy_start, spec.divergence_threshold,
                           beyond_a_wall(potential_fn, trip.position))
        broken = tripped & ~blew_up
        proposal = NUTSState(tree.z_proposal[0], tree.z_proposal_pe, tree.z_proposal_grad)
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(broken, old, new), proposal, state)
        n_leaves = jnp.asarray(tree.num_proposals, jnp.int32)
        acceptance = tree.sum_accept_probs / jnp.maximum(n_leaves, 1)
        info = NUTSInfo(
            acceptance_rate=jnp.where(broken, 0.0, acceptance).astype(dtype),
            is_accepted=~broken,
            is_divergent=tree.diverging & ~broken,
            energy=jnp.where(broken, energy_start, tree.z_proposal_energy).astype(dtype),
            delta_energy=jnp.where(broken, jnp.inf, tree.z_proposal_energy - energy_start).astype(dtype),
            num_steps=n_leaves,
            step_size=eps,
            guard_tripped=broken,
            guard_step=jnp.where(tripped, n_leaves - 1, -1).astype(jnp.int32),
            guard_position=jax.tree_util.tree_map(lambda t, s: jnp.where(tripped, t, s), trip.position,
                                                  state.position),
            tree_depth=jnp.asarray(tree.depth, jnp.int32),
        )
        return new_state, info

    return step


@dataclasses.dataclass(frozen=True)
class NUTS:
    """The No-U-Turn sampler (``kernel="nuts"``).

    Parameters
    ----------
    integrator
        One step of it per leaf: ``"leapfrog"`` (Stan's and numpyro's), ``"minimum_norm"``,
        ``"yoshida4"`` or ``"force_gradient"``.
    max_tree_depth
        At most ``2**max_tree_depth - 1`` leaves per transition (Stan's default 10).
    divergence_threshold
        A leaf whose energy exceeds the start's by more than this is divergent and ends
        the tree (Stan's and numpyro's 1000).

    The trajectory settings of fixed-length HMC (``num_steps``, ``trajectory_length``,
    ``jitter``, ``timescales``, ``max_num_steps``) do not apply: the tree sets the length.
    """

    integrator: str = "leapfrog"
    max_tree_depth: int = 10
    divergence_threshold: float = 1000.0
    num_steps: None = None
    trajectory_length: None = None
    jitter: float = 0.0
    timescales: None = None
    max_num_steps: None = None
    name: str = dataclasses.field(default="nuts", init=False)
    locates_trips = True  # every leaf checks its gradients: the step locates its own trips

    def __post_init__(self) -> None:
        _integrators.coefficients(self.integrator)
        if self.timescales is not None:
            raise ValueError("timescales (nested integration by term) need kernel='hmc'; a NUTS leaf is one step of "
                             "one integrator")
        for key in ("num_steps", "trajectory_length", "max_num_steps"):
            if getattr(self, key) is not None:
                raise ValueError(f"{key} does not apply to kernel='nuts' (the tree sets the trajectory's length; "
                                 "max_tree_depth caps it)")
        if self.jitter:
            raise ValueError("jitter does not apply to kernel='nuts' (the tree's length varies by itself)")
        depth = self.max_tree_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 30:
            raise ValueError(f"max_tree_depth must be an integer in [1, 30], got {depth!r}")
        if not self.divergence_threshold > 0:
            raise ValueError(f"divergence_threshold must be > 0, got {self.divergence_threshold!r}")

    adaptive_length = False

    @property
    def gradients_per_step(self) -> int:
        """Gradient evaluations per leaf (``info.num_steps`` counts leaves)."""
        return _integrators.gradient_evaluations_per_step(self.integrator)

    def split(self, potential: Any, extend: Callable | None = None) -> None:
        return None

    def build(self, potential_fn: Callable[[PyTree], Array], guard: str = "step") -> Kernel:
        check_guard(guard)
        if getattr(potential_fn, "auxiliary", None):
            raise ValueError("auxiliary fields (pseudofermions) need kernel='hmc': a NUTS tree has no single "
                             "trajectory start at which to redraw them")
        if getattr(potential_fn, "groups", None):
            raise ValueError(f"group leaves {sorted(potential_fn.groups)} need kernel='hmc' or 'ghmc': the NUTS "
                             "U-turn test measures a Euclidean distance, which a group leaf does not have")

        def init(position: PyTree) -> NUTSState:
            energy, grad = jax.value_and_grad(potential_fn)(position)
            return NUTSState(position, energy, grad)

        located = _transition(potential_fn, self, "step")
        return Kernel(init=init, step=_transition(potential_fn, self, guard),
                      replay=lambda key, state, params: located(key, state, params)[1])


__all__ = ["NUTS", "NUTSInfo", "NUTSState"]
