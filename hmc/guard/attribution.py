"""Attribution: which term, leaf, element, primitive and source line made an energy
or gradient non-finite at a state, and why (overflow, singularity, domain)."""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from hmc.guard import _jaxpr
from hmc.guard.events import MAX_INDICES, GuardEvent
from hmc.potential import Potential, leaf_names

logger = logging.getLogger("hmc.guard")

PyTree = Any


def unhealthy_is_nan(value: Any, ok: Any) -> Any:
    """``value`` where ``ok``, NaN otherwise, with a NaN gradient too: a term whose solver
    failed trips the guard (the trajectory is rejected) instead of returning a finite but
    wrong force. Pair it with a ``health`` check on the :class:`hmc.Potential`."""
    import jax.numpy as jnp

    return value * jnp.where(ok, 1.0, jnp.nan).astype(jnp.result_type(value))


def _nonfinite_indices(x: np.ndarray) -> list[list[int]]:
    bad = np.argwhere(~np.isfinite(np.asarray(x)))
    return [list(map(int, idx)) for idx in bad[:MAX_INDICES]]


def term_report(potential: Potential, position: PyTree) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Each term's energy and gradient leaves at ``position`` (host arrays)."""
    report = {}
    for name, fn in potential.state_terms().items():
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
    events, unhealthy = _health_events(potential, position, context)
    for term, (value, grads) in term_report(potential, position).items():
        if term not in unhealthy:  # its NaN is the solver's flag, reported above
            found = _term_events(potential.state_terms()[term], term, position, names, value, grads, context)
            events += [_at_site(potential, event) for event in found]
    if not events:
        events.append(
            GuardEvent(
                kind="nonfinite_gradient",
                message="no single term is non-finite here: the sum of finite terms overflowed",
                **context,
            )
        )
    return events


def _at_site(potential: Potential, event: GuardEvent) -> GuardEvent:
    """A numpyro site's event names the site; a NaN that arose in library code (inside a
    numpyro distribution) is blamed on the line that declared the site, the library's own
    line kept in the message."""
    info = potential.sites.get(event.term) if event.term is not None else None
    if not info:
        return event
    from hmc.numpyro_models import site_text

    declared = info.get("source")
    event.message = f"{site_text(info)}: {event.message}"
    if declared and event.source and event.source.rsplit(":", 1)[0] != declared.rsplit(":", 1)[0]:
        event.message += f" [{event.primitive or 'the primitive'} is at {event.source}, inside the distribution]"
        event.source = declared
    elif declared and event.source is None:
        event.source = declared
    return event


def _health_events(potential: Potential, position: PyTree, context: dict[str, Any]) -> tuple[list, set]:
    """``solver_not_converged`` events of the terms whose health check fails at ``position``."""
    events, unhealthy = [], set()
    for term, check in potential.health.items():
        try:
            report = {k: np.asarray(v) for k, v in check(potential.with_auxiliary(position)).items()}
        except Exception as err:  # diagnostics only
            logger.debug("health check of term %r failed: %s", term, err)
            continue
        if bool(report.get("ok", True)):
            continue
        unhealthy.add(term)
        details = {k: v.item() if v.size == 1 else v.tolist() for k, v in report.items() if k != "ok"}
        numbers = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in details.items())
        events.append(GuardEvent(
            kind="solver_not_converged", term=term, details=details,
            message=f"the solver of term {term!r} did not converge ({numbers}): its force would be finite but "
            "wrong; raise its iteration cap or loosen its tolerance", **context))
    return events, unhealthy


def _term_events(fn: Any, term: str, position: PyTree, names: list[str], value: np.ndarray,
                 grads: list[np.ndarray], context: dict[str, Any]) -> list[GuardEvent]:
    """The events of one term: a non-finite energy, and each leaf with a non-finite gradient."""
    events = []
    energy_finite = bool(np.isfinite(value))
    energy_origin = None
    if not energy_finite:
        energy_origin = origin = _origin(fn, position, gradient=False)
        events.append(GuardEvent(
            kind="nonfinite_energy", term=term, primitive=origin.primitive if origin else None,
            source=origin.source if origin else None, cause=origin.cause if origin else None,
            message=f"energy of term {term!r} is {float(value)}; " + _hint(origin, False, None), **context,
        ))
    bad_leaves = [(leaf, g) for leaf, g in zip(names, grads) if not np.all(np.isfinite(g))]
    # a non-finite energy breaks its gradient too: the energy's first non-finite primitive is
    # the cause to fix (the gradient program may meet a later symptom of it first)
    origin = (energy_origin or _origin(fn, position, gradient=True)) if bad_leaves else None
    where = f" in {origin.function}()" if origin is not None and origin.function else ""
    for leaf, g in bad_leaves:
        n_bad = int(np.sum(~np.isfinite(g)))
        events.append(GuardEvent(
            kind="nonfinite_gradient", term=term, leaf=leaf, indices=_nonfinite_indices(g),
            primitive=origin.primitive if origin else None, source=origin.source if origin else None,
            cause=origin.cause if origin else None,
            message=f"{n_bad} non-finite gradient element(s) of leaf {leaf!r} from term {term!r}"
            + (f", first produced by {origin.primitive!r}{where} ({origin.cause})" if origin else "")
            + "; " + _hint(origin, energy_finite, g),
            **context,
        ))
    return events
