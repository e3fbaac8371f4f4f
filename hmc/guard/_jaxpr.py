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


# Libraries' own thin wrappers around jnp: the line that called the wrapper says more
# (tfp's numpy backend maps ``tf.math.log`` onto ``jnp.log`` in numpy_math.py).
_WRAPPER_PATHS = (os.sep + os.path.join("internal", "backend") + os.sep,)


def _user_frame(eqn: Any) -> Any:
    if _siu is None:
        return None
    try:
        traceback = eqn.source_info.traceback
        if not hasattr(_siu, "user_frames"):
            return _siu.user_frame(traceback)
        first = None
        for frame in _siu.user_frames(traceback):
            first = first or frame
            if not any(part in frame.file_name for part in _WRAPPER_PATHS):
                return frame
        return first
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
# Float -> float primitives whose output is piecewise constant in their input: a zero
# derivative almost everywhere, and a jump in between. Whether the jump is a cut (the
# energy jumps with it: the force misses a delta function) or a wrap (the energy is
# continuous across it, as in a minimum image ``d - L * round(d / L)``) depends on the
# code around it: :func:`continuity` tells the two apart at a state.
PIECEWISE_CONSTANT = {"round", "floor", "ceil", "sign"}


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
    # On a bool/int value: (leaf, site) pairs whose gradient was lost into it (a
    # comparison, an int cast). Real cuts only once the value is turned back into a
    # float and used as a number; a selector (the predicate of a where, an index) is not.
    lost: frozenset
    # (leaf, site) pairs that only name a leaf whose gradient is cut altogether
    # (``where(x > 0, 1.0, 0.0)``: the energy depends on x through a predicate only)
    named: frozenset


@dataclasses.dataclass
class Cuts:
    """What :func:`locate_cuts` found in a term.

    ``sites[leaf]``: the cut sites per leaf index. ``jumps[site]``: for a site whose
    output is piecewise constant (round, floor, a comparison used as a number), the
    equations to watch, each as the path of equations from the top of the jaxpr (the
    enclosing calls, then the equation); ``None`` for a site that is not a jump (a
    ``stop_gradient``, a zero custom rule) or that sits inside a loop or a branch,
    where it cannot be watched: such a site is always a cut.
    """

    sites: dict[int, set[CutSite]] = dataclasses.field(default_factory=dict)
    jumps: dict[CutSite, list[tuple] | None] = dataclasses.field(default_factory=dict)
    named: dict[int, set[CutSite]] = dataclasses.field(default_factory=dict)
    wrapped: dict[int, set[CutSite]] = dataclasses.field(default_factory=dict)  # dropped: wraps
    # where each site sits (paths as in ``jumps``; None inside a loop or a branch), to test
    # whether the energy reads the cut value at a state (:func:`reads_at`)
    located: dict[CutSite, list[tuple] | None] = dataclasses.field(default_factory=dict)
    unselected: dict[int, set[CutSite]] = dataclasses.field(default_factory=dict)  # dropped: not read

    def record(self, leaves: Labels, site: CutSite, path: tuple | None, at: tuple | None = None) -> None:
        for leaf in leaves:
            self.sites.setdefault(leaf, set()).add(site)
        if site not in self.located or self.located[site] is not None:
            self.located[site] = None if at is None else [*(self.located.get(site) or []), at]
        if site in self.jumps and self.jumps[site] is None:
            return
        if path is None:
            self.jumps[site] = None
        else:
            self.jumps.setdefault(site, []).append(path)

    def drop(self, site: CutSite, why: str = "wrapped") -> None:
        """``site`` is not a cut: a wrap (``why="wrapped"``) or a value the energy does
        not read at the state checked (``why="unselected"``)."""
        for leaf, sites in self.sites.items():
            if site in sites:
                sites.discard(site)
                getattr(self, why).setdefault(leaf, set()).add(site)
        self.jumps.pop(site, None)


