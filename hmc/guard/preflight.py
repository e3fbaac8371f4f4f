"""Preflight: before any step, is every term's gradient connected, and are energy and
gradient finite at every chain's initial state?

One code path: the structural checks run once on one state (connectivity is a
property of the program), the state checks run in one compiled program over a
batch of states (:func:`checks_program`), which the driver's chunk-boundary
probe reuses. :func:`preflight` is the same on a batch of one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc.guard import _jaxpr
from hmc.guard.attribution import attribute
from hmc.guard import symmetry as _symmetry
from hmc.guard.events import GuardEvent, allowed
from hmc.guard.reach import check_element_reach, reach_codes, reach_masks
from hmc.potential import Potential, cached_program, leaf_names

logger = logging.getLogger("hmc.guard")

PyTree = Any

STATUSES = ("connected", "partially_detached", "cut", "unused")


@dataclasses.dataclass
class PreflightReport:
    """What preflight found for one state.

    ``status[(term, leaf)]`` is ``connected``, ``partially_detached`` (a gradient
    path exists but another path through the same leaf is cut), ``cut`` (the
    term's value depends on the leaf, its gradient does not) or ``unused``.
    ``ok`` is ``False`` when any finding was not allowed.
    """

    terms: list[str]
    leaves: list[str]
    status: dict[tuple[str, str], str]
    events: list[GuardEvent]
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(e.action == "refused" for e in self.events)

    def table(self) -> str:
        width = max([len("term \\ leaf")] + [len(t) for t in self.terms])
        cols = [max(len(leaf), max(len(self.status[(t, leaf)]) for t in self.terms)) for leaf in self.leaves]
        lines = ["term \\ leaf".ljust(width) + "  " + "  ".join(l.ljust(c) for l, c in zip(self.leaves, cols))]
        for t in self.terms:
            lines.append(t.ljust(width) + "  " + "  ".join(self.status[(t, l)].ljust(c) for l, c in zip(self.leaves, cols)))
        return "\n".join(lines)

    def __str__(self) -> str:
        head = f"preflight: {'ok' if self.ok else 'REFUSED'} ({len(self.events)} finding(s), {self.seconds:.2f} s)"
        body = [head, self.table()]
        body += [str(e) for e in self.events]
        return "\n".join(body)


def _site_text(site: _jaxpr.CutSite) -> str:
    text = repr(site.primitive)
    if site.function:
        text += f" in {site.function}()"
    if site.via:
        text += f" [via {site.via}]"
    return text


def _connectivity(fn: Any, position: PyTree) -> tuple[list[bool], list[bool], _jaxpr.Cuts, dict]:
    """(value depends on leaf, gradient reaches leaf, the cuts, continuity per tested site).

    Each piecewise-constant cut site (``round``, ``floor``, a comparison used as a
    number) is tested at ``position`` with :func:`hmc._jaxpr.continuity`: a site across
    whose jumps the term's value is continuous (a periodic wrap) is dropped.
    """
    flat, leaves = _jaxpr.as_flat_function(fn, position)
    n = len(leaves)
    primal = _jaxpr.without_dead_code(jax.make_jaxpr(flat)(*leaves))
    value_deps = _jaxpr.dependencies(primal, [frozenset({i}) for i in range(n)])[0]
    out_aval = primal.out_avals[0]

    def pullback(ct: Any) -> Any:
        return jax.vjp(flat, *leaves)[1](ct)

    vjp = jax.make_jaxpr(pullback)(jnp.ones(out_aval.shape, out_aval.dtype))
    grads = _jaxpr.dependencies(vjp, [frozenset({"ct"})])
    _, cuts = _jaxpr.locate_cuts(primal, [frozenset({i}) for i in range(n)])
    _drop_unread(primal, leaves, cuts)
    tested = _drop_wraps(primal, leaves, cuts)
    return [i in value_deps for i in range(n)], ["ct" in g for g in grads], cuts, tested


def _drop_unread(primal: Any, leaves: list[Any], cuts: _jaxpr.Cuts) -> None:
    """Drop each cut site whose value the energy does not read at this state: one inside
    the unselected side of a ``where`` (numpyro's ``Beta.log_prob`` keeps a
    ``stop_gradient`` for the boundary values 0 and 1 there), or in a ``cond`` branch not
    taken; and a ``stop_gradient`` whose operand does not move with the state here (tfp's
    ``clip_by_value_preserve_gradient`` inside its range: the value it detaches is 0). Judged at the state, as the wraps are; a site inside a loop cannot be perturbed
    and stays a cut."""
    for site, paths in list(cuts.located.items()):
        if not paths:
            continue
        try:
            read = _jaxpr.reads_at(primal, leaves, paths)
        except Exception as err:  # cannot evaluate the perturbation: keep the cut
            logger.debug("whether %s is read at this state was not tested: %s", site, err)
            continue
        if not read:
            logger.debug("%s is not read at this state (an unselected branch): not a cut here", site)
            cuts.drop(site, "unselected")
        elif site.primitive == "stop_gradient" and not _operand_moves(primal, leaves, paths, site):
            logger.debug("%s detaches a value that does not move at this state: not a cut here", site)
            cuts.drop(site, "unselected")


def _operand_moves(primal: Any, leaves: list[Any], paths: list, site: Any) -> bool:
    try:
        return _jaxpr.operand_moves_at(primal, leaves, paths)
    except Exception as err:  # cannot evaluate: keep the cut
        logger.debug("whether the operand of %s moves was not tested: %s", site, err)
        return True


def _drop_wraps(primal: Any, leaves: list[Any], cuts: _jaxpr.Cuts) -> dict:
    """Test each piecewise-constant site for a jump of the energy; drop the wraps."""
    tested: dict[_jaxpr.CutSite, _jaxpr.Continuity] = {}
    for site, paths in list(cuts.jumps.items()):
        if paths is None:
            continue
        try:
            seen = _jaxpr.continuity(primal, leaves, paths)
        except Exception as err:  # cannot evaluate the watch: keep the cut
            logger.debug("continuity of %s not tested: %s", site, err)
            continue
        tested[site] = seen
        if seen.continuous:
            logger.debug("%s is a wrap: the energy is continuous across its jumps (%s)", site, seen)
            cuts.drop(site)
    return tested


def _jump_text(seen: _jaxpr.Continuity | None) -> str:
    if seen is None:
        return ""
    if seen.continuous is None:
        return "; no jump of it was reached from this state to test whether the energy is continuous there"
    return f"; the energy jumps by {seen.largest:.3g} across it (rounding and slope explain {seen.allowed:.2g})"


class _Findings:
    """The events of one preflight: each refused unless ``allow`` accepts it."""

    def __init__(self, allow: Sequence[str], chain: int | None):
        self.allow, self.chain, self.events = list(allow), chain, []

    def add(self, event: GuardEvent) -> None:
        if allowed(event, self.allow):
            event.action = "allowed"
        self.events.append(event)

    def emit(self, **fields: Any) -> None:
        self.add(GuardEvent(phase="preflight", chain=self.chain, action="refused", **fields))


def _sorted_sites(sites: Any) -> list[_jaxpr.CutSite]:
    return sorted(sites or set(), key=lambda s: (s.source or "", s.primitive))


def _cut_findings(findings: _Findings, term: str, leaf: str, sites: list, tested: dict, label: str = "") -> None:
    for site in sites or [None]:
        findings.emit(
            kind="disconnected", term=term, leaf=leaf,
            primitive=site.primitive if site else None, source=site.source if site else None,
            message=label + f"term {term!r} depends on leaf {leaf!r} but its gradient does not"
            + (f": cut by {_site_text(site)}" if site else "")
            + "; the sampler would feel no force from this dependence" + _jump_text(tested.get(site)),
        )


def _partial_findings(findings: _Findings, term: str, leaf: str, sites: list, tested: dict,
                      label: str = "") -> None:
    for site in sites:
        findings.emit(
            kind="partially_detached", term=term, leaf=leaf, primitive=site.primitive, source=site.source,
            message=label + f"one path from leaf {leaf!r} into term {term!r} is cut by {_site_text(site)} "
            "while another still carries gradient: the force misses part of the energy"
            + _jump_text(tested.get(site)),
        )


def _term_status(findings: _Findings, term: str, fn: Any, position: PyTree, names: list[str],
                 label: str = "") -> list[str]:
    """The status of ``term`` against each leaf, its findings added to ``findings``."""
    try:
        value_dep, grad_dep, cuts, tested = _connectivity(fn, position)
    except Exception as err:
        findings.emit(kind="disconnected", term=term, message=f"term {term!r} cannot be reverse-differentiated: {err}")
        return ["cut"] * len(names)
    status = []
    for i, leaf in enumerate(names):
        sites = _sorted_sites(cuts.sites.get(i))
        if grad_dep[i]:
            status.append("partially_detached" if sites else "connected")
            _partial_findings(findings, term, leaf, sites, tested, label)
        elif value_dep[i] and (cuts.wrapped.get(i) or cuts.unselected.get(i)) and not sites:
            status.append("unused")  # continuous across every jump, or cut only where not read: locally constant
        elif value_dep[i]:
            status.append("cut")
            _cut_findings(findings, term, leaf, sites or _sorted_sites(cuts.named.get(i)), tested, label)
        else:
            status.append("unused")
    return status


def site_label(potential: Potential, term: str) -> str:
    """``"observed site 'y' (Normal, model.py:9): "`` for a term that is a numpyro site."""
    info = potential.sites.get(term)
    if not info:
        return ""
    from hmc.numpyro_models import site_text

    return site_text(info) + ": "


def structure(potential: Potential, position: PyTree, findings: _Findings) -> dict[tuple[str, str], str]:
    """Connectivity of every term to every leaf, and the leaves no term reaches."""
    names = leaf_names(position)
    status = {}
    for term, fn in potential.state_terms().items():
        label = site_label(potential, term)
        status.update({(term, leaf): s for leaf, s in zip(names, _term_status(findings, term, fn, position, names,
                                                                               label))})
    for leaf in names:
        if not any(status[(term, leaf)] in ("connected", "partially_detached") for term in potential.terms):
            findings.emit(kind="orphan_leaf", leaf=leaf,
                          message=f"no term has a gradient path to leaf {leaf!r}: this coordinate would drift without bound")
    if potential.sites:
        _orphan_sites(potential, status, names, findings)
    return status


def _orphan_sites(potential: Potential, status: dict, names: list[str], findings: _Findings) -> None:
    """A latent site that no data reach (a numpyro model with observed or factor sites): its
    own prior is its only force, and its draws are its prior's. Data reach a latent through a
    likelihood term that depends on it, or through the prior of a latent that data reach (a
    hierarchy: ``theta ~ Normal(mu, tau)`` passes the data on ``theta`` to ``mu`` and ``tau``)."""
    from hmc.numpyro_models import site_text

    sites = potential.sites
    # a cut dependence still uses the latent (the cut is reported as disconnected)
    touches = {term: {leaf for leaf in names if status[(term, leaf)] in ("connected", "partially_detached", "cut")}
               for term in sites}
    data = [term for term, info in sites.items() if info.get("kind") in ("observed", "factor")]
    if not data:
        return  # a model of priors alone (a funnel written in numpyro): nothing to be informed by
    informed = set().union(*(touches[term] for term in data))
    latent = [term for term, info in sites.items() if info.get("kind") == "latent" and term in names]
    grown = True
    while grown:
        before = len(informed)
        for term in latent:
            if term in informed:
                informed |= touches[term]
        grown = len(informed) > before
    for term in latent:
        if term not in informed:
            findings.emit(kind="orphan_leaf", term=term, leaf=term, source=sites[term].get("source"),
                          message=f"{site_text(sites[term])} reaches no observed site or factor: no data inform it, "
                          "so its draws are its prior's (is it used in the likelihood?)")


def cached_structure(potential: Potential, position: PyTree, findings: _Findings) -> dict[tuple[str, str], str]:
    """:func:`structure`, once per potential and state: its jaxpr analysis and the
    continuity tests of cut sites (which compile small programs of their own) are a
    property of the program and this state, and a second ``sample`` call from the same
    initial states, or ``hmc check`` then ``hmc run``, would repeat them. The findings are
    replayed with this call's chain and ``allow``."""
    import hashlib

    digest = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(position):
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())

    def build() -> tuple[dict, list[GuardEvent]]:
        raw = _Findings((), None)
        return structure(potential, position, raw), raw.events

    status, events = cached_program(potential, ("preflight_structure", digest.hexdigest()), build)
    for event in events:
        findings.add(dataclasses.replace(event, chain=findings.chain, action="refused"))
    return dict(status)


