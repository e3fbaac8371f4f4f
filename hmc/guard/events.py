"""Guard events: what the guard found, as one line of ``guard.jsonl`` each."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("hmc.guard")

EVENT_KINDS = (
    "disconnected",
    "orphan_leaf",
    "nonfinite_gradient",
    "nonfinite_energy",
    "partially_detached",
    "solver_not_converged",
    "symmetry_broken",
    "off_group",
    "property_broken",
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
    cause: str | None = None  # non-finite findings: "overflow", "singularity" or "domain"
    level: int | None = None  # nested timescales: the level of ``term`` (0: outermost)
    details: dict[str, Any] | None = None  # solver_not_converged: the term's health check (residual, iterations)
    replica: int | None = None  # tempering: the temperature index of the replica that tripped (0: beta = 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def __str__(self) -> str:
        where = []
        if self.chain is not None:
            where.append(f"chain {self.chain}")
        if self.replica is not None:
            where.append(f"replica {self.replica}")
        if self.draw is not None:
            where.append(f"draw {self.draw}")
        if self.leapfrog_step is not None:
            where.append(f"leapfrog step {self.leapfrog_step}")
        head = f"[guard:{self.phase}] {self.kind}"
        if self.term is not None:
            head += f" in term {self.term!r}"
            if self.level is not None:
                head += f" (timescale level {self.level})"
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


def allowed(event: GuardEvent, allow: Sequence[str]) -> bool:
    """``allow`` entries: ``kind``, ``kind:term`` or ``kind:term:leaf``."""
    for entry in allow:
        parts = entry.split(":")
        if parts[0] != event.kind:
            continue
        if len(parts) >= 2 and parts[1] not in ("*", event.term):
            continue
        if len(parts) >= 3 and parts[2] not in ("*", event.leaf):
            continue
        return True
    return False