@dataclasses.dataclass(frozen=True)
class _Context:
    cuts: Cuts
    call_site: tuple | None = None
    path: tuple | None = ()  # enclosing call equations; None inside a loop or branch
    # the same, continued into the branches of a ``cond`` as ``(eqn, branch)`` (a branch
    # not taken at a state is not read there); None inside a loop
    located: tuple | None = ()

    def enter(self, eqn: Any) -> "_Context":
        path = None if self.path is None else self.path + (eqn,)
        located = None if self.located is None else self.located + (eqn,)
        return dataclasses.replace(self, call_site=_enter_call(eqn, self.call_site), path=path, located=located)

    def opaque(self) -> "_Context":
        return dataclasses.replace(self, path=None, located=None)

    def branch(self, eqn: Any, index: int) -> "_Context":
        located = None if self.located is None else self.located + ((eqn, index),)
        return dataclasses.replace(self, path=None, located=located)

    def at(self, eqn: Any) -> tuple | None:
        return None if self.path is None else self.path + (eqn,)

    def where(self, eqn: Any) -> tuple | None:
        return None if self.located is None else self.located + (eqn,)


def locate_cuts(closed: Any, leaf_labels: Sequence[Labels]) -> tuple[list[_Flow], Cuts]:
    """Walk a term's primal jaxpr; return the flow at each output and the cuts found."""
    cuts = Cuts()
    empty = frozenset()
    flows = _walk(closed, [_Flow(lab, lab, empty, empty) for lab in leaf_labels], _Context(cuts))
    for leaf, site in flows[0].named if flows else ():
        cuts.named.setdefault(leaf, set()).add(site)
    return flows, cuts


def _walk(closed: Any, ins: list[_Flow], ctx: _Context) -> list[_Flow]:
    jaxpr, _ = _closed(closed)
    empty = _Flow(Labels(), Labels(), frozenset(), frozenset())
    env: dict[Any, _Flow] = {v: empty for v in jaxpr.constvars}
    for v, f in zip(jaxpr.invars, ins):
        env[v] = f

    def read(v: Any) -> _Flow:
        return empty if is_literal(v) else env.get(v, empty)

    for eqn in jaxpr.eqns:
        flows = [read(v) for v in eqn.invars]
        outs = _walk_eqn(eqn, flows, ctx)
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


def _union_of(sets: Sequence[frozenset]) -> frozenset:
    return frozenset().union(*sets) if sets else frozenset()


def _walk_eqn(eqn: Any, flows: list[_Flow], ctx: _Context) -> list[_Flow]:
    name = eqn.primitive.name
    if name in _CALL_PRIMITIVES and _sub_jaxpr_of_call(eqn) is not None:
        sub = _sub_jaxpr_of_call(eqn)
        inner, _ = _closed(sub)
        if len(inner.invars) == len(flows):
            return _walk(sub, flows, ctx.enter(eqn))
    if name == "scan":
        return _walk_scan(eqn, flows, ctx.opaque())
    if name == "cond":
        return _walk_cond(eqn, flows, ctx)

    value = _union([f.value for f in flows])
    index_ops = _index_operands(eqn)
    passes = gradient_passes(eqn)
    floats = [i for i in range(len(flows)) if i not in index_ops and is_float_var(eqn.invars[i])]
    grad_in = _union([flows[i].grad for i in floats])
    lost_in = _union_of([f.lost for f in flows])
    named_in = _union_of([f.named for f in flows])
    site = None
    outs = []
    for j, out in enumerate(eqn.outvars):
        if not is_float(out.aval):
            # Gradient cannot live in a bool/int value: remember what was lost; it is a
            # cut only if this value is turned back into a number later.
            if grad_in:
                site = site or _site(eqn, ctx.call_site)
            lost = frozenset((leaf, site) for leaf in grad_in) if grad_in else frozenset()
            outs.append(_Flow(value, Labels(), lost_in | lost, named_in))
            continue
        grad = _union([flows[i].grad for i in range(len(flows)) if passes[i][j]])
        missing = grad_in - grad
        if missing:
            site = site or _site(eqn, ctx.call_site)
            ctx.cuts.record(missing, site, ctx.at(eqn) if name in PIECEWISE_CONSTANT else None, ctx.where(eqn))
        if name == "convert_element_type" and not is_float_var(eqn.invars[0]):
            # a comparison or an int cast used as a number: the lost gradient is a cut,
            # a jump of this (piecewise constant) output
            for leaf, lost_site in flows[0].lost:
                ctx.cuts.record(Labels({leaf}), lost_site, ctx.at(eqn), ctx.where(eqn))
        outs.append(_Flow(value, grad, frozenset(), named_in | lost_in))
    return outs


