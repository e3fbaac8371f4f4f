"""The guard on the host, between chunks: attribute located trips, probe element
reach on a few chains, and apply the policy (reject and go on, or halt)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from hmc.checkpoint import Counters
from hmc.devices import host
from hmc.geometry import defect_tolerance
from hmc.guard.attribution import attribute
from hmc.guard.events import GuardEvent, log_event
from hmc.guard.reach import check_element_reach
from hmc.guard.replay import SLOTS, Trips
from hmc.potential import Potential

PyTree = Any


class Monitor:
    """The guard's host side for one run; its findings go to ``events`` (and the log),
    its counters to ``counters`` (checkpointed)."""

    def __init__(self, potential: Potential, settings: Any, names: Sequence[str], counters: Counters,
                 events: list[GuardEvent], masks_at: Callable[[PyTree], list]):
        self.potential, self.settings, self.names = potential, settings, list(names)
        self.counters, self.events, self.masks_at = counters, events, masks_at
        self.probe_seen = {(leaf, tuple(map(tuple, idx))) for leaf, idx in counters.probe_seen}
        timescales = getattr(settings.kernel, "timescales", None) or ()
        self.off_group_seen: set[str] = set()
        self.level_of = {term: level for level, (terms, *_) in enumerate(timescales) for term in terms}

    def add(self, event: GuardEvent) -> None:
        self.events.append(event)
        log_event(event)

    def after_chunk(self, phase: str, trips: Trips, new_trips: int, positions: PyTree, draw: int) -> None:
        """Attribute this chunk's located trips and probe a few chains' states."""
        if not self.settings.guard_on:
            return
        t0 = time.perf_counter()
        if new_trips:
            self.attribute_trips(trips, phase)
        self.probe(phase, draw, positions)
        self.off_group(phase, draw, positions)
        self.counters.guard_seconds += time.perf_counter() - t0

    @property
    def action(self) -> str:
        return "halted" if self.settings.guard == "halt" else "rejected"

    def attribute_trips(self, trips: Trips, phase: str) -> None:
        """The located trips of a chunk (a few, deduplicated by term and primitive)."""
        trips = host(trips)
        count = int(trips.count)
        seen: set[tuple] = set()
        for k in range(min(count, SLOTS)):
            position = jax.tree_util.tree_map(lambda x: x[k], trips.positions)
            draw = int(trips.iterations[k]) - (self.settings.num_warmup if phase == "sampling" else 0)
            for event in attribute(self.potential, position, phase=phase, chain=int(trips.chains[k]), draw=draw,
                                   leapfrog_step=int(trips.steps[k]), action=self.action):
                if event.term in self.level_of:
                    event.level = self.level_of[event.term]
                if int(trips.replicas[k]) >= 0:
                    event.replica = int(trips.replicas[k])
                key = (event.kind, event.term, event.leaf, event.primitive, event.replica)
                if key not in seen:
                    seen.add(key)
                    self.add(event)
        if count == 0:
            self.add(GuardEvent(
                kind="nonfinite_gradient", phase=phase, action=self.action,
                message="trajectories produced non-finite gradients that were not located (more chains "
                "tripped in one iteration than are replayed at once, or the replay did not reproduce them)",
            ))

    def probe(self, phase: str, draw: int, positions: PyTree) -> None:
        """Element-level reach of the current states of a few chains, in rotation: every
        chain through the guard's compiled checks (about two gradients per chain against
        the chunk's thousands), the picked ones reported."""
        n = self.settings.num_chains
        k = min(self.settings.probe_chains, n)
        if k <= 0:
            return
        picked = (np.arange(k) + self.counters.chunk_index * k) % n
        self.counters.chunk_index += 1
        masks = [np.asarray(m)[picked] for m in self.masks_at(positions)]
        for event in check_element_reach(masks, self.names, picked, phase=phase, action="reported", draw=draw):
            key = (event.leaf, tuple(map(tuple, event.indices or [])))
            if key not in self.probe_seen:
                self.probe_seen.add(key)
                self.add(event)
        self.counters.probe_seen = [[leaf, [list(i) for i in idx]] for leaf, idx in sorted(self.probe_seen)]

    def off_group(self, phase: str, draw: int, positions: PyTree) -> None:
        """An ``off_group`` event for each group leaf whose chains left the group beyond
        the precision's tolerance (the first time per leaf): a broken exponential or
        projection, or links that were never on the group."""
        groups = getattr(self.potential, "groups", None) or {}
        for name, group in groups.items():
            if name in self.off_group_seen:
                continue
            links = positions[name]
            per_chain = np.asarray(jax.vmap(lambda u, g=group: jax.numpy.max(jax.numpy.stack(g.defect(u))))(links))
            tolerance = defect_tolerance(links.dtype)
            if not np.any(~(per_chain <= tolerance)):  # NaN is off the group too
                continue
            chain = int(np.nanargmax(np.where(np.isnan(per_chain), np.inf, per_chain)))
            self.off_group_seen.add(name)
            self.add(GuardEvent(
                kind="off_group", phase=phase, leaf=name, chain=chain, draw=draw, action="reported",
                message=(f"leaf {name!r} left {group.name}: max |U^dag U - 1| or |det U - 1| is {per_chain[chain]:.3g} "
                         f"in chain {chain} at the end of this chunk, beyond the {tolerance:.0e} that rounding "
                         "explains; the exponential or the projection is broken, or the links were never on the group")))

    def verdict(self, phase: str, new_trips: int, chunk_trajectories: int) -> str | None:
        """Why the run must halt after this chunk, or ``None``."""
        s, c = self.settings, self.counters
        if not s.guard_on or new_trips == 0:
            return None
        if s.guard == "halt":
            return "guard policy 'halt': a trajectory tripped the gradient guard"
        if phase == "warmup":
            if new_trips > chunk_trajectories / 2:
                return (f"{new_trips} of the {chunk_trajectories} trajectories of a warmup chunk tripped the "
                        "gradient guard: the sampler is stuck, not searching")
            return None
        fraction = c.judged_trips / max(c.judged_trajectories, 1)
        if fraction > s.max_trip_fraction:
            return (f"{c.judged_trips} of {c.judged_trajectories} sampling trajectories ({fraction:.2%}) tripped "
                    f"the gradient guard, more than guard.max_trip_fraction={s.max_trip_fraction}")
        return None


__all__ = ["Monitor"]
