"""The gradient guard: preflight, in-loop trip location, attribution, monitoring.

Three tiers (see the design notes): *preflight* checks, before any step, that
every term's gradient is connected and finite (:mod:`hmc.guard.preflight`,
:mod:`hmc.guard.reach`); *in the loop* a per-chain flag raised inside the
integrator marks a trajectory whose gradient went non-finite, and the driver
re-runs such a trajectory with the per-step check to locate the first failing
gradient (:mod:`hmc.guard.replay`); *attribution* names the term, leaf,
elements, primitive, source line and cause (:mod:`hmc.guard.attribution`). The
host side of a run (events, the trip-fraction policy, the chunk-boundary probe)
is :mod:`hmc.guard.monitor`. Every finding is a :class:`GuardEvent`, one line of
``guard.jsonl``.
"""

from hmc.guard.attribution import attribute, term_report, unhealthy_is_nan
from hmc.guard.events import EVENT_KINDS, MAX_INDICES, PHASES, POLICIES, GuardEvent, allowed, log_event
from hmc.guard.preflight import STATUSES, PreflightReport, checks_program, preflight, preflight_batch
from hmc.guard.reach import HIDDEN, REACHED, UNREACHABLE, check_element_reach, element_reach, reach_codes, reach_masks

__all__ = [
    "EVENT_KINDS", "HIDDEN", "MAX_INDICES", "PHASES", "POLICIES", "REACHED", "STATUSES", "UNREACHABLE",
    "GuardEvent", "PreflightReport", "allowed", "attribute", "check_element_reach", "checks_program",
    "element_reach", "log_event", "preflight", "preflight_batch", "reach_codes", "reach_masks", "term_report",
    "unhealthy_is_nan",
]
