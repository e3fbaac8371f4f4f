"""One lattice over several devices: which axis of each field is split, a shift whose
forward and backward passes both become halo exchanges, and what a compiled program sends.

With ``sample(mesh={"chain": c, "lattice": k})`` every chain's lattice is split over
``k`` devices along one axis per leaf: **the first axis listed in**
``Potential.lattice_axes[leaf]`` (list the axis you want split first; the models of
:mod:`physics_models` list the first space direction first). Its extent must be a
multiple of ``k``. The momentum, the gradient and the auxiliary fields named in
``lattice_axes`` are split alike (:func:`hmc.devices.place`); the compiler partitions
the rest of the program from these inputs (GSPMD/Shardy sharding propagation).

What the partitioner makes of a model's operations (checked in ``tests/test_lattice.py``
on forced host devices, and printed by ``scripts/lattice_scaling.py``):

- ``jnp.roll`` along the split axis: the forward shift becomes a ``collective-permute``
  of the boundary layer. Its *transpose* (in the force) becomes pads, which the
  partitioner turns into permutes plus an ``all-reduce`` of a boundary layer over all
  ``k`` devices: no gather of the field, but a collective with ``log k`` latency.
  :func:`shift` (``lax.split`` and ``concatenate``, each the other's transpose) has the
  shift back as its gradient, so both passes are permutes of one layer each; the models
  use it. On one device it gives ``jnp.roll``'s values and gradients bit for bit.
- sums over sites (the action, a plaquette): local sums, then an ``all-reduce`` of a
  scalar per chain.
- a roll along an axis that is not split: local, no communication.
- ``jnp.vdot`` of split fields: its flattening reshape becomes an ``all-gather``; a
  contraction of all axes (``jnp.tensordot(a, b, a.ndim)``) is a local product and an
  ``all-reduce`` of a scalar, with vdot's value bit for bit on one device.
- a field built from a constant (a fixed noise vector, a point source): nothing tells the
  partitioner how to split it, and it may choose another axis and reshard with
  ``all-to-all`` at every shift. :func:`constrain` pins it to the lattice split.
- a dynamic index over chains (the in-loop guard picking a tripped chain's position) is
  an ``all-gather`` over the chain devices; it sits in a ``conditional`` branch taken only
  on a trip (:attr:`Collective.conditional`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

PyTree = Any


def shift(field: jax.Array, axis: int, steps: int = 1) -> jax.Array:
    """``shift(field, axis, steps)[..., x, ...] = field[..., x + steps, ...]`` (periodic): the
    neighbour field ``phi(x + steps mu)``, the values of ``jnp.roll(field, -steps, axis)``.

    Built from ``lax.split`` and ``concatenate``, each the other's transpose: the gradient
    of a shift is the shift back, and on a split axis both compile to a
    ``collective-permute`` of ``|steps|`` layers. ``jnp.roll`` slices, and the transpose of
    a slice is a pad, which the partitioner realises with an extra ``all-reduce`` of a
    boundary layer over all devices of the lattice (see the module docstring)."""
    axis = axis % field.ndim
    n = field.shape[axis]
    s = steps % n
    if s == 0:
        return field
    head, tail = jax.lax.split(field, (s, n - s), axis=axis)
    return jax.lax.concatenate([tail, head], axis)


def constrain(field: jax.Array, axis: int) -> jax.Array:
    """``field``, split along ``axis`` over the ``"lattice"`` devices when the program is
    traced for a lattice mesh (its other axes left to the partitioner); ``field`` itself
    otherwise. For a field the partitioner cannot place from the inputs: one built from a
    constant (a fixed noise or point source), which it may split along another axis and
    then move with all-to-alls at every shift. Works under ``vmap`` (the batch axes stay
    free)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or dict(mesh.shape).get("lattice", 1) == 1:
        return field
    axis = axis % field.ndim
    spec = [PartitionSpec.UNCONSTRAINED] * field.ndim
    spec[axis] = "lattice"
    return jax.lax.with_sharding_constraint(field, PartitionSpec(*spec))


# -- which axis is split ------------------------------------------------------------
def field_shapes(states: Any) -> dict[str, tuple[int, ...]]:
    """``{leaf: shape of one chain}`` of the chain states' position leaves and auxiliary fields."""
    from hmc.potential import leaf_names

    shapes = {}
    for tree in (states.position, getattr(states, "auxiliary", None) or {}):
        leaves = jax.tree_util.tree_leaves(tree)
        shapes.update({name: tuple(np.shape(x))[1:] for name, x in zip(leaf_names(tree), leaves)})
    return shapes


def split_axes(lattice_axes: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]],
               devices: int) -> dict[str, int]:
    """``{leaf: the axis (of one chain's leaf) split over devices}``: the first of the leaf's
    ``lattice_axes``, whose extent must be a multiple of ``devices``; a ValueError naming the
    leaf, the axis and the sizes otherwise."""
    if not lattice_axes:
        raise ValueError(f"a mesh with lattice={devices} needs a Potential with lattice_axes (the axes of "
                         "each leaf that a lattice mesh may split); this one declares none")
    split = {}
    for name, axes in lattice_axes.items():
        if name not in shapes:
            raise ValueError(f"lattice_axes names leaf {name!r}, but the state and auxiliary fields are "
                             f"{sorted(shapes)}")
        shape = shapes[name]
        if max(axes) >= len(shape):
            raise ValueError(f"lattice_axes[{name!r}] = {tuple(axes)}, but leaf {name!r} has shape {shape} "
                             f"({len(shape)} axes, without the chain axis)")
        axis = axes[0]
        if shape[axis] % devices:
            sizes = ", ".join(f"axis {a}: {shape[a]}" for a in axes)
            raise ValueError(f"leaf {name!r}: lattice axis {axis} has size {shape[axis]}, not a multiple of the "
                             f"{devices} devices that share the lattice (its lattice axes: {sizes}; the first "
                             "listed is split: list a divisible one first, or choose another mesh lattice)")
        split[name] = axis
    return split