def is_float_var(v: Any) -> bool:
    return is_float(v.aval) if not is_literal(v) else is_float(getattr(v, "aval", None))


def _merge(a: _Flow, b: _Flow) -> _Flow:
    return _Flow(a.value | b.value, a.grad | b.grad, a.lost | b.lost, a.named | b.named)


def _walk_scan(eqn: Any, flows: list[_Flow], ctx: _Context) -> list[_Flow]:
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = flows[:n_consts], flows[n_consts : n_consts + n_carry], flows[n_consts + n_carry :]
    outs = carry
    for _ in range(len(carry) + 2):
        outs = _walk(p["jaxpr"], consts + carry + xs, ctx)
        new_carry = [_merge(a, b) for a, b in zip(carry, outs[:n_carry])]
        if new_carry == carry:
            break
        carry = new_carry
    return carry + outs[n_carry:]


def _walk_cond(eqn: Any, flows: list[_Flow], ctx: _Context) -> list[_Flow]:
    index, ops = flows[0], flows[1:]
    outs: list[_Flow] | None = None
    for k, branch in enumerate(eqn.params["branches"]):
        got = _walk(branch, ops, ctx.branch(eqn, k))
        outs = got if outs is None else [_merge(a, b) for a, b in zip(outs, got)]
    assert outs is not None
    return [_Flow(o.value | index.value, o.grad, o.lost | index.lost, o.named | index.named | index.lost)
            for o in outs]


def without_dead_code(closed: Any) -> Any:
    """``closed`` with the equations its outputs do not depend on removed (JAX's own dead
    code elimination, into calls too). A term traced from a whole model (a numpyro site's
    log density) carries the other sites' code, which must not be judged as the term's."""
    try:
        from jax._src.interpreters import partial_eval as pe

        jaxpr = pe.convert_constvars_jaxpr(closed.jaxpr)
        kept, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)
        kept = pe.convert_invars_to_constvars(kept, len(closed.jaxpr.constvars))
        return jcore.ClosedJaxpr(kept, closed.consts)
    except Exception:  # pragma: no cover - a private API moved: judge the whole program
        return closed


def _eval_perturbed(closed: Any, args: Sequence[Any], paths: Sequence[tuple], deltas: Sequence[Any]) -> list[Any]:
    """Evaluate ``closed`` at ``args`` with ``deltas[k]`` added to the (float) outputs of
    the equation at ``paths[k]`` (the enclosing call equations, then the equation)."""
    jaxpr, consts = _closed(closed)
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    heads: dict[int, list[tuple[int, Any, tuple]]] = {}
    for k, path in enumerate(paths):
        head = path[0]
        eqn, branch = head if isinstance(head, tuple) else (head, None)
        heads.setdefault(id(eqn), []).append((k, branch, path[1:]))

    def read(v: Any) -> Any:
        return v.val if is_literal(v) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        entries = [(k, tail) for k, _, tail in heads.get(id(eqn), [])]
        deeper = [(k, branch, tail) for k, branch, tail in heads.get(id(eqn), []) if tail]
        if deeper and deeper[0][1] is not None:  # into a branch of a cond: only the one taken is read
            taken = int(np.clip(int(invals[0]), 0, len(eqn.params["branches"]) - 1))
            inside = [(k, tail) for k, branch, tail in deeper if branch == taken]
            if inside:
                outs = _eval_perturbed(eqn.params["branches"][taken], invals[1:], [tail for _, tail in inside],
                                       [deltas[k] for k, _ in inside])
            else:
                outs = _bind_eqn(eqn, invals)
        elif deeper:
            sub = _sub_jaxpr_of_call(eqn)
            inner, _ = _closed(sub)
            offset = len(invals) - len(inner.invars)
            outs = _eval_perturbed(sub, invals[offset:], [tail for _, _, tail in deeper],
                                   [deltas[k] for k, _, _ in deeper])
        else:
            outs = _bind_eqn(eqn, invals)
        for k, tail in entries:
            if not tail:
                outs = [o if d is None else o + d for o, d in zip(outs, deltas[k])]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def reads_at(closed: Any, args: Sequence[Any], paths: Sequence[tuple]) -> bool:
    """Whether the output of ``closed`` at ``args`` changes, to first order and beyond
    rounding (a derivative above the square root of the machine epsilon), with the value
    at any of ``paths``: false for a value that only enters the unselected side of a
    ``where`` (``select_n``) or a ``cond`` branch not taken at this state, or a shift
    the output is invariant to (logsumexp's), whose cut costs no force here."""
    zeros = [[jnp.zeros(v.aval.shape, v.aval.dtype) if jnp.issubdtype(v.aval.dtype, jnp.inexact) else None
              for v in path[-1].outvars] for path in paths]

    def energy(deltas: list[Any]) -> Any:
        return jnp.sum(_eval_perturbed(closed, args, paths, deltas)[0])

    grads = jax.grad(energy)(zeros)
    # a sensitivity at rounding level is no read: logsumexp detaches its shift, on which
    # its value depends only through rounding (d/d shift = 1 - sum(w) / sum(w))
    return any(bool(jnp.any(~(jnp.abs(g) <= float(np.sqrt(jnp.finfo(g.dtype).eps)))))
               for g in jax.tree_util.tree_leaves(grads))  # NaN counts as read


