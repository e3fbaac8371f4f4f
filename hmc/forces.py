"""Force monitoring for nested timescales: the size of each term's and each level's force
at the chains' states, and the step counts that balance ``eps_level * |F|`` across levels.

Lattice practice tunes a nested integrator so that every level contributes alike to the
energy error, whose leading part on level ``l`` grows with ``(eps_l * |F_l|)^2``:
``eps_l = eps / (steps_0 * ... * steps_l)`` is the level's own step. :func:`chunk_forces`
measures ``|F|`` at the end of every chunk (one gradient per term and chain); the run logs
it in ``log.jsonl`` and ``hmc summary`` suggests step counts from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hmc.potential import Potential, cached_program


def _program(potential: Potential, levels: tuple) -> Any:
    def one(position: Any, fields: Any) -> dict:
        extend = (lambda q: q) if fields is None else (lambda q: {**q, **fields})
        # with group leaves, the algebra force (the Lie derivative), not the matrix gradient
        grads = {name: ravel_pytree(jax.grad(lambda q, f=fn: f(extend(potential.lifted(q))))(position))[0]
                 for name, fn in potential.terms.items()}
        out = {}
        for name, g in grads.items():
            out["term:" + name] = jnp.stack([jnp.sqrt(jnp.mean(jnp.abs(g) ** 2)), jnp.max(jnp.abs(g))])
        for i, (names, _) in enumerate(levels):
            g = sum(grads[n] for n in names)
            out[f"level:{i}"] = jnp.stack([jnp.sqrt(jnp.mean(jnp.abs(g) ** 2)), jnp.max(jnp.abs(g))])
        return out

    return jax.jit(jax.vmap(one))


def chunk_forces(potential: Potential, timescales: Sequence, states: Any, step_size: float) -> dict:
    """``{"terms": {name: {rms, max}}, "levels": [{terms, steps, step, rms, max, eps_rms,
    eps_max}]}`` at ``states`` (all chains): ``rms`` is the root mean square of the force's
    components averaged over chains, ``max`` the largest component over chains, ``step``
    the level's own step ``eps / (steps_0 ... steps_l)``."""
    levels = tuple((tuple(level[0]), int(level[1])) for level in timescales)
    run = cached_program(potential, ("forces", levels), lambda: _program(potential, levels))
    values = {k: np.asarray(v, np.float64) for k, v in run(states.position, getattr(states, "auxiliary", None)).items()}
    terms = {k[5:]: {"rms": float(v[:, 0].mean()), "max": float(v[:, 1].max())}
             for k, v in values.items() if k.startswith("term:")}
    out_levels = []
    substeps = 1
    for i, (names, steps) in enumerate(levels):
        substeps *= steps
        v = values[f"level:{i}"]
        eps = float(step_size) / substeps
        rms, big = float(v[:, 0].mean()), float(v[:, 1].max())
        out_levels.append(dict(terms=list(names), steps=steps, step=eps, rms=rms, max=big,
                               eps_rms=eps * rms, eps_max=eps * big))
    return {"terms": terms, "levels": out_levels}


def suggest_steps(levels: Sequence[Mapping[str, Any]]) -> list[int]:
    """Step counts per level that bring every level's ``eps_l * max|F_l|`` to the
    outermost level's (the outer step and its sub-steps unchanged): level ``l`` gets
    ``ceil(steps_0 ... steps_l * |F_l| / |F_0| / (steps_0 ... steps_{l-1}))``, at least 1."""
    if not levels:
        return []
    f0 = max(float(levels[0]["max"]), 1e-300)
    total0 = int(levels[0]["steps"])
    suggested = [total0]
    product = total0
    for level in levels[1:]:
        want = total0 * float(level["max"]) / f0  # the level's sub-steps per outer step for equal eps * |F|
        steps = max(1, math.ceil(want / product - 1e-9))
        suggested.append(steps)
        product *= steps
    return suggested


__all__ = ["chunk_forces", "suggest_steps"]