def partition_spec(path: Any, ndim: int, split: Mapping[str, int],
                   ranks: Mapping[str, int] | None = None) -> PartitionSpec:
    """The spec of a chain-state leaf at ``path`` with ``ndim`` axes (chain axis first): split
    over ``"chain"`` and, for a leaf of a lattice field (a dict key named in ``split``), over
    ``"lattice"`` along its split axis. ``ranks`` (``{leaf: axes of one chain's leaf}``) counts
    that axis from the leaf's end, so that a state with more batch axes than the chain's
    (the replicas of :mod:`hmc.kernels.tempering`, ``(chain, replica, *leaf)``) is split on
    the lattice axis, not the batch axis; without ``ranks``, axis ``1 + split[leaf]``."""
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    name = names[-1] if names else None
    if name in split:
        rank = ranks[name] if ranks is not None and name in ranks else ndim - 1
        if ndim >= 1 + rank and rank > split[name]:
            spec: list[Any] = ["chain"] + [None] * (ndim - 1)
            spec[ndim - rank + split[name]] = "lattice"
            return PartitionSpec(*spec)
    return PartitionSpec("chain") if ndim else PartitionSpec()


# -- what a compiled program sends ------------------------------------------------------
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (.+?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled (partitioned) HLO module: its op, its result arrays
    (``(dtype, shape)`` per device) and their bytes; ``conditional``: it sits in a branch of a
    ``conditional`` (or in a computation only such a branch calls), so it runs only when that
    branch is taken (the guard's handling of a trip), not at every iteration."""

    op: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]
    line: str
    conditional: bool = False

    @property
    def bytes(self) -> int:
        return sum(math.prod(shape) * _itemsize(dtype) for dtype, shape in self.arrays)

    @property
    def largest(self) -> int:
        """Elements of the largest result array."""
        return max((math.prod(shape) for _, shape in self.arrays), default=0)


def _itemsize(dtype: str) -> int:
    return _BYTES.get(dtype, max(int(dtype[1:]) // 8, 1) if dtype[1:].isdigit() else 4)


_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+))")


def _computations(hlo_text: str) -> dict[str, list[str]]:
    """``{computation name: its lines}`` of an HLO module's text."""
    found: dict[str, list[str]] = {"": []}  # "": lines outside any computation (a fragment)
    current = ""
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            current = match.group(2)
            found[current] = []
        else:
            found[current].append(line)
    return found


def _conditional_only(computations: dict[str, list[str]]) -> set[str]:
    """The computations reached only through a branch of a ``conditional``."""
    calls: dict[str, set[str]] = {name: set() for name in computations}
    branches: set[str] = set()
    for name, lines in computations.items():
        for line in lines:
            for match in _BRANCHES.finditer(line):
                listed = match.group(1) or match.group(2) or ""
                branches.update(b.strip().lstrip("%") for b in listed.split(",") if b.strip())
            calls[name].update(m for m in _CALLED.findall(line) if m in computations)
    called = set().union(*calls.values())
    plain, stack = set(), [n for n in computations if n not in branches and n not in called]
    while stack:  # reachable from the entry without passing a branch
        name = stack.pop()
        if name in plain:
            continue
        plain.add(name)
        stack.extend(c for c in calls.get(name, ()) if c not in branches)
    return set(computations) - plain


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of ``jax.jit(f).lower(...).compile().as_text()`` (async ``-start`` ops
    counted once, their ``-done`` halves not), in program order. Bytes are per device and
    per execution of the op's computation (an op in a loop body counts once)."""
    computations = _computations(hlo_text)
    conditional = _conditional_only(computations)
    found = []
    for name, lines in computations.items():
        for line in lines:
            match = _OP.match(line)
            if match:
                arrays = tuple((dtype, tuple(int(n) for n in dims.split(",") if n))
                               for dtype, dims in _ARRAY.findall(match.group(1)))
                if match.group(2) == "collective-permute" and len(arrays) > 1 and "-start(" in line:
                    arrays = arrays[:1]  # (operand, result, contexts...): the data once
                found.append(Collective(match.group(2), arrays, line.strip(), name in conditional))
    return found


def traffic(hlo_text: str, conditional: bool = True) -> dict[str, dict[str, int]]:
    """``{op: {"count": n, "bytes": b}}`` over :func:`collectives` (``conditional=False``:
    without those in conditional branches)."""
    out: dict[str, dict[str, int]] = {}
    for c in collectives(hlo_text):
        if c.conditional and not conditional:
            continue
        entry = out.setdefault(c.op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += c.bytes
    return out


def gathers_of_fields(hlo_text: str, field_elements: int, conditional: bool = True) -> list[Collective]:
    """Collectives that move a whole field: an all-gather or all-to-all of at least
    ``field_elements`` elements, or any collective whose result has that many (a halo
    exchange moves a boundary layer, a reduction a scalar per chain); ``conditional=False``:
    only those that run at every execution (not in a conditional branch)."""
    return [c for c in collectives(hlo_text)
            if c.largest >= field_elements and (conditional or not c.conditional)]


__all__ = ["Collective", "collectives", "constrain", "field_shapes", "gathers_of_fields", "partition_spec", "shift",
           "split_axes", "traffic"]
