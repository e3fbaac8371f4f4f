"""Element reach: which elements of each state leaf some term's gradient reaches, at
a state (strict, compiled for a batch of chains) and with every selection open
(host, only for a state with an unreached element)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc.guard import _jaxpr
from hmc.guard.events import MAX_INDICES, GuardEvent
from hmc.potential import Potential

logger = logging.getLogger("hmc.guard")

PyTree = Any

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
    for term, fn in potential.state_terms().items():
        try:
            out[term] = [np.asarray(c) for c in _term_reach(fn, position)]
        except Exception as err:  # not differentiable at all: preflight reports it structurally
            logger.debug("term %r has no gradient: %s", term, err)
    return out


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


def reach_masks(potential: Potential) -> Any:
    """``position -> per leaf, the elements some term's gradient reaches`` (strict: at
    this state); a NaN cotangent pulled back through each term."""
    def one(position: PyTree) -> list[jax.Array]:
        masks = None
        for term, fn in potential.state_terms().items():
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
