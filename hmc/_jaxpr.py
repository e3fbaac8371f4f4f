"""Jaxpr mechanics behind the guard: dependency walks, cut location, NaN replay.

Three tools, each a walk over a jaxpr that follows JAX's own semantics:

- :func:`dependencies` — which inputs each output structurally depends on
  (recursing into ``jit``, custom-rule calls, ``scan``, ``while`` and ``cond``).
  Applied to a VJP jaxpr it tells whether a cotangent reaches a leaf at all.
- :func:`locate_cuts` — walks the *primal* jaxpr of a term with two taints per
  leaf, "the value depends on it" and "a gradient path exists", and names the
  equations where the gradient path ends while the value goes on. Whether an
  equation passes gradient is decided by tracing JAX's own VJP of that single
  equation (cached), so custom_jvp / custom_vjp rules count as written.
- :func:`first_nonfinite` — evaluates a jaxpr one equation at a time at concrete
  values and returns the first equation that turned finite inputs into NaN/Inf.

These use ``jax.extend.core`` and, for source lines, JAX's private
``source_info_util``; both are wrapped so a missing API degrades to "source
unknown" rather than an error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

try:  # private, but the only way to a user's source line
    from jax._src import source_info_util as _siu
except Exception:  # pragma: no cover
    _siu = None

Labels = frozenset

_CALL_PRIMITIVES = {"jit", "pjit", "closed_call", "core_call", "checkpoint", "remat", "remat2", "custom_lin"}
_CUSTOM_PRIMITIVES = {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
# operands that select or index rather than carry a value: no gradient is expected through them
_INDEX_OPERANDS = {
    "select_n": (0,),
    "gather": (1,),
    "dynamic_slice": "tail",
    "dynamic_update_slice": "tail2",
    "scatter": (1,),
    "scatter-add": (1,),
    "scatter_add": (1,),
    "while": (),
    "cond": (0,),
    "argmax": "all",
    "argmin": "all",
    "sort": (),
}


# -- small helpers ------------------------------------------------------------------
def is_literal(v: Any) -> bool:
    return isinstance(v, jcore.Literal)


def is_float(aval: Any) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating))


def _closed(j: Any) -> tuple[Any, list]:
    """``(jaxpr, consts)`` from a ClosedJaxpr or an open Jaxpr."""
    if hasattr(j, "jaxpr") and hasattr(j, "consts"):
        return j.jaxpr, list(j.consts)
    return j, []


def _user_frame(eqn: Any) -> Any:
    if _siu is None:
        return None
    try:
        return _siu.user_frame(eqn.source_info.traceback)
    except Exception:
        return None


def source_of(eqn: Any) -> str | None:
    """``"file.py:line"`` of the user frame that created ``eqn``, if known."""
    frame = _user_frame(eqn)
    return None if frame is None else f"{os.path.basename(frame.file_name)}:{frame.start_line}"


def function_of(eqn: Any) -> str | None:
    """Name of the user function that created ``eqn``, if known."""
    frame = _user_frame(eqn)
    return None if frame is None else frame.function_name


def primitive_label(eqn: Any) -> str:
    name = eqn.primitive.name
    if name in ("convert_element_type",) and "new_dtype" in eqn.params:
        return f"convert_element_type[{np.dtype(eqn.params['new_dtype']).name}]"
    if name in _CUSTOM_PRIMITIVES and "name" in eqn.params:
        return f"{name}[{eqn.params['name']}]"
    return name


def _sub_jaxpr_of_call(eqn: Any) -> Any | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    return None


def _index_operands(eqn: Any) -> set[int]:
    spec = _INDEX_OPERANDS.get(eqn.primitive.name)
    n = len(eqn.invars)
    if spec is None:
        return set()
    if spec == "all":
        return set(range(n))
    if spec == "tail":
        return set(range(1, n))
    if spec == "tail2":
        return set(range(2, n))
    return set(spec)


# -- structural dependencies ----------------------------------------------------------
def dependencies(jaxpr: Any, in_labels: Sequence[Labels]) -> list[Labels]:
    """Labels reaching each output of ``jaxpr`` from labelled inputs (structural)."""
    jaxpr, _ = _closed(jaxpr)
    env: dict[Any, Labels] = {}
    for v in jaxpr.constvars:
        env[v] = Labels()
    for v, lab in zip(jaxpr.invars, in_labels):
        env[v] = Labels(lab)

    def read(v: Any) -> Labels:
        return Labels() if is_literal(v) else env.get(v, Labels())

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = _eqn_dependencies(eqn, ins)
        for v, lab in zip(eqn.outvars, outs):
            env[v] = lab
    return [read(v) for v in jaxpr.outvars]


def _union(sets: Sequence[Labels]) -> Labels:
    out: set = set()
    for s in sets:
        out |= s
    return Labels(out)


def _eqn_dependencies(eqn: Any, ins: list[Labels]) -> list[Labels]:
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    try:
        if name in _CALL_PRIMITIVES or name in _CUSTOM_PRIMITIVES:
            sub = _sub_jaxpr_of_call(eqn)
            if sub is not None:
                inner, _ = _closed(sub)
                offset = len(ins) - len(inner.invars)
                return dependencies(sub, ins[offset:]) if offset >= 0 else [_union(ins)] * n_out
        if name == "scan":
            return _scan_dependencies(eqn, ins)
        if name == "while":
            return _while_dependencies(eqn, ins)
        if name == "cond":
            outs = [Labels()] * n_out
            for branch in eqn.params["branches"]:
                got = dependencies(branch, ins[1:])
                outs = [a | b | ins[0] for a, b in zip(outs, got)]
            return outs
    except Exception:
        pass
    return [_union(ins)] * n_out


def _scan_dependencies(eqn: Any, ins: list[Labels]) -> list[Labels]:
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:n_consts], ins[n_consts : n_consts + n_carry], ins[n_consts + n_carry :]
    for _ in range(len(carry) + 2):
        outs = dependencies(p["jaxpr"], consts + carry + xs)
        new_carry = [a | b for a, b in zip(carry, outs[:n_carry])]
        if new_carry == carry:
            break
        carry = new_carry
    return carry + outs[n_carry:]


def _while_dependencies(eqn: Any, ins: list[Labels]) -> list[Labels]:
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = ins[:nc], ins[nc : nc + nb], ins[nc + nb :]
    for _ in range(len(carry) + 2):
        pred = dependencies(p["cond_jaxpr"], cond_consts + carry)[0]
        outs = dependencies(p["body_jaxpr"], body_consts + carry)
        new_carry = [a | b | pred for a, b in zip(carry, outs)]
        if new_carry == carry:
            break
        carry = new_carry
    return carry


# -- does one equation pass gradient? ---------------------------------------------------
_PASS_CACHE: dict[Any, list[list[bool]]] = {}


def _eqn_key(eqn: Any) -> Any:
    avals = tuple((tuple(v.aval.shape), str(v.aval.dtype)) for v in eqn.invars)
    try:
        params = tuple(sorted((k, repr(v)) for k, v in eqn.params.items()))
    except Exception:
        return None
    return (eqn.primitive.name, avals, params, tuple(repr(v) if is_literal(v) else None for v in eqn.invars))


def _bind_eqn(eqn: Any, args: Sequence[Any]) -> list[Any]:
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list = []
    if isinstance(bind_params, tuple):  # jax < 0.5 returned (subfuns, params)
        subfuns, bind_params = bind_params
    out = eqn.primitive.bind(*subfuns, *args, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def gradient_passes(eqn: Any) -> list[list[bool]]:
    """``passes[i][j]``: JAX's VJP of this one equation sends output ``j``'s
    cotangent to float input ``i`` (structurally). Non-float entries are ``False``."""
    key = _eqn_key(eqn)
    if key is not None and key in _PASS_CACHE:
        return _PASS_CACHE[key]
    n_in, n_out = len(eqn.invars), len(eqn.outvars)
    float_in = [i for i, v in enumerate(eqn.invars) if not is_literal(v) and is_float(v.aval)]
    float_out = [j for j, v in enumerate(eqn.outvars) if is_float(v.aval)]
    passes = [[False] * n_out for _ in range(n_in)]
    if float_in and float_out:
        try:
            passes = _trace_passes(eqn, float_in, float_out, passes)
        except Exception:
            # Unknown to the tracer: be conservative (assume the gradient passes).
            for i in float_in:
                for j in float_out:
                    passes[i][j] = True
    if key is not None:
        _PASS_CACHE[key] = passes
    return passes


def _trace_passes(eqn: Any, float_in: list[int], float_out: list[int], passes: list[list[bool]]) -> list[list[bool]]:
    in_avals = [None if is_literal(v) else v.aval for v in eqn.invars]

    def primal_fn(*float_args: Any) -> list[Any]:
        args = []
        it = iter(float_args)
        for v, aval in zip(eqn.invars, in_avals):
            if is_literal(v):
                args.append(v.val)
            elif is_float(aval):
                args.append(next(it))
            else:
                args.append(jnp.zeros(aval.shape, aval.dtype))
        outs = _bind_eqn(eqn, args)
        return [outs[j] for j in float_out]

    def vjp_fn(primals: list[Any], cts: list[Any]) -> Any:
        _, pullback = jax.vjp(primal_fn, *primals)
        return pullback(cts)

    primal_specs = [jax.ShapeDtypeStruct(in_avals[i].shape, in_avals[i].dtype) for i in float_in]
    ct_specs = [jax.ShapeDtypeStruct(eqn.outvars[j].aval.shape, eqn.outvars[j].aval.dtype) for j in float_out]
    closed = jax.make_jaxpr(vjp_fn)(primal_specs, ct_specs)
    n_p = len(primal_specs)
    labels = [Labels()] * n_p + [Labels({j}) for j in float_out]
    outs = dependencies(closed, labels)
    for k, i in enumerate(float_in):
        for j in outs[k]:
            passes[i][j] = True
    return passes


# -- locating cuts in a term's primal jaxpr ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CutSite:
    """An equation where some leaves' gradient path ends while their value goes on."""

    primitive: str
    source: str | None
    function: str | None
    via: str | None = None  # the enclosing call (e.g. jnp's "jit:round") when the source is its call site