# -- is a piecewise-constant site a cut or a wrap? --------------------------------------------
def eval_tapped(closed: Any, args: Sequence[Any], paths: Sequence[tuple],
                inputs: bool = False) -> tuple[list[Any], list[list[Any]]]:
    """Evaluate ``closed`` at ``args`` (concrete or traced) and also return the outputs
    (``inputs``: the operands) of the equations at ``paths`` (each the enclosing call
    equations, then the equation; a path into a ``cond`` branch taps nothing)."""
    jaxpr, consts = _closed(closed)
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    heads: dict[int, list[tuple[int, tuple]]] = {}
    for k, path in enumerate(paths):
        heads.setdefault(id(path[0]), []).append((k, path[1:]))
    taps: list[list[Any]] = [[] for _ in paths]

    def read(v: Any) -> Any:
        return v.val if is_literal(v) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        entries = heads.get(id(eqn), [])
        deeper = [(k, tail) for k, tail in entries if tail]
        if deeper:
            sub = _sub_jaxpr_of_call(eqn)
            inner, _ = _closed(sub)
            offset = len(invals) - len(inner.invars)
            outs, inner_taps = eval_tapped(sub, invals[offset:], [tail for _, tail in deeper], inputs)
            for (k, _), got in zip(deeper, inner_taps):
                taps[k] = got
        else:
            outs = _bind_eqn(eqn, invals)
        for k, tail in entries:
            if not tail:
                taps[k] = list(invals if inputs else outs)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars], taps


def operand_moves_at(closed: Any, args: Sequence[Any], paths: Sequence[tuple], directions: int = 2,
                     seed: int = 0) -> bool:
    """Whether the operands of the equations at ``paths`` change, to first order and beyond
    rounding, when the state ``args`` moves along random directions. A ``stop_gradient``
    whose operand does not move at this state removes no force here: tfp's
    ``clip_by_value_preserve_gradient``, ``x + stop_gradient(clip(x) - x)``, inside the
    clip range. Unknown (a path into a ``cond`` branch) counts as moving."""
    floats = [jnp.issubdtype(jnp.result_type(a), jnp.inexact) for a in args]  # complex links too

    def operands(xs: list[Any]) -> list[Any]:
        full = [x if f else a for x, f, a in zip(xs, floats, args)]
        taps = eval_tapped(closed, full, paths, inputs=True)[1]
        return [t for tap in taps for t in tap if jnp.issubdtype(jnp.result_type(t), jnp.inexact)]

    if any(not tap for tap in eval_tapped(closed, list(args), paths, inputs=True)[1]):
        return True
    key = jax.random.key(seed)
    for d in range(directions):
        keys = jax.random.split(jax.random.fold_in(key, d), len(args))
        tangent = [jax.random.normal(k, jnp.shape(a), jnp.result_type(a)) if f else jnp.zeros_like(a)
                   for k, a, f in zip(keys, args, floats)]
        values, moved = jax.jvp(operands, (list(args),), (tangent,))
        for v, t in zip(values, moved):
            scale = float(np.sqrt(jnp.finfo(jnp.result_type(t)).eps)) * (1.0 + float(jnp.max(jnp.abs(v))))
            if bool(jnp.any(~(jnp.abs(t) <= scale))):  # NaN counts as moving
                return True
    return False


