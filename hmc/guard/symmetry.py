"""Symmetry preflight: every term must be invariant under the potential's declared
symmetries (:attr:`hmc.Potential.symmetries`), checked at random transforms of the
initial state before the first step.

A lattice action is gauge invariant by construction; a missing dagger, a link taken in
the wrong orientation or a staple in the wrong direction breaks that, and the action then
changes under a random gauge transformation by O(1), far above rounding. Nothing else
catches these bugs before a run: the force is still the exact gradient of the (wrong)
action, so the integrator, the reversibility check and the acceptance all look healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc.guard.events import GuardEvent

#: transforms tried per symmetry
TRIALS = 3
#: relative change (against the larger of |E| and the number of state elements) that
#: rounding explains, per working precision
TOLERANCE = {4: 1e-4, 8: 1e-10}


def _relative(before: float, after: float, scale: float) -> float:
    return abs(after - before) / max(abs(before), scale, 1.0)


def _tolerance(position: Any) -> tuple[float, float]:
    """``(rounding tolerance, number of state elements)`` at the state's precision."""
    leaves = jax.tree_util.tree_leaves(position)
    size = float(sum(np.size(x) for x in leaves))
    width = max(jnp.finfo(jnp.real(jnp.zeros((), jnp.asarray(x).dtype)).dtype).bits // 8 for x in leaves)
    return TOLERANCE.get(width, 1e-4), size


def extended(potential: Any, position: Any, seed: int = 0) -> Any:
    """``position`` with its auxiliary fields drawn by their heat bath at ``position`` (a
    fixed key): what a symmetry transform and a property check see."""
    if not potential.auxiliary:
        return position
    return {**position, **jax.jit(potential.refresh)(jax.random.key(seed), position)}


def symmetry_events(potential: Any, position: Any, chain: int = 0, seed: int = 0) -> list[GuardEvent]:
    """One ``symmetry_broken`` event per term and symmetry whose energy at a random transform
    of ``position`` differs from its energy at ``position`` beyond rounding. With auxiliary
    fields, ``position`` is extended by them (:func:`extended`) and the transform moves them."""
    if not potential.symmetries:
        return []
    position = extended(potential, position, seed)
    tolerance, size = _tolerance(position)
    terms = potential.state_terms()
    energies = jax.jit(lambda q: {name: fn(q) for name, fn in terms.items()})
    before = {k: float(v) for k, v in energies(position).items()}
    events = []
    for s, (name, transform) in enumerate(potential.symmetries.items()):
        worst: dict[str, tuple[float, float]] = {}
        for trial in range(TRIALS):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), s), trial)
            after = {k: float(v) for k, v in energies(jax.jit(transform)(key, position)).items()}
            for term, value in after.items():
                change = _relative(before[term], value, size * tolerance)
                if change > worst.get(term, (0.0, 0.0))[0]:
                    worst[term] = (change, value - before[term])
        for term, (change, delta) in worst.items():
            if change > tolerance:
                events.append(_event(term, name, before[term], delta, change, tolerance, chain))
    return events


def _event(term: str, symmetry: str, energy: float, delta: float, change: float, tolerance: float,
           chain: int) -> GuardEvent:
    return GuardEvent(
        kind="symmetry_broken", phase="preflight", term=term, chain=chain, action="refused",
        message=(f"term {term!r} is not invariant under symmetry {symmetry!r}: its energy {energy:.6g} changes by "
                 f"{delta:.3g} at a random transform (relative {change:.2g}, rounding explains {tolerance:.0e}); "
                 "look for a missing dagger, a link in the wrong orientation or a staple in the wrong direction"))


def property_events(potential: Any, position: Any, chain: int = 0, seed: int = 0) -> list[GuardEvent]:
    """One ``property_broken`` event per declared property and term whose violation at
    ``position`` (extended by its auxiliary fields) exceeds rounding."""
    if not potential.properties:
        return []
    position = extended(potential, position, seed)
    tolerance, _ = _tolerance(position)
    events = []
    for p, (name, check_fn) in enumerate(potential.properties.items()):
        key = jax.random.fold_in(jax.random.key(seed + 1), p)
        violations = jax.jit(check_fn)(key, position)
        for term, value in violations.items():
            value = float(value)
            if not value <= tolerance:
                events.append(GuardEvent(
                    kind="property_broken", phase="preflight", term=term, chain=chain, action="refused",
                    message=(f"term {term!r} breaks its declared property {name!r}: relative violation {value:.3g} "
                             f"on a random field (rounding explains {tolerance:.0e}); for gamma5_hermiticity look "
                             "for a missing dagger or a wrong sign in the hopping term")))
    return events


def check(potential: Any, positions: Any, chains: Sequence[int], findings: Any) -> None:
    """Add the symmetry and property findings on the first state of a batch to a preflight's
    findings."""
    first = jax.tree_util.tree_map(lambda x: x[0], positions)
    for event in symmetry_events(potential, first, chain=int(chains[0])):
        findings.add(event)
    for event in property_events(potential, first, chain=int(chains[0])):
        findings.add(event)