@dataclasses.dataclass
class _Flow:
    value: Labels  # leaves the value depends on
    grad: Labels  # leaves with a gradient path to here
    latent: frozenset  # (leaf, CutSite) lost on a way through a non-float value


def locate_cuts(closed: Any, leaf_labels: Sequence[Labels]) -> tuple[list[_Flow], dict[int, set[CutSite]]]:
    """Walk a term's primal jaxpr; return the flow at each output and the cut sites per leaf."""
    cuts: dict[int, set[CutSite]] = {}
    flows = _walk(closed, [_Flow(lab, lab, frozenset()) for lab in leaf_labels], cuts, None)
    return flows, cuts


def _walk(closed: Any, ins: list[_Flow], cuts: dict[int, set[CutSite]], call_site: tuple | None) -> list[_Flow]:
    jaxpr, _ = _closed(closed)
    empty = _Flow(Labels(), Labels(), frozenset())
    env: dict[Any, _Flow] = {v: empty for v in jaxpr.constvars}
    for v, f in zip(jaxpr.invars, ins):
        env[v] = f

    def read(v: Any) -> _Flow:
        return empty if is_literal(v) else env.get(v, empty)

    for eqn in jaxpr.eqns:
        flows = [read(v) for v in eqn.invars]
        outs = _walk_eqn(eqn, flows, cuts, call_site)
        for v, f in zip(eqn.outvars, outs):
            env[v] = f
    return [read(v) for v in jaxpr.outvars]


