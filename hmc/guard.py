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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc import _jaxpr
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
    cause: str | None = None  # non-finite findings: "overflow", "singularity" or "domain"

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
        try:
            value, grad = jax.value_and_grad(fn)(position)
        except Exception as err:  # not differentiable at all: preflight reports it structurally
            logger.debug("term %r has no gradient: %s", name, err)
            continue
        report[name] = (np.asarray(value), [np.asarray(g) for g in jax.tree_util.tree_leaves(grad)])
    return report


def _hint(origin: _jaxpr.NonfiniteOrigin | None, energy_finite: bool, gradient_values: np.ndarray | None) -> str:
    """One line on the known ways a finite model produces NaN/Inf, from the cause found
    by the replay (see :func:`hmc._jaxpr.cause_of`)."""
    p = (origin.primitive if origin else "").split("[")[0]
    cause = origin.cause if origin else None
    if cause == "overflow":
        text = "overflow: finite inputs gave a result too large for the type (float32 tops out at ~3.4e38"
        if p == "exp":
            text += "; exp overflows above ~88.7"
        return text + "): use run.precision=float64 or a stable form (logsumexp, softplus, log space)"
    nan_gradient = gradient_values is not None and bool(np.any(np.isnan(gradient_values)))
    if gradient_values is not None and energy_finite and nan_gradient:
        return (
            "the energy is finite but its gradient is NaN: the classic where-trap (a jnp.where whose "
            "unselected branch has a singular derivative, and 0 * inf = NaN); mask that branch's input too "
            "(the double where of jax-md's safe_mask)"
        )
    if cause == "singularity":
        if p in ("log", "log1p"):
            return "log of zero: keep its argument positive (clip, or an epsilon)"
        if gradient_values is not None and energy_finite:
            return f"{p!r} at a pole of its derivative (an infinite slope, as sqrt at 0): keep the argument off the pole"
        return "division by zero (or a negative power of zero): guard the denominator"
    if cause == "domain":
        if p in ("log", "log1p"):
            return "log of a negative number: keep its argument positive (a transform to unconstrained space?)"
        if p in ("sqrt", "pow"):
            return f"{p!r} of a negative number"
        return "an undefined operation (0/0, or a function outside its domain)"
    return "a finite input produced NaN/Inf here"