@dataclasses.dataclass
class Continuity:
    """What :func:`continuity` saw: ``crossings`` of the site's jumps reached, the
    largest change of the energy across one (``largest``) against what the smooth part
    and rounding explain there (``allowed``)."""

    continuous: bool | None  # None: no jump reached from this state
    crossings: int
    largest: float
    allowed: float


def continuity(closed: Any, leaves: Sequence[Any], paths: Sequence[tuple], *, lines: int = 3,
               seed: int = 0) -> Continuity:
    """Is the term's value continuous across the jumps of the piecewise-constant
    outputs at ``paths``?

    From the state ``leaves``, along ``lines`` random directions, find the nearest
    point where a watched output changes (doubling the distance, then bisecting down to
    adjacent floating-point states), and compare the energy on both sides: a change
    beyond the smooth part (the gradient times the gap) and rounding (``256 eps |U|``)
    is a jump of the energy, so the site is a cut. A minimum image, a ``jnp.mod``
    wrap or a mask multiplied by zero changes nothing there: the derivative is right
    except on a set of measure zero, and the site is a wrap.
    """
    from jax.flatten_util import ravel_pytree

    x0, unravel = ravel_pytree(list(leaves))
    dtype = x0.dtype
    eps = float(jnp.finfo(dtype).eps)

    def energy_fn(x):
        return eval_tapped(closed, unravel(x), [])[0][0]

    watch = jax.jit(lambda x: [o for tap in eval_tapped(closed, unravel(x), paths)[1] for o in tap])
    value_and_grad = jax.jit(jax.value_and_grad(energy_fn))
    h0 = [np.asarray(h) for h in watch(x0)]

    def changed(x: Any) -> bool:
        return any(not np.array_equal(np.asarray(h), g, equal_nan=True) for h, g in zip(watch(x), h0))

    x0_host = np.asarray(x0, np.float64)
    scale = max(float(np.sqrt(np.mean(x0_host**2))), 1.0)
    rng = np.random.default_rng(seed)
    crossings, largest, allowed = 0, 0.0, 0.0
    for _ in range(lines):
        v = rng.standard_normal(x0_host.size)
        v /= np.sqrt(np.mean(v**2))
        at = lambda t: jnp.asarray(x0_host + t * v, dtype)  # noqa: E731
        bracket = None
        for sign in (1.0, -1.0):
            previous, t = 0.0, 1e-3 * scale
            while t < 1e4 * scale and bracket is None:
                if changed(at(sign * t)):
                    bracket = (sign * previous, sign * t)
                previous, t = t, 2.0 * t
            if bracket is not None:
                break
        if bracket is None:
            continue
        lo, hi = bracket
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            x_mid = np.asarray(at(mid))
            if np.array_equal(x_mid, np.asarray(at(lo))) or np.array_equal(x_mid, np.asarray(at(hi))):
                break
            if changed(at(mid)):
                hi = mid
            else:
                lo = mid
        x_lo, x_hi = at(lo), at(hi)
        (e_lo, g_lo), (e_hi, g_hi) = value_and_grad(x_lo), value_and_grad(x_hi)
        e_lo, e_hi = float(e_lo), float(e_hi)
        gap = np.asarray(x_hi, np.float64) - np.asarray(x_lo, np.float64)
        smooth = abs(float(np.dot(np.asarray(g_lo, np.float64), gap))) + abs(float(np.dot(np.asarray(g_hi, np.float64), gap)))
        tolerance = 10.0 * smooth + 256.0 * eps * max(abs(e_lo), abs(e_hi), 1.0)
        jump = abs(e_hi - e_lo) if np.isfinite(e_hi - e_lo) else np.inf
        crossings += 1
        if jump > largest or crossings == 1:
            largest, allowed = max(largest, jump), tolerance
        if not jump <= tolerance:
            return Continuity(False, crossings, jump, tolerance)
    return Continuity(True if crossings else None, crossings, largest, allowed)


