"""The gradient guard: events and host-side attribution of broken gradients.

The in-loop tier lives in the integrator (a per-chain finite flag carried
through every gradient evaluation, :class:`hmc.integrators.GuardFlags`); this
module turns what it records into :class:`GuardEvent` records that name the
term, the state leaf and the elements where the gradient went non-finite.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc.potential import Potential, leaf_names

logger = logging.getLogger("hmc.guard")

PyTree = Any

EVENT_KINDS = (
    "disconnected",
    "orphan_leaf",
    "nonfinite_gradient",
    "nonfinite_energy",
    "partially_detached",
)
PHASES = ("preflight", "warmup", "sampling")
POLICIES = ("reject", "halt", "off")
MAX_INDICES = 8


@dataclasses.dataclass
class GuardEvent:
    """One finding of the guard (one line of ``guard.jsonl``)."""

    kind: str
    phase: str
    message: str
    term: str | None = None
    leaf: str | None = None
    indices: list[list[int]] | None = None
    primitive: str | None = None
    source: str | None = None
    chain: int | None = None
    draw: int | None = None
    leapfrog_step: int | None = None
    action: str = "reported"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def __str__(self) -> str:
        where = []
        if self.chain is not None:
            where.append(f"chain {self.chain}")
        if self.draw is not None:
            where.append(f"draw {self.draw}")
        if self.leapfrog_step is not None:
            where.append(f"leapfrog step {self.leapfrog_step}")
        head = f"[guard:{self.phase}] {self.kind}"
        if self.term is not None:
            head += f" in term {self.term!r}"
        if self.leaf is not None:
            head += f", leaf {self.leaf!r}"
        if self.indices:
            head += f" at {self.indices[:3]}{'...' if len(self.indices) > 3 else ''}"
        if self.primitive is not None:
            head += f" by {self.primitive!r}"
        if self.source is not None:
            head += f" ({self.source})"
        if where:
            head += f" [{', '.join(where)}]"
        return f"{head}: {self.message} -> {self.action}"


def log_event(event: GuardEvent) -> None:
    level = logging.INFO if event.action == "allowed" else logging.WARNING
    logger.log(level, "%s", event)


def _nonfinite_indices(x: np.ndarray) -> list[list[int]]:
    bad = np.argwhere(~np.isfinite(np.asarray(x)))
    return [list(map(int, idx)) for idx in bad[:MAX_INDICES]]


def term_report(potential: Potential, position: PyTree) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Each term's energy and gradient leaves at ``position`` (host arrays)."""
    report = {}
    for name, fn in potential.terms.items():
        value, grad = jax.value_and_grad(fn)(position)
        report[name] = (np.asarray(value), [np.asarray(g) for g in jax.tree_util.tree_leaves(grad)])
    return report


def attribute(
    potential: Potential,
    position: PyTree,
    *,
    phase: str,
    chain: int | None = None,
    draw: int | None = None,
    leapfrog_step: int | None = None,
    action: str = "rejected",
) -> list[GuardEvent]:
    """Name the terms whose energy or gradient is non-finite at ``position``.

    Returns one event per (term, leaf) with a non-finite gradient and one per
    term with a non-finite energy. If the position itself is not finite no term
    is blamed (every term would be); one event says so.
    """
    names = leaf_names(position)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(position)]
    context = dict(phase=phase, chain=chain, draw=draw, leapfrog_step=leapfrog_step, action=action)
    for leaf, values in zip(names, leaves):
        if not np.all(np.isfinite(values)):
            return [
                GuardEvent(
                    kind="nonfinite_energy",
                    leaf=leaf,
                    indices=_nonfinite_indices(values),
                    message="the state itself is not finite; no term is blamed",
                    **context,
                )
            ]
    events = []
    for term, (value, grads) in term_report(potential, position).items():
        if not np.isfinite(value):
            events.append(
                GuardEvent(
                    kind="nonfinite_energy",
                    term=term,
                    message=f"energy of term {term!r} is {float(value)}",
                    **context,
                )
            )
        for leaf, g in zip(names, grads):
            if not np.all(np.isfinite(g)):
                n_bad = int(np.sum(~np.isfinite(g)))
                events.append(
                    GuardEvent(
                        kind="nonfinite_gradient",
                        term=term,
                        leaf=leaf,
                        indices=_nonfinite_indices(g),
                        message=f"{n_bad} non-finite gradient element(s) of leaf {leaf!r} from term {term!r}",
                        **context,
                    )
                )
    if not events:
        events.append(
            GuardEvent(
                kind="nonfinite_gradient",
                message="no single term is non-finite here: the sum of finite terms overflowed",
                **context,
            )
        )
    return events


def check_initial_states(potential: Potential, positions: PyTree, chains: Sequence[int]) -> list[GuardEvent]:
    """Energy and gradient finite, per term, at each chain's initial state."""
    events = []
    batched = jax.jit(jax.vmap(lambda q: {n: jax.value_and_grad(f)(q) for n, f in potential.terms.items()}))(
        positions
    )
    for term, (values, grads) in batched.items():
        values = np.asarray(values)
        grad_leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
        bad = ~np.isfinite(values)
        for g in grad_leaves:
            bad |= ~np.all(np.isfinite(g.reshape(g.shape[0], -1)), axis=1)
        for c in np.flatnonzero(bad):
            position = jax.tree_util.tree_map(lambda x: x[c], positions)
            for event in attribute(potential, position, phase="preflight", chain=int(chains[c]), action="refused"):
                if event.term in (None, term) and event not in events:
                    events.append(event)
    return events