def _call_site(eqn: Any) -> tuple:
    """``(source, function, _, via)`` of a call equation, for the equations inside it."""
    label = str(eqn.params.get("name", eqn.primitive.name))
    return (source_of(eqn), function_of(eqn), False, f"{eqn.primitive.name}:{label}")


def _enter_call(eqn: Any, outer: tuple | None) -> tuple:
    """The call site for equations inside ``eqn``: this call's own line when known
    (so a jnp wrapper inside a user's jitted helper points into the helper)."""
    site = _call_site(eqn)
    if site[0] is None and outer is not None:
        return (outer[0], outer[1], site[2] or outer[2], site[3])
    return site


def _site(eqn: Any, call_site: tuple | None) -> CutSite:
    source, function = source_of(eqn), function_of(eqn)
    if call_site is not None and source is None:
        # jnp's own jit wrappers (jnp.round is jit[name=round]) hide the user's frame:
        # report the line that called the wrapper instead
        return CutSite(primitive_label(eqn), call_site[0], call_site[1], via=call_site[3])
    return CutSite(primitive_label(eqn), source, function)


def _record(cuts: dict[int, set[CutSite]], leaves: Labels, site: CutSite) -> None:
    for leaf in leaves:
        cuts.setdefault(leaf, set()).add(site)