# -- element reach with every selection open -------------------------------------------------
def eval_open_selects(closed: Any, args: Sequence[Any]) -> list[Any]:
    """Evaluate ``closed`` (concretely or under tracing) with every float ``select_n``
    replaced by the sum of its cases, so a NaN in any case, chosen or not, reaches the
    output. Pulling a NaN cotangent back this way marks every element with a path to
    the energy through *some* selection: what a state-dependent ``where`` hides at this
    state is reached, what no selection could reach (an unused element, a
    ``stop_gradient``-ed one) is not. Loops and branches are evaluated as they are."""
    jaxpr, consts = _closed(closed)
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> Any:
        return v.val if is_literal(v) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub_jaxpr_of_call(eqn) if (name in _CALL_PRIMITIVES or name in _CUSTOM_PRIMITIVES) else None
        if name == "select_n" and is_float(eqn.outvars[0].aval):
            total = invals[1]
            for case in invals[2:]:
                total = total + case
            outs = [total]
        elif sub is not None and len(_closed(sub)[0].invars) <= len(invals):
            offset = len(invals) - len(_closed(sub)[0].invars)
            outs = eval_open_selects(sub, invals[offset:])
        else:
            outs = _bind_eqn(eqn, invals)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


# -- replay: which NaN/Inf reaches the output? ---------------------------------------------------
@dataclasses.dataclass
class NonfiniteOrigin:
    primitive: str
    source: str | None
    function: str | None
    indices: list[list[int]]
    via: str | None = None
    cause: str | None = None  # "overflow", "singularity" or "domain" (see :func:`cause_of`)


def _is_float_array(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # typed keys (tfp, jax.random.key)
        return False
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating))


def _all_finite(x: Any) -> bool:
    if not _is_float_array(x):
        return True
    return bool(np.all(np.isfinite(np.asarray(x))))


def _sanitized(x: Any) -> Any:
    """``x`` with its non-finite elements replaced by 1 (finite, and no new pole of
    log, division or rsqrt downstream)."""
    if not _is_float_array(x):
        return x
    return jnp.where(jnp.isfinite(x), x, jnp.ones((), jnp.asarray(x).dtype))


_POLES = {"div": (1,), "rem": (1,)}  # primitive -> the operands whose zero is a pole
# primitives whose poles are not at zero: operand -> is it at a pole
_POLES_ELSEWHERE = {
    "log1p": lambda a: a == -1,
    "atanh": lambda a: np.abs(a) == 1,
    "lgamma": lambda a: (a <= 0) & (a == np.round(a)),
    "digamma": lambda a: (a <= 0) & (a == np.round(a)),
}


def _fresh_nonfinite(invals: Sequence[Any], out: Any) -> np.ndarray | None:
    """Elements of ``out`` that are non-finite while the inputs there are finite: the
    ones this equation created. For an equation that is not elementwise (a reduction,
    a gather) that is known only when every input is finite; ``None`` otherwise (and for
    non-float outputs)."""
    if not _is_float_array(out):
        return None
    bad = ~np.isfinite(np.asarray(out))
    if all(_all_finite(x) for x in invals):
        return bad
    shape = np.shape(out)
    fresh = bad.copy()
    for x in invals:
        if not _is_float_array(x):
            continue
        a = np.asarray(x)
        if a.shape == shape:
            fresh &= np.isfinite(a)
        elif a.ndim == 0:
            if not np.isfinite(a):
                return np.zeros(shape, bool)
        else:
            return None  # not elementwise: cannot tell what is new
    return fresh