def _origin(fn: Any, position: PyTree, gradient: bool) -> _jaxpr.NonfiniteOrigin | None:
    """Replay ``fn`` (or its gradient) at ``position``: the first equation to go non-finite."""
    flat, leaves = _jaxpr.as_flat_function(fn, position)
    target = jax.grad(flat, argnums=tuple(range(len(leaves)))) if gradient else flat
    try:
        closed = jax.make_jaxpr(target)(*leaves)
        return _jaxpr.first_nonfinite(closed, leaves)
    except Exception as err:  # the replay is diagnostics only; never lose the event over it
        logger.debug("replay failed: %s", err)
        return None


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

    For each broken term the term's own jaxpr (or its gradient's) is replayed at
    ``position`` to find the first primitive that turned finite inputs into
    NaN/Inf, with its source line. Returns one event per (term, leaf) with a
    non-finite gradient and one per term with a non-finite energy. If the
    position itself is not finite no term is blamed (every term would be).
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
        fn = potential.terms[term]
        energy_finite = bool(np.isfinite(value))
        if not energy_finite:
            origin = _origin(fn, position, gradient=False)
            events.append(
                GuardEvent(
                    kind="nonfinite_energy",
                    term=term,
                    primitive=origin.primitive if origin else None,
                    source=origin.source if origin else None,
                    cause=origin.cause if origin else None,
                    message=f"energy of term {term!r} is {float(value)}; " + _hint(origin, False, None),
                    **context,
                )
            )
        bad_leaves = [(leaf, g) for leaf, g in zip(names, grads) if not np.all(np.isfinite(g))]
        if bad_leaves:
            origin = _origin(fn, position, gradient=True)
            for leaf, g in bad_leaves:
                n_bad = int(np.sum(~np.isfinite(g)))
                where = ""
                if origin is not None and origin.function:
                    where = f" in {origin.function}()"
                events.append(
                    GuardEvent(
                        kind="nonfinite_gradient",
                        term=term,
                        leaf=leaf,
                        indices=_nonfinite_indices(g),
                        primitive=origin.primitive if origin else None,
                        source=origin.source if origin else None,
                        cause=origin.cause if origin else None,
                        message=f"{n_bad} non-finite gradient element(s) of leaf {leaf!r} from term {term!r}"
                        + (f", first produced by {origin.primitive!r}{where} ({origin.cause})" if origin else "")
                        + "; "
                        + _hint(origin, energy_finite, g),
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


def batched_initial_checks(potential: Potential) -> Any:
    """``positions -> ({term: (values, grads)}, reach masks)`` over a chain axis (not
    jitted: the caller compiles it into its own program): what
    :func:`check_initial_states` and :func:`check_element_reach` read."""
    per_term = jax.vmap(lambda q: {n: jax.value_and_grad(f)(q) for n, f in potential.terms.items()})
    reach = jax.vmap(_reach_masks(potential))
    return lambda positions: (per_term(positions), reach(positions))


def check_initial_states(
    potential: Potential, positions: PyTree, chains: Sequence[int], batched: dict
) -> list[GuardEvent]:
    """Energy and gradient finite, per term, at each chain's initial state; ``batched``
    is the first output of :func:`batched_initial_checks` at ``positions``."""
    events = []
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


# -- preflight ------------------------------------------------------------------------
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


def _allowed(event: GuardEvent, allow: Sequence[str]) -> bool:
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
    primal = jax.make_jaxpr(flat)(*leaves)
    value_deps = _jaxpr.dependencies(primal, [frozenset({i}) for i in range(n)])[0]
    out_aval = primal.out_avals[0]

    def pullback(ct: Any) -> Any:
        return jax.vjp(flat, *leaves)[1](ct)

    vjp = jax.make_jaxpr(pullback)(jnp.ones(out_aval.shape, out_aval.dtype))
    grads = _jaxpr.dependencies(vjp, [frozenset({"ct"})])
    _, cuts = _jaxpr.locate_cuts(primal, [frozenset({i}) for i in range(n)])
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
    return [i in value_deps for i in range(n)], ["ct" in g for g in grads], cuts, tested


def _jump_text(seen: _jaxpr.Continuity | None) -> str:
    if seen is None:
        return ""
    if seen.continuous is None:
        return "; no jump of it was reached from this state to test whether the energy is continuous there"
    return f"; the energy jumps by {seen.largest:.3g} across it (rounding and slope explain {seen.allowed:.2g})"


def preflight(
    potential: Potential,
    position: PyTree,
    *,
    allow: Sequence[str] = (),
    chain: int | None = None,
    elementwise: bool = True,
    states: bool = True,
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
        Recorded in the events (the driver checks every chain's initial state).
    states
        ``False``: the structural checks only; the caller checks the state-dependent
        ones (finite energy and gradient, element reach) itself, batched over chains
        with :func:`batched_initial_checks` (one compiled program instead of
        op-by-op execution).
    """
    import time

    started = time.perf_counter()
    names = leaf_names(position)
    terms = list(potential.terms)
    status: dict[tuple[str, str], str] = {}
    events: list[GuardEvent] = []

    def emit(**fields: Any) -> None:
        event = GuardEvent(phase="preflight", chain=chain, action="refused", **fields)
        if _allowed(event, allow):
            event.action = "allowed"
        events.append(event)

    reached = [False] * len(names)
    for term in terms:
        fn = potential.terms[term]
        try:
            value_dep, grad_dep, cuts, tested = _connectivity(fn, position)
        except Exception as err:
            for leaf in names:
                status[(term, leaf)] = "cut"
            emit(kind="disconnected", term=term, message=f"term {term!r} cannot be reverse-differentiated: {err}")
            continue
        for i, leaf in enumerate(names):
            sites = sorted(cuts.sites.get(i, set()), key=lambda s: (s.source or "", s.primitive))
            wraps_only = bool(cuts.wrapped.get(i)) and not sites
            if grad_dep[i]:
                reached[i] = True
                status[(term, leaf)] = "partially_detached" if sites else "connected"
                for site in sites:
                    emit(
                        kind="partially_detached",
                        term=term,
                        leaf=leaf,
                        primitive=site.primitive,
                        source=site.source,
                        message=f"one path from leaf {leaf!r} into term {term!r} is cut by {_site_text(site)} "
                        "while another still carries gradient: the force misses part of the energy"
                        + _jump_text(tested.get(site)),
                    )
            elif value_dep[i] and wraps_only:
                status[(term, leaf)] = "unused"  # continuous across every jump: locally constant
            elif value_dep[i]:
                status[(term, leaf)] = "cut"
                sites = sites or sorted(cuts.named.get(i, set()), key=lambda s: (s.source or "", s.primitive))
                for site in sites or [None]:
                    emit(
                        kind="disconnected",
                        term=term,
                        leaf=leaf,
                        primitive=site.primitive if site else None,
                        source=site.source if site else None,
                        message=f"term {term!r} depends on leaf {leaf!r} but its gradient does not"
                        + (f": cut by {_site_text(site)}" if site else "")
                        + "; the sampler would feel no force from this dependence"
                        + _jump_text(tested.get(site)),
                    )
            else:
                status[(term, leaf)] = "unused"
    for i, leaf in enumerate(names):
        if not reached[i]:
            emit(
                kind="orphan_leaf",
                leaf=leaf,
                message=f"no term has a gradient path to leaf {leaf!r}: this coordinate would drift without bound",
            )
    if not states:
        return PreflightReport(terms, names, status, events, time.perf_counter() - started)
    if elementwise:
        events_el = _element_probe(potential, position, names, reached, chain)
        for event in events_el:
            if _allowed(event, allow):
                event.action = "allowed"
        events.extend(events_el)
    # energy and gradient finite at this state, per term
    for event in attribute(potential, position, phase="preflight", chain=chain, action="refused"):
        if event.term is None and event.kind == "nonfinite_gradient":
            continue  # "the sum overflowed" needs the total; checked by the sampler's first step
        if _allowed(event, allow):
            event.action = "allowed"
        events.append(event)
    return PreflightReport(terms, names, status, events, time.perf_counter() - started)


REACHED, HIDDEN, UNREACHABLE = 2, 1, 0  # element reach codes, see :func:`element_reach`


def _term_reach(fn: Any, position: PyTree) -> list[jax.Array]:
    """Per leaf of ``position``: :data:`REACHED` where ``fn``'s gradient reaches an element
    at this state, :data:`HIDDEN` where only a selection (a ``where``) keeps it away at
    this state, :data:`UNREACHABLE` where nothing could reach it. A NaN cotangent pulled
    back through the term reaches every element with a path at this state (``0 * NaN =
    NaN``); pulled back with every selection open, every element with a path at all."""
    value, pullback = jax.vjp(fn, position)
    nan = jnp.full(jnp.shape(value), jnp.nan, jnp.asarray(value).dtype)
    (ct,) = pullback(nan)
    flat, leaves = _jaxpr.as_flat_function(fn, position)

    def pull(*args: Any) -> Any:
        return jax.vjp(flat, *args[:-1])[1](args[-1])

    closed = jax.make_jaxpr(pull)(*leaves, nan)
    opened = _jaxpr.eval_open_selects(closed, [*leaves, nan])
    return [
        jnp.where(jnp.isnan(g), REACHED, jnp.where(jnp.isnan(o), HIDDEN, UNREACHABLE)).astype(jnp.int8)
        for g, o in zip(jax.tree_util.tree_leaves(ct), opened)
    ]


def element_reach(potential: Potential, position: PyTree) -> dict[str, list[np.ndarray]]:
    """Per term, per leaf: the reach code of every element at ``position``
    (:data:`REACHED`, :data:`HIDDEN` or :data:`UNREACHABLE`, see :func:`_term_reach`)."""
    out = {}
    for term, fn in potential.terms.items():
        try:
            out[term] = [np.asarray(c) for c in _term_reach(fn, position)]
        except Exception as err:  # not differentiable at all: preflight reports it structurally
            logger.debug("term %r has no gradient: %s", term, err)
    return out


def _element_probe(
    potential: Potential, position: PyTree, names: list[str], reached: list[bool], chain: int | None,
    phase: str = "preflight", draw: int | None = None, action: str = "refused",
) -> list[GuardEvent]:
    masks = [np.asarray(m)[None] for m in _reach_masks(potential)(position)]
    orphans = [leaf for leaf, ok in zip(names, reached) if not ok]  # already reported structurally
    events = check_element_reach(masks, names, [chain], phase=phase, action=action, draw=draw,
                                 classify=lambda _: reach_codes(potential, position))
    for event in events:
        event.chain = chain
    return [e for e in events if e.leaf not in orphans]


def _unreached_elements(
    leaf: str, codes: np.ndarray, chain: int | None, draw: int | None, phase: str, action: str,
    hidden: bool, detail: str = "",
) -> list[GuardEvent]:
    """The event for elements of ``leaf`` no term reaches (``codes`` below :data:`REACHED`;
    with ``hidden=False`` only those no selection could reach either)."""
    missing = np.argwhere(codes < (REACHED if hidden else HIDDEN))
    if len(missing) == 0:
        return []
    only_hidden = bool(np.all(codes[tuple(missing.T)] == HIDDEN))
    why = (
        "a selection (where) keeps every path away from them at this state"
        if only_hidden
        else "no term has a path to them at all"
    )
    return [GuardEvent(
        kind="disconnected",
        phase=phase,
        leaf=leaf,
        indices=[list(map(int, idx)) for idx in missing[:MAX_INDICES]],
        chain=chain,
        draw=draw,
        action=action,
        message=f"{len(missing)} element(s) of leaf {leaf!r} get no gradient from any term at this state{detail}: "
        f"{why}; they would drift without a force",
    )]


def _reach_masks(potential: Potential) -> Any:
    """``position -> per leaf, the elements some term's gradient reaches`` (strict: at
    this state); a NaN cotangent pulled back through each term."""
    def one(position: PyTree) -> list[jax.Array]:
        masks = None
        for term, fn in potential.terms.items():
            try:
                value, pullback = jax.vjp(fn, position)
                (ct,) = pullback(jnp.full(jnp.shape(value), jnp.nan, jnp.asarray(value).dtype))
            except Exception as err:  # not differentiable at all: preflight reports it structurally
                logger.debug("term %r has no gradient: %s", term, err)
                continue
            leaves = [jnp.isnan(g) for g in jax.tree_util.tree_leaves(ct)]
            masks = leaves if masks is None else [a | b for a, b in zip(masks, leaves)]
        return masks if masks is not None else []

    return one


def reach_codes(potential: Potential, position: PyTree) -> list[np.ndarray]:
    """Per leaf, the best reach code over all terms at ``position`` (host, op by op:
    called only for a state where some element is not reached). Where the open
    evaluation fails, every element counts as :data:`UNREACHABLE` (refused, as a
    detached element is)."""
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(position)]
    codes = [np.full(x.shape, UNREACHABLE, np.int8) for x in leaves]
    try:
        for per_leaf in element_reach(potential, position).values():
            codes = [np.maximum(a, b) for a, b in zip(codes, per_leaf)]
    except Exception as err:  # diagnostics only: fall back to the strict answer
        logger.debug("open element reach failed: %s", err)
    return codes


def check_element_reach(
    masks: Sequence[Any],
    names: Sequence[str],
    chains: Sequence[int],
    *,
    phase: str,
    action: str,
    draw: int | None = None,
    classify: Callable[[int], list[np.ndarray]] | None = None,
) -> list[GuardEvent]:
    """Elements that no term's gradient reaches at each chain's state, from the reach
    ``masks`` (per leaf ``names``, leading chain axis) of :func:`batched_initial_checks`.

    With ``classify`` (preflight: ``index -> reach codes`` of that chain's state, see
    :func:`reach_codes`), only elements that nothing could reach (an unused or
    detached element) count; an element that a ``where`` keeps in a flat region at
    this state (a soft sphere out of contact, a hinge at rest) is physics, not a fault.
    Without it (the chunk-boundary probe) every unreached element is reported, as
    information on where the chains are."""
    masks = [np.asarray(m) for m in masks]
    events = []
    for c_index, chain in enumerate(chains):
        codes = None
        for i, (leaf, mask) in enumerate(zip(names, masks)):
            reached = mask[c_index]
            if reached.all() or not reached.any():
                continue  # all reached, or an orphan leaf (reported structurally)
            if classify is None:
                leaf_codes, hidden = np.where(reached, REACHED, HIDDEN), True
            else:
                codes = classify(c_index) if codes is None else codes
                leaf_codes, hidden = np.where(reached, REACHED, codes[i]), False
            events += _unreached_elements(leaf, leaf_codes, None if chain is None else int(chain), draw, phase,
                                          action, hidden=hidden)
    return events


def write_jsonl(events: Sequence[GuardEvent], path: Any, mode: str = "a") -> None:
    """Append events to ``path``, one JSON object per line (the ``guard.jsonl`` schema)."""
    with open(path, mode) as fh:
        for event in events:
            fh.write(event.to_json() + "\n")