def _walk_eqn(eqn: Any, flows: list[_Flow], cuts: dict[int, set[CutSite]], call_site: tuple | None) -> list[_Flow]:
    name = eqn.primitive.name
    if name in _CALL_PRIMITIVES and _sub_jaxpr_of_call(eqn) is not None:
        sub = _sub_jaxpr_of_call(eqn)
        inner, _ = _closed(sub)
        if len(inner.invars) == len(flows):
            return _walk(sub, flows, cuts, _enter_call(eqn, call_site))
    if name == "scan":
        return _walk_scan(eqn, flows, cuts, call_site)
    if name == "cond":
        return _walk_cond(eqn, flows, cuts, call_site)

    value = _union([f.value for f in flows])
    latent = frozenset().union(*[f.latent for f in flows]) if flows else frozenset()
    index_ops = _index_operands(eqn)
    passes = gradient_passes(eqn)
    outs = []
    grad_in = _union([f.grad for i, f in enumerate(flows) if i not in index_ops and is_float_var(eqn.invars[i])])
    for j, out in enumerate(eqn.outvars):
        if not is_float(out.aval):
            # Gradient cannot live in a bool/int value: remember what was lost, report it
            # only if that value is used as a number later (or the leaf ends up cut).
            lost = frozenset((leaf, _site(eqn, call_site)) for leaf in grad_in)
            outs.append(_Flow(value, Labels(), latent | lost))
            continue
        grad = _union([flows[i].grad for i in range(len(flows)) if passes[i][j]])
        lost = grad_in - grad
        if lost:
            _record(cuts, lost, _site(eqn, call_site))
        new_latent = latent
        if name == "convert_element_type" and not is_float_var(eqn.invars[0]):
            # a comparison or an int cast used as a number: the lost gradient is real now
            for leaf, site in latent:
                _record(cuts, Labels({leaf}), site)
            new_latent = frozenset()
        outs.append(_Flow(value, grad, new_latent))
    return outs


def is_float_var(v: Any) -> bool:
    return is_float(v.aval) if not is_literal(v) else is_float(getattr(v, "aval", None))


def _merge(a: _Flow, b: _Flow) -> _Flow:
    return _Flow(a.value | b.value, a.grad | b.grad, a.latent | b.latent)


def _walk_scan(eqn: Any, flows: list[_Flow], cuts: dict[int, set[CutSite]], call_site: tuple | None) -> list[_Flow]:
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = flows[:n_consts], flows[n_consts : n_consts + n_carry], flows[n_consts + n_carry :]
    outs = carry
    for _ in range(len(carry) + 2):
        outs = _walk(p["jaxpr"], consts + carry + xs, cuts, call_site)
        new_carry = [_merge(a, b) for a, b in zip(carry, outs[:n_carry])]
        if all(x.value == y.value and x.grad == y.grad and x.latent == y.latent for x, y in zip(new_carry, carry)):
            break
        carry = new_carry
    return carry + outs[n_carry:]