def cause_of(primitive: str, invals: Sequence[Any], out: Any, element: tuple | None = None) -> str:
    """Why finite inputs gave a non-finite output, judged at ``element`` (default: its
    first bad element).

    ``singularity``: a pole, some input exactly zero there (``1/0``, ``0/0``, ``log(0)``,
    ``rsqrt(0)``, ``0**-n``; for a division only the divisor counts), or at the pole of
    ``log1p`` (-1), ``atanh`` (+-1), ``lgamma``/``digamma`` (0, -1, ...). ``domain``: NaN
    from finite, non-zero inputs (``sqrt``/``log`` of a negative number, a fractional
    power of one). ``overflow``: an infinity from finite, non-zero inputs too large for
    the type (``exp``, ``x**12``, a product or sum of large numbers).
    """
    out = np.asarray(out)
    if element is None:
        bad = np.argwhere(~np.isfinite(out))
        if len(bad) == 0:
            return "domain"
        element = tuple(int(i) for i in bad[0])
    at_pole = _POLES_ELSEWHERE.get(primitive, lambda a: a == 0)
    operands = _POLES.get(primitive, range(len(invals)))
    for k in operands:
        x = invals[k]
        dtype = getattr(x, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.number):
            continue
        value = a if a.ndim == 0 else (a[element] if a.shape == out.shape else None)
        if value is not None and bool(at_pole(value)):
            return "singularity"
    return "domain" if np.isnan(out[element]) else "overflow"


class _Replay:
    """One evaluation of a jaxpr, equation by equation, in which every *origin* (an
    equation that turns finite inputs into NaN/Inf) is recorded and, except the one
    let through, has its non-finite elements replaced by finite ones."""

    def __init__(self, let_through: tuple | None, elements: np.ndarray | None = None):
        self.let_through = let_through
        self.elements = elements  # flat indices of the let-through output's elements (None: all)
        self.origins: list[tuple[tuple, NonfiniteOrigin]] = []
        # key -> (primitive, inputs, bad output, its new non-finite elements)
        self.evidence: dict[tuple, tuple[str, list[Any], Any, np.ndarray]] = {}

    def run(self, closed: Any, args: Sequence[Any], key: tuple = (), call_site: tuple | None = None) -> list[Any]:
        jaxpr, consts = _closed(closed)
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(v: Any) -> Any:
            return v.val if is_literal(v) else env[v]

        for index, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            outs = _bind_eqn(eqn, invals)
            if not all(_all_finite(o) for o in outs):
                outs = self._inside(eqn, invals, outs, key + (index,), call_site)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _inside(self, eqn: Any, invals: list[Any], outs: list[Any], key: tuple, call_site: tuple | None) -> list[Any]:
        name = eqn.primitive.name
        try:
            if (name in _CALL_PRIMITIVES or name in _CUSTOM_PRIMITIVES) and _sub_jaxpr_of_call(eqn) is not None:
                sub = _sub_jaxpr_of_call(eqn)
                inner, _ = _closed(sub)
                offset = len(invals) - len(inner.invars)
                return self.run(sub, invals[offset:], key, _enter_call(eqn, call_site))
            if name == "scan":
                return self._scan(eqn, invals, key, call_site)
            if name == "cond":
                branch = eqn.params["branches"][int(np.asarray(invals[0]))]
                return self.run(branch, invals[1:], key, call_site)
        except Exception:  # an equation the replay cannot enter: judge it as a whole
            pass
        fresh = [_fresh_nonfinite(invals, o) for o in outs]
        if not any(f is not None and f.any() for f in fresh):
            return outs  # non-finite values passing through: not an origin
        k_bad = next(k for k, f in enumerate(fresh) if f is not None and f.any())
        bad = outs[k_bad]
        indices = [list(map(int, i)) for i in np.argwhere(fresh[k_bad])[:8]]
        source, function, via = source_of(eqn), function_of(eqn), None
        if call_site is not None and source is None:
            source, function, via = call_site[0], call_site[1], call_site[3]
        element = tuple(int(i) for i in np.argwhere(fresh[k_bad])[0])
        origin = NonfiniteOrigin(primitive_label(eqn), source, function, indices, via,
                                 cause_of(name, invals, bad, element))
        self.origins.append((key, origin))
        self.evidence[key] = (name, invals, bad, fresh[k_bad])
        if key != self.let_through:
            keep = [None if f is None else ~f for f in fresh]  # keep what flows in, sanitize what is new
        elif self.elements is None:
            return outs
        else:  # let only the chosen new elements of the first output through
            chosen = np.zeros(np.size(bad), bool)
            chosen[self.elements] = True
            keep = [None if f is None else ~f for f in fresh]
            keep[k_bad] = ~fresh[k_bad] | chosen.reshape(np.shape(bad))
        return [o if m is None else jnp.where(m, o, _sanitized(o)) for o, m in zip(outs, keep)]

    def _scan(self, eqn: Any, invals: list[Any], key: tuple, call_site: tuple | None) -> list[Any]:
        p = eqn.params
        n_consts, n_carry = p["num_consts"], p["num_carry"]
        consts, carry, xs = invals[:n_consts], invals[n_consts : n_consts + n_carry], invals[n_consts + n_carry :]
        length = p["length"]
        ys: list[list[Any]] = []
        for t in range(length):
            index = length - 1 - t if p.get("reverse", False) else t
            out = self.run(p["jaxpr"], consts + carry + [x[index] for x in xs], key + (index,), call_site)
            carry, y = list(out[:n_carry]), out[n_carry:]
            ys.append(y)
        if p.get("reverse", False):
            ys = ys[::-1]
        stacked = [jnp.stack([y[k] for y in ys]) for k in range(len(ys[0]))] if ys and ys[0] else []
        if not ys:
            stacked = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in eqn.outvars[n_carry:]]
        return carry + stacked