def checks_program(potential: Potential) -> Any:
    """One compiled ``positions -> ({term: (values, grads)}, reach masks)`` over a chain
    axis: the state checks of preflight, and the driver's chunk-boundary probe."""

    def build() -> Any:
        per_term = jax.vmap(lambda q: {n: jax.value_and_grad(f)(q) for n, f in potential.state_terms().items()})
        reach = jax.vmap(reach_masks(potential))
        return jax.jit(lambda positions: (per_term(positions), reach(positions)))

    return cached_program(potential, "guard_checks", build)


def _nonfinite_terms(potential: Potential, positions: PyTree, chains: Sequence[int], per_term: dict) -> list[GuardEvent]:
    """Energy and gradient finite, per term, at each chain's state (attributed where not)."""
    events: list[GuardEvent] = []
    for term, (values, grads) in per_term.items():
        bad = ~np.isfinite(np.asarray(values))
        for g in jax.tree_util.tree_leaves(grads):
            g = np.asarray(g)
            bad |= ~np.all(np.isfinite(g.reshape(g.shape[0], -1)), axis=1)
        for c in np.flatnonzero(bad):
            position = jax.tree_util.tree_map(lambda x: x[c], positions)
            for event in attribute(potential, position, phase="preflight", chain=int(chains[c]), action="refused"):
                # "the sum overflowed" needs the total: the sampler's first step checks it
                if event.term in (None, term) and event not in events and not (
                        event.term is None and event.kind == "nonfinite_gradient"):
                    events.append(event)
    return events


