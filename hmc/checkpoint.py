"""The checkpoint schema: one record shared by the driver, the run directory and the runner.

A :class:`Checkpoint` holds everything a :func:`hmc.sample` call needs to continue
bit-exactly where it stopped: the loop's counters (:class:`Counters`, stored as
JSON-able ``meta``), the chain and adaptation states as flat leaves, and the
per-chunk outputs so far. Random numbers are a function of ``(seed, chain,
iteration)``, so no key state is needed beyond the seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

STAT_NAMES = ("lp", "energy", "acceptance_rate", "diverging", "step_size", "n_steps", "guard_tripped",
              "delta_energy")
OPTIONAL_STATS = ("beta_index", "tree_depth", "group_defect")  # tempering: the temperature index of every replica slot; nuts
STAT_PREFIX = "stat:"  # sampling outputs: statistics are told from observables by this prefix
WARMUP_STATS = ("acceptance_rate", "step_size", "diverging", "guard_tripped", "n_steps", "step_limit",
                "adapted_step", "trajectory_length", "length_jitter", "swap_acceptance", "ladder", "tree_depth")
FORMAT = 1


@dataclasses.dataclass
class Counters:
    """The host loop's counters: where a run stands between two chunks."""

    warmup_done: int = 0
    drawn: int = 0
    trajectories: int = 0
    tripped_total: int = 0
    # the fraction of trips is judged over the sampling phase (the settled sampler)
    judged_trajectories: int = 0
    judged_trips: int = 0
    halted: bool = False
    halt_reason: str | None = None
    guard_seconds: float = 0.0
    elapsed: float = 0.0
    chunk_index: int = 0  # probe rotation
    probe_seen: list = dataclasses.field(default_factory=list)  # [leaf, indices] already reported
    events: list = dataclasses.field(default_factory=list)  # GuardEvent dicts
    complete: bool = False

    @property
    def done(self) -> int:
        return self.warmup_done + self.drawn

    def to_meta(self) -> dict[str, Any]:
        return dict(format=FORMAT, **dataclasses.asdict(self))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Counters:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


@dataclasses.dataclass
class Checkpoint:
    """``meta`` (see :class:`Counters`), ``arrays`` (the chain states and the adaptation
    state as flat leaves ``"state/<i>"``, ``"adapt/<i>"``) and ``warmup_chunks`` /
    ``sample_chunks``, the per-chunk outputs so far (scan layout ``(iteration, chain, ...)``)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    warmup_chunks: list[dict[str, np.ndarray]]
    sample_chunks: list[dict[str, np.ndarray]]

    FORMAT = FORMAT

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def counters(self) -> Counters:
        return Counters.from_meta(self.meta)


@dataclasses.dataclass
class LoopState:
    """What the host loop carries from chunk to chunk: the counters, the chain and
    adaptation states (on the devices) and the per-chunk outputs so far."""

    counters: Counters
    states: Any
    adapt_state: Any
    warmup_chunks: list[dict[str, np.ndarray]]
    sample_chunks: list[dict[str, np.ndarray]]

    @classmethod
    def begin(cls, states: Any, adapt_state: Any, resume: Checkpoint | None) -> LoopState:
        """A fresh loop, or the one ``resume`` left (its states already restored by the caller)."""
        if resume is None:
            return cls(Counters(), states, adapt_state, [], [])
        return cls(resume.counters, states, adapt_state, list(resume.warmup_chunks), list(resume.sample_chunks))

    def to_checkpoint(self, host: Any = np.asarray) -> Checkpoint:
        """The checkpoint of this state; ``host`` brings device arrays to this host
        (an all-gather with several processes)."""
        arrays = flat_arrays("state", host(self.states))
        arrays.update(flat_arrays("adapt", host(self.adapt_state)))
        return Checkpoint(meta=self.counters.to_meta(), arrays=arrays, warmup_chunks=list(self.warmup_chunks),
                          sample_chunks=list(self.sample_chunks))


def flat_arrays(prefix: str, tree: PyTree) -> dict[str, np.ndarray]:
    """``tree``'s leaves as ``{f"{prefix}/{i}": leaf}``."""
    return {f"{prefix}/{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def restore_leaves(template: PyTree, arrays: dict[str, np.ndarray], prefix: str) -> PyTree:
    """``template``'s tree with its leaves replaced by ``arrays[f"{prefix}/{i}"]`` (shapes and dtypes checked)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    restored = []
    for i, leaf in enumerate(leaves):
        key = f"{prefix}/{i}"
        if key not in arrays:
            raise ValueError(f"checkpoint lacks {key}: it was written for a different model or settings")
        saved = np.asarray(arrays[key])
        if saved.shape != leaf.shape or saved.dtype != leaf.dtype:
            raise ValueError(f"checkpoint {key} has {saved.dtype}{list(saved.shape)}, this run needs "
                             f"{leaf.dtype}{list(leaf.shape)}: it was written for a different model or settings")
        restored.append(jnp.asarray(saved))
    if sum(k.startswith(prefix + "/") for k in arrays) != len(leaves):
        raise ValueError(f"checkpoint has a different number of {prefix} arrays: written for other settings")
    return jax.tree_util.tree_unflatten(treedef, restored)


def stack_chunks(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-chunk outputs (scan layout ``(draw, chain, ...)``) as ``(chain, draw, ...)`` arrays."""
    if not chunks:
        return {}
    return {k: np.swapaxes(np.concatenate([c[k] for c in chunks]), 0, 1) for k in chunks[0]}


__all__ = ["OPTIONAL_STATS", "STAT_NAMES", "STAT_PREFIX", "WARMUP_STATS", "Checkpoint", "Counters", "LoopState", "flat_arrays",
           "restore_leaves", "stack_chunks"]