MAX_ORIGINS_TRIED = 32


def first_nonfinite(closed: Any, args: Sequence[Any]) -> NonfiniteOrigin | None:
    """The first equation, in program order, that turned finite inputs into NaN/Inf
    *whose non-finite values reach an output*.

    A NaN that the program computes and then throws away (the unselected branch of a
    ``where``, jax-md's ``safe_mask`` on the pair diagonal) is not blamed: each
    origin is let through on its own, with every other origin's non-finite elements
    replaced by finite ones, and the first whose NaN/Inf still reaches an output is
    the one reported. Within it, the elements that reach are narrowed down by halving
    (an equation over all pairs may hold discarded NaNs next to the one that
    matters), and the cause is judged at a reaching element. Recurses into calls,
    custom rules, ``scan`` (iteration by iteration) and the taken branch of ``cond``.
    """
    survey = _Replay(None)
    survey.run(closed, args)

    def reaches(key: tuple, elements: np.ndarray | None = None) -> bool:
        outs = _Replay(key, elements).run(closed, args)
        return not all(_all_finite(o) for o in outs)

    # each trial is one more op-by-op replay: test the first few origins (an origin
    # inside a scan counts once per iteration)
    for key, origin in survey.origins[:MAX_ORIGINS_TRIED]:
        if not reaches(key):
            continue
        name, invals, bad, fresh = survey.evidence[key]
        candidates = np.flatnonzero(fresh)
        while len(candidates) > 1:
            half = candidates[: len(candidates) // 2]
            candidates = half if reaches(key, half) else candidates[len(candidates) // 2 :]
        if len(candidates) == 1:
            element = tuple(int(i) for i in np.unravel_index(candidates[0], np.shape(bad)))
            origin.cause = cause_of(name, invals, bad, element)
            origin.indices = [list(element)]
        return origin
    return survey.origins[0][1] if survey.origins else None


def as_flat_function(fn: Callable[[Any], Any], position: Any) -> tuple[Callable[..., Any], list[Any]]:
    """``fn(pytree)`` as ``g(*leaves)`` with the leaves of ``position``."""
    leaves, treedef = jax.tree_util.tree_flatten(position)

    def flat(*xs: Any) -> Any:
        return fn(jax.tree_util.tree_unflatten(treedef, list(xs)))

    return flat, leaves