def state_checks(potential: Potential, positions: PyTree, chains: Sequence[int], findings: _Findings,
                 elementwise: bool = True) -> None:
    """Finite energy and gradient per term, and element reach, at a batch of states."""
    try:
        per_term, masks = checks_program(potential)(positions)
    except Exception as err:  # a term without a gradient at all: the structural report names it
        logger.debug("batched state checks failed: %s", err)
        return
    found = _nonfinite_terms(potential, positions, chains, per_term)
    if elementwise:
        first = jax.tree_util.tree_map(lambda x: x[0], positions)

        def classify(c: int) -> list[np.ndarray]:
            return reach_codes(potential, jax.tree_util.tree_map(lambda x: x[c], positions))

        found += check_element_reach(masks, leaf_names(first), chains, phase="preflight", action="refused",
                                     classify=classify)
    for event in found:
        findings.add(event)


def preflight_batch(potential: Potential, positions: PyTree, chains: Sequence[int] | None = None,
                    allow: Sequence[str] = (), elementwise: bool = True) -> PreflightReport:
    """Preflight of a batch of states (leading chain axis): the structure once, on the
    first state, and the state checks on every one."""
    started = time.perf_counter()
    n = jax.tree_util.tree_leaves(positions)[0].shape[0]
    chains = list(range(n)) if chains is None else [int(c) for c in chains]
    first = jax.tree_util.tree_map(lambda x: x[0], positions)
    findings = _Findings(allow, chains[0])
    status = cached_structure(potential, first, findings)
    state_checks(potential, positions, chains, findings, elementwise)
    _symmetry.check(potential, positions, chains, findings)
    names = leaf_names(first)
    return PreflightReport(list(potential.terms), names, status, findings.events, time.perf_counter() - started)


def preflight(
    potential: Potential,
    position: PyTree,
    *,
    allow: Sequence[str] = (),
    chain: int | None = None,
    elementwise: bool = True,
) -> PreflightReport:
    """Check, before any step, that every term's gradient is connected and finite.

    For every term and state leaf: is the gradient structurally connected under
    JAX's own reverse-mode AD (custom rules included, looking inside jit, scan,
    while and cond)? Each cut is reported with the primitive that cut it and the
    user's source line. A leaf that no term reaches is an ``orphan_leaf`` (it would
    drift without bound); with ``elementwise`` each element that no term reaches at
    this state is reported too (one detached particle). Finally each term's energy
    and gradient must be finite at ``position``.

    Parameters
    ----------
    position
        One state, like ``potential.init(key)``.
    allow
        Findings to accept: ``"kind"``, ``"kind:term"`` or ``"kind:term:leaf"``
        (e.g. ``"orphan_leaf"``); they are reported with action ``allowed``.
    chain
        Recorded in the events.
    """
    batch = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], position)
    report = preflight_batch(potential, batch, [0], allow, elementwise)
    for event in report.events:
        event.chain = chain
    return report
