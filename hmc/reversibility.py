"""Reversibility and order of the integrator on a model, before a production run.

Lattice practice checks the molecular dynamics of every new setup (openQCD's ``check2``,
HiRep's ``check_update``): integrate a trajectory, flip the momentum, integrate back, and
compare with the start. HMC is exact only if the integrator is reversible and volume
preserving; a force that is not the gradient of the action, a drift that does not stay on
the group, a non-deterministic reduction or too little precision all show up here, at
rounding level or far above it. The energy violation of the forward trajectory against
the step size gives the integrator's order (2 for leapfrog and 2MN, 4 for Yoshida and the
force-gradient scheme), which a broken force or a wrong shift spoils.

    report = hmc.check_reversibility(potential, seed=0, precision="float64")
    report["max_abs_dq"], report["max_abs_dh"], report["slope"]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc import integrators as _integrators
from hmc.geometry import projected
from hmc.initial import initial_positions
from hmc.kernels.base import Trajectory
from hmc.potential import Potential, cast_tree
from hmc.settings import working_dtype


def _trajectory(potential: Potential, integrator: str, metric: Any, position: Any, momentum: Any,
                step_size: jax.Array, num_steps: jax.Array,
                split: _integrators.Split | None = None) -> tuple[Any, Any, Any]:
    """``(end position, end momentum, H_end - H_start)`` of one trajectory of one chain
    (nested over the levels of ``split``, as the sampler integrates with ``timescales``)."""
    if split is None:
        energy, grad = jax.value_and_grad(potential.energy)(position)
    else:
        energy, grad = split.value_and_grads(position)
    start = _integrators.IntegratorState(position, momentum, grad)
    end, _, energy_end = _integrators.integrate_to_energy(
        integrator, potential.energy, metric.velocity, start, step_size.astype(energy.dtype), num_steps,
        guard=False, split=split, drift_fn=metric.drift)
    dh = energy_end + metric.kinetic_energy(end.momentum) - energy - metric.kinetic_energy(momentum)
    return end.position, end.momentum, dh


def _one_chain(potential: Potential, integrator: str, split: _integrators.Split | None = None) -> Any:
    """``(keys, positions, step_size, num_steps) -> per-chain record``, one program for every
    step size (the number of steps is a traced loop bound)."""

    def run(key: jax.Array, position: Any, step_size: jax.Array, num_steps: jax.Array) -> dict:
        metric = _integrators.metric_for(potential, None, position)
        momentum = metric.sample_momentum(key, position)
        q1, p1, dh_forward = _trajectory(potential, integrator, metric, position, momentum, step_size, num_steps,
                                         split)
        back = jax.tree_util.tree_map(jnp.negative, p1)
        q2, p2, dh_back = _trajectory(potential, integrator, metric, q1, back, step_size, num_steps, split)
        dq = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(jax.tree_util.tree_leaves(q2),
                                                                          jax.tree_util.tree_leaves(position))]))
        dp = jnp.max(jnp.stack([jnp.max(jnp.abs(a + b)) for a, b in zip(jax.tree_util.tree_leaves(p2),
                                                                         jax.tree_util.tree_leaves(momentum))]))
        defect = jnp.zeros((), jnp.abs(dh_forward).dtype)
        for name, group in (potential.groups or {}).items():  # the forward end's distance from the group
            defect = jnp.maximum(defect, jnp.max(jnp.stack(group.defect(q1[name]))).astype(defect.dtype))
        return {"dq": dq, "dp": dp, "dh": jnp.abs(dh_forward + dh_back), "dh_forward": jnp.abs(dh_forward),
                "defect": defect}

    return jax.jit(jax.vmap(run, in_axes=(0, 0, None, None)))


def _slope(step_sizes: list[float], mean_dh: list[float]) -> float:
    good = [(np.log(e), np.log(d)) for e, d in zip(step_sizes, mean_dh) if d > 0 and np.isfinite(d)]
    if len(good) < 2:
        return float("nan")
    x, y = np.array(good).T
    return float(np.polyfit(x, y, 1)[0])


def check_reversibility(potential: Potential, *, seed: int = 0, precision: str | None = "float64",
                        integrator: str = "minimum_norm", step_size: float = 0.1, num_steps: int = 10,
                        num_chains: int = 4, refinements: int = 3, timescales: Any = None) -> dict[str, Any]:
    """Integrate forward, flip the momentum, integrate back, from ``num_chains`` initial
    states of ``potential`` (drawn by its ``init`` with ``seed``, as :func:`hmc.sample` draws
    them), and measure the order of the energy error.

    Returns a dict with ``max_abs_dq`` (the largest ``|q_back - q_start|`` over chains and
    elements; for a group leaf over matrix elements), ``max_abs_dp`` (the same for the
    momentum, flipped back), ``max_abs_dh`` (the largest ``|H_back - H_start|``), the
    per-chain ``dq`` and ``dh``, ``max_group_defect`` (the largest ``|U^dag U - 1|`` or
    ``|det U - 1|`` at the forward end, 0 without group leaves), ``energy_violation`` (mean ``|dH|`` of the forward
    trajectory), and ``slope``: the fitted slope of ``log <|dH|>`` against ``log eps`` over
    ``refinements + 1`` step sizes ``step_size / 2^k`` at the fixed length
    ``step_size * num_steps``, with ``expected_order`` (2 or 4) and the table
    (``step_sizes``, ``mean_abs_dh``). ``timescales``: the nested levels the sampler takes
    (:func:`hmc.sample`'s argument; the steps of every level refine together, and the
    expected order is the lowest of the levels' integrators).
    """
    if num_steps < 1 or refinements < 0 or step_size <= 0:
        raise ValueError("check_reversibility needs num_steps >= 1, step_size > 0 and refinements >= 0")
    _integrators.coefficients(integrator)  # a clear error for an unknown name
    dtype = working_dtype(precision, None) if precision is not None else None
    positions = initial_positions(potential, seed, num_chains)
    if dtype is None:
        dtype = working_dtype(None, positions)
    positions = jax.jit(lambda q: projected(potential.groups, q))(cast_tree(positions, dtype))
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 0x5EED), num_chains)
    sizes, means, first = [], [], None
    trajectory = Trajectory(integrator=integrator, num_steps=num_steps, timescales=timescales)
    program = _one_chain(potential, integrator, trajectory.split(potential))
    for k in range(refinements + 1):
        eps, steps = step_size / 2 ** k, num_steps * 2 ** k
        out = {name: np.asarray(v, np.float64) for name, v in
               program(keys, positions, jnp.asarray(eps, dtype), jnp.asarray(steps, jnp.int32)).items()}
        first = out if first is None else first
        sizes.append(eps)
        means.append(float(np.mean(out["dh_forward"])))
    return {
        "max_abs_dq": float(np.max(first["dq"])), "max_abs_dp": float(np.max(first["dp"])),
        "max_abs_dh": float(np.max(first["dh"])), "max_group_defect": float(np.max(first["defect"])), "dq": first["dq"].tolist(), "dh": first["dh"].tolist(),
        "energy_violation": means[0], "slope": _slope(sizes, means),
        "expected_order": min(_integrators.ORDER[name]
                              for name in trajectory.level_integrators or (integrator,)),
        "step_sizes": sizes, "mean_abs_dh": means, "integrator": integrator, "num_steps": num_steps,
        "precision": str(np.dtype(dtype)),
        "timescales": None if not timescales else [dict(level._asdict()) for level in trajectory.timescales],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as lines a terminal shows."""
    nested = report.get("timescales")
    levels = "" if not nested else ", nested " + " / ".join(
        f"{'+'.join(level['terms'])} x {level['steps']}" for level in nested)
    lines = [f"reversibility ({report['integrator']}{levels}, {report['num_steps']} steps of "
             f"{report['step_sizes'][0]:g}, "
             f"{report['precision']}): max |dq| = {report['max_abs_dq']:.3e}, max |dp| = {report['max_abs_dp']:.3e}, "
             f"max |dH| = {report['max_abs_dh']:.3e}",
             f"energy violation <|dH|> against the step size (fixed length): slope {report['slope']:.2f} "
             f"(expected {report['expected_order']})"]
    for eps, dh in zip(report["step_sizes"], report["mean_abs_dh"]):
        lines.append(f"  eps {eps:<10.4g} <|dH|> {dh:.3e}")
    return "\n".join(lines)