def _walk_cond(eqn: Any, flows: list[_Flow], cuts: dict[int, set[CutSite]], call_site: tuple | None) -> list[_Flow]:
    index, ops = flows[0], flows[1:]
    outs: list[_Flow] | None = None
    for branch in eqn.params["branches"]:
        got = _walk(branch, ops, cuts, call_site)
        outs = got if outs is None else [_merge(a, b) for a, b in zip(outs, got)]
    assert outs is not None
    return [_Flow(o.value | index.value, o.grad, o.latent | index.latent) for o in outs]


# -- replay: where did the first NaN/Inf appear? ----------------------------------------------
@dataclasses.dataclass
class NonfiniteOrigin:
    primitive: str
    source: str | None
    function: str | None
    indices: list[list[int]]
    via: str | None = None


def _all_finite(x: Any) -> bool:
    a = np.asarray(x)
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.complexfloating)):
        return True
    return bool(np.all(np.isfinite(a)))


def first_nonfinite(closed: Any, args: Sequence[Any], call_site: tuple | None = None) -> NonfiniteOrigin | None:
    """Evaluate ``closed`` at ``args`` equation by equation; the first equation whose
    inputs are all finite and whose output is not, recursing into calls and loops."""
    jaxpr, consts = _closed(closed)
    env: dict[Any, Any] = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a

    def read(v: Any) -> Any:
        return v.val if is_literal(v) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        outs = _bind_eqn(eqn, invals)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
        if all(_all_finite(x) for x in invals) and not all(_all_finite(o) for o in outs):
            return _origin_inside(eqn, invals, outs, call_site)
    return None


def _origin_inside(eqn: Any, invals: list[Any], outs: list[Any], call_site: tuple | None) -> NonfiniteOrigin:
    name = eqn.primitive.name
    site = call_site
    try:
        if (name in _CALL_PRIMITIVES or name in _CUSTOM_PRIMITIVES) and _sub_jaxpr_of_call(eqn) is not None:
            sub = _sub_jaxpr_of_call(eqn)
            inner, _ = _closed(sub)
            offset = len(invals) - len(inner.invars)
            site = _enter_call(eqn, site)
            found = first_nonfinite(sub, invals[offset:], site)
            if found is not None:
                return found
        if name == "scan":
            found = _scan_origin(eqn, invals, site)
            if found is not None:
                return found
        if name == "cond":
            branch = eqn.params["branches"][int(np.asarray(invals[0]))]
            found = first_nonfinite(branch, invals[1:], site)
            if found is not None:
                return found
    except Exception:
        pass
    bad = next(o for o in outs if not _all_finite(o))
    indices = [list(map(int, i)) for i in np.argwhere(~np.isfinite(np.asarray(bad)))[:8]]
    source, function, via = source_of(eqn), function_of(eqn), None
    if call_site is not None and source is None:
        source, function, via = call_site[0], call_site[1], call_site[3]
    return NonfiniteOrigin(primitive_label(eqn), source, function, indices, via)


def _scan_origin(eqn: Any, invals: list[Any], call_site: tuple | None) -> NonfiniteOrigin | None:
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = invals[:n_consts], invals[n_consts : n_consts + n_carry], invals[n_consts + n_carry :]
    body = jcore.jaxpr_as_fun(p["jaxpr"]) if hasattr(jcore, "jaxpr_as_fun") else None
    length = p["length"]
    for t in range(length):
        index = length - 1 - t if p.get("reverse", False) else t
        x_t = [np.asarray(x)[index] for x in xs]
        args = consts + carry + x_t
        found = first_nonfinite(p["jaxpr"], args, call_site)
        if found is not None:
            return found
        out = body(*args) if body is not None else None
        if out is None:
            return None
        carry = list(out[:n_carry])
    return None


def as_flat_function(fn: Callable[[Any], Any], position: Any) -> tuple[Callable[..., Any], list[Any]]:
    """``fn(pytree)`` as ``g(*leaves)`` with the leaves of ``position``."""
    leaves, treedef = jax.tree_util.tree_flatten(position)

    def flat(*xs: Any) -> Any:
        return fn(jax.tree_util.tree_unflatten(treedef, list(xs)))

    return flat, leaves
