"""Replica exchange: non-reversible parallel tempering (NRPT) around the HMC kernel.

Each chain carries ``R`` replicas of the state at inverse temperatures
``beta_0 = 1 > beta_1 > ... > beta_{R-1} = beta_min``; replica ``r`` samples
``exp(-(beta U_T + U_rest))``, with ``U_T`` the tempered terms (all, by default) and
``U_rest`` the others (a prior kept at ``beta = 1``). One transition moves every
replica by one HMC trajectory (vmapped: the replicas are a batch axis inside the chain)
and then proposes swaps between neighbouring temperatures by the deterministic even/odd
scheme (DEO): on even transitions the pairs ``(0, 1), (2, 3), ...``, on odd ones
``(1, 2), (3, 4), ...``. A swap exchanges the temperature *labels* of two replicas, not
their fields; its acceptance is ``min(1, exp((beta_i - beta_{i+1}) (U_T(x_i) - U_T(x_{i+1}))))``.
The deterministic alternation makes the temperature index of each replica a
non-reversible walk: its round-trip rate is ``(2 + 2 sum_i r_i / (1 - r_i))^-1`` with
``r_i`` the rejection rate of pair ``i`` (Syed, Bouchard-Cote, Deligiannidis & Doucet,
JRSS-B 84 (2022) 321), where reversible swaps collapse as replicas are added.

Draws and observables come from the replica at ``beta = 1`` (the chain's ``position``).
The ladder lives in the chain state (so a checkpoint resumes it bit for bit) and is
adapted in warmup by the driver in rounds (:func:`adapt_ladder`): the cumulative
rejection ``Lambda(beta)`` is made equally spaced, which equalises the pairs' rejection
rates; ``Lambda = sum_i r_i`` is the communication barrier.

Every replica uses the target's step size and trajectory. When every term is tempered,
replica ``beta`` runs with the mass matrix ``beta M`` (inverse ``M^-1 / beta``): HMC on
``beta U`` then has the equations of motion in ``q`` of ``U``, with velocities
``beta^(-1/2)`` larger, so the step is as stable and a trajectory covers the same phase
at every temperature while reaching the wider tempered distribution; with some terms kept
at ``beta = 1`` every replica uses the target's mass matrix.

Auxiliary fields (pseudofermions) are redrawn at each transition by a heat bath for the
untempered action, so a potential with them tempers only named terms that do not read them
(the Schwinger model's ``gauge``: every replica keeps the fermion determinant at full power).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from hmc import integrators as _integrators
from hmc import rng as _rng
from hmc.kernels.base import Info, Kernel, Params, check_guard

PyTree = Any
PILOT_REPLICAS, PILOT_DRAWS, MAX_REPLICAS = 8, 200, 64  # replicas: "auto"
SWAP_STREAM = 5  # fold_in(key, 5): the keys of a transition's swap tests
TEMPERING_KEYS = ("replicas", "beta_min", "ladder", "terms", "adapt", "record", "swaps")


class TemperedState(NamedTuple):
    """One chain: the ``beta = 1`` replica's ``position``, ``potential_energy`` and gradient
    (what the driver reads), and the replica system.

    ``replicas`` holds the ``R`` base-kernel states (leading axis: the replica slot, each
    at its own temperature); ``slot_of[i]`` is the slot at temperature index ``i`` and
    ``ladder[i]`` that temperature. ``rejection[i]``/``attempts[i]`` sum the swap
    rejection probabilities of pair ``(i, i + 1)`` since the last reset, ``last_end[s]``
    is the end of the ladder slot ``s`` visited last (0: none yet, 1: the target, 2: the
    reference), ``round_trips`` the completed target -> reference -> target trips since the
    last reset, ``transitions`` the transitions so far (the DEO parity), ``counted`` those
    since the last reset."""

    position: PyTree
    potential_energy: Array
    potential_energy_grad: PyTree
    replicas: Any
    slot_of: Array
    ladder: Array
    rejection: Array
    attempts: Array
    last_end: Array
    round_trips: Array
    transitions: Array
    counted: Array


# :class:`hmc.kernels.base.Info` of the ``beta = 1`` replica (``num_steps``: the steps of all
# replicas; ``guard_*``: the first tripped replica's), and the replicas': ``replica``, the
# temperature index of the tripped replica (-1: none); ``swap_acceptance`` ``(R - 1,)``, the
# acceptance probability of each pair tried (NaN: not tried); ``beta_index`` ``(R,)``, the
# temperature index of each slot after the swaps; ``round_trips``, since the last reset.
TemperedInfo = NamedTuple("TemperedInfo", [*Info.__annotations__.items(), ("replica", Array),
                                           ("swap_acceptance", Array), ("beta_index", Array),
                                           ("round_trips", Array)])
TemperedInfo.__new__.__defaults__ = (None,) * 6


def ladder_of(replicas: int, beta_min: float) -> np.ndarray:
    """The geometric ladder ``beta_i = beta_min^(i / (R - 1))``: 1 down to ``beta_min``."""
    return np.asarray(beta_min, np.float64) ** (np.arange(replicas) / (replicas - 1))


def check_ladder(ladder: Sequence[float], key: str = "tempering.ladder") -> np.ndarray:
    values = np.asarray(ladder, np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"{key} must list at least 2 inverse temperatures, got {list(np.atleast_1d(values))}")
    if not np.all((values > 0) & (values <= 1)) or not np.all(np.isfinite(values)):
        raise ValueError(f"{key}: every beta must be in (0, 1], got {values.tolist()}")
    if values[0] != 1.0:
        raise ValueError(f"{key} must start at beta = 1 (the target), got {values[0]!r}")
    if not np.all(np.diff(values) < 0):
        raise ValueError(f"{key} must be strictly decreasing, got {values.tolist()}")
    return values


def equalized_ladder(ladder: np.ndarray, rejection: np.ndarray) -> np.ndarray:
    """The ladder on which the cumulative rejection ``Lambda(beta)``, interpolated
    monotonically (piecewise linear in ``beta``) through the current points, is equally
    spaced. Keeps ``beta_0 = 1`` and ``beta_{R-1}``. Works on host or traced arrays."""
    xp = jnp if isinstance(ladder, jax.Array) or isinstance(rejection, jax.Array) else np
    r = xp.clip(rejection, 1e-6, 1.0)  # a pair that never rejects still spans some barrier
    cumulative = xp.concatenate([xp.zeros(1, r.dtype), xp.cumsum(r)])
    targets = cumulative[-1] * xp.arange(ladder.shape[0], dtype=r.dtype) / (ladder.shape[0] - 1)
    # Lambda increases from beta = 1 (index 0) to beta_min: interpolate beta(Lambda)
    new = xp.interp(targets, cumulative, ladder)
    if xp is np:
        new[0], new[-1] = ladder[0], ladder[-1]
        return new
    return new.at[0].set(ladder[0]).at[-1].set(ladder[-1])


@dataclasses.dataclass(frozen=True)
class Tempered:
    """Non-reversible parallel tempering around a kernel that can temper (``kernel="hmc"``).

    ``hmc.sample(tempering={"replicas": 8, "beta_min": 0.05})``; ``ladder`` gives the
    inverse temperatures instead (decreasing from 1, in ``(0, 1]``); ``terms`` the tempered
    terms (default: all); ``adapt`` (default true) adapts the ladder in warmup, keeping
    ``beta_min``; ``record`` (default false) also records every observable of every replica,
    in temperature order (``replicas/<name>``, shape ``(chains, draws, R, ...)``); ``swaps``
    (default true) false runs the replicas side by side without exchange, each at its own
    temperature (the pilots of ``beta_min: "auto"``, and a contrast). See the module docstring.
    """

    base: Any
    replicas: int = 8
    beta_min: float = 0.1
    ladder: tuple | None = None
    terms: tuple | None = None
    adapt: bool = True
    record: bool = False
    swaps: bool = True
    name: str = dataclasses.field(default="tempered", init=False)
    locates_trips = True  # a replay from the end state would not see the other replicas' moves

    def __post_init__(self) -> None:
        if not getattr(self.base, "can_temper", False):
            raise ValueError(f"tempering needs a kernel that can temper (kernel='hmc'); "
                             f"{getattr(self.base, 'name', self.base)!r} cannot")
        if getattr(self.base, "adaptive_length", False):
            raise ValueError("tempering: trajectory_length='auto' is not supported with tempering (the length "
                             "signal would mix temperatures); give a float trajectory_length or num_steps")
        if self.ladder is not None:
            ladder = tuple(float(b) for b in check_ladder(self.ladder))
            object.__setattr__(self, "ladder", ladder)
            object.__setattr__(self, "replicas", len(ladder))
            object.__setattr__(self, "beta_min", ladder[-1])
        if isinstance(self.replicas, bool) or int(self.replicas) != self.replicas or self.replicas < 2:
            raise ValueError(f"tempering.replicas must be an integer >= 2, got {self.replicas!r}")
        object.__setattr__(self, "replicas", int(self.replicas))
        if not (isinstance(self.beta_min, (int, float)) and 0.0 < self.beta_min < 1.0):
            raise ValueError(f"tempering.beta_min must be in (0, 1) or 'auto', got {self.beta_min!r}")
        if self.terms is not None:
            terms = (self.terms,) if isinstance(self.terms, str) else tuple(self.terms)
            if not terms or not all(isinstance(t, str) and t for t in terms):
                raise ValueError(f"tempering.terms must be a non-empty list of term names, got {self.terms!r}")
            object.__setattr__(self, "terms", terms)

    @classmethod
    def of(cls, base: Any, options: Mapping[str, Any] | None) -> Tempered | Any:
        """``base`` wrapped by the ``tempering`` options (a dict, ``None``: no tempering)."""
        if options is None:
            return base
        if not isinstance(options, Mapping):
            raise ValueError(f"tempering must be a dict such as {{'replicas': 8, 'beta_min': 0.1}}, got {options!r}")
        unknown = sorted(set(options) - set(TEMPERING_KEYS))
        if unknown:
            raise ValueError(f"tempering: unknown key {unknown[0]!r} (keys: {list(TEMPERING_KEYS)})")
        given = dict(options)
        if given.get("ladder") is not None:
            given["ladder"] = tuple(given["ladder"])
            if "replicas" in given and int(given["replicas"]) != len(given["ladder"]):
                raise ValueError(f"tempering.replicas ({given['replicas']}) differs from the length of "
                                 f"tempering.ladder ({len(given['ladder'])})")
        return cls(base=base, **given)

    # what the driver reads of a trajectory kernel
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def initial_ladder(self) -> np.ndarray:
        return np.asarray(self.ladder) if self.ladder is not None else ladder_of(self.replicas, self.beta_min)

    def tempered_names(self, term_names: Sequence[str]) -> tuple[str, ...]:
        names = list(term_names)
        if self.terms is None:
            return tuple(names)
        for t in self.terms:
            if t not in names:
                raise ValueError(f"tempering.terms names {t!r}, which is not a term of the potential (terms: {names})")
        return tuple(self.terms)

    def build(self, potential: Any, guard: str = "trajectory") -> Kernel:
        parts = self._parts(potential, guard)
        return Kernel(init=parts.init, step=parts.step,
                      replay=lambda key, state, params: parts.step(key, state, params)[1])

    def ladder_adapter(self, potential: Any, guard: str = "trajectory") -> Callable:
        """``(states, mean, move) -> states``: the end of a warmup round (see
        :func:`adapt_ladder`); ``states`` with the chain axis first."""
        rescaled = self._parts(potential, guard).rescaled

        def adapt(states: TemperedState, mean: Callable[[Array], Array], move: bool) -> TemperedState:
            return adapt_ladder(states, mean, move, rescaled)

        return adapt

    def _parts(self, potential: Any, guard: str) -> _Replicas:
        check_guard(guard)
        terms = getattr(potential, "terms", None)
        if terms is None:
            raise ValueError("tempering scales a Potential's named terms; this kernel was built for a bare function")
        tempered = self.tempered_names(list(terms))
        if getattr(potential, "auxiliary", None) and self.terms is None:
            raise ValueError(f"tempering: the potential has auxiliary fields {list(potential.auxiliary)}, whose heat "
                             f"bath draws them at beta = 1: name the tempered terms (tempering.terms), those that "
                             f"do not read the fields (terms: {list(terms)})")
        return _Replicas(self, potential, tempered, guard)


def _index_of(slot_of: Array) -> Array:
    """The inverse permutation: the temperature index of each slot."""
    R = slot_of.shape[0]
    return jnp.zeros(R, jnp.int32).at[slot_of].set(jnp.arange(R, dtype=jnp.int32))


class _Replicas:
    """The replica system of one chain, built for a potential (see :class:`Tempered`)."""

    def __init__(self, spec: Tempered, potential: Any, tempered: tuple[str, ...], guard: str):
        self.spec, self.potential, self.tempered = spec, potential, tempered
        self.terms = potential.terms
        self.all_tempered = len(tempered) == len(self.terms)
        self.R = spec.replicas
        # every replica checks its gradients as it goes: a tripped replica is located in the
        # transition itself (a replay from the end state would not see the other replicas' moves)
        self.guard = "off" if guard == "off" else "step"

    def at(self, beta: Array) -> Any:
        """The potential of the replica at ``beta``: the tempered terms times ``beta``."""
        scaled = {name: (lambda f: (lambda q: beta * f(q)))(fn) if name in self.tempered else fn
                  for name, fn in self.terms.items()}
        return dataclasses.replace(self.potential, terms=scaled)

    def tempered_energy(self, q: PyTree) -> Array:
        q = self.potential.lifted(q)  # with group leaves, its gradient is the algebra force
        total = jnp.asarray(self.terms[self.tempered[0]](q))
        for name in self.tempered[1:]:
            total = total + self.terms[name](q)
        return total

    def init_at(self, position: PyTree, beta: Array) -> Any:
        return self.spec.base.build(self.at(beta), self.guard).init(position)

    def check_fields(self, position: PyTree) -> None:
        """With auxiliary fields: no tempered term may read them (the fields' heat bath
        draws them for the untempered action). A term that reads one fails to evaluate on
        the position alone."""
        fields = list(getattr(self.potential, "auxiliary", None) or ())
        if not fields:
            return
        for name in self.tempered:
            try:
                jax.eval_shape(self.terms[name], position)
            except (KeyError, TypeError, IndexError) as err:
                raise ValueError(f"tempering.terms names {name!r}, which reads the auxiliary fields {fields} "
                                 f"({type(err).__name__}: {err}); their heat bath is drawn at beta = 1, so only "
                                 f"terms that do not read them can be tempered") from None

    def init(self, position: PyTree) -> TemperedState:
        self.check_fields(position)
        R = self.R
        dtype = jnp.result_type(*[jnp.real(jnp.zeros((), jnp.asarray(x).dtype)).dtype
                                   for x in jax.tree_util.tree_leaves(position)])  # complex links: real
        ladder = jnp.asarray(self.spec.initial_ladder, dtype)
        replicas = jax.vmap(self.init_at, in_axes=(None, 0))(position, ladder)
        target = jax.tree_util.tree_map(lambda x: x[0], replicas)
        int0 = jnp.zeros((), jnp.int32)
        return TemperedState(target.position, target.potential_energy, target.potential_energy_grad, replicas,
                             jnp.arange(R, dtype=jnp.int32), ladder, jnp.zeros(R - 1, dtype), jnp.zeros(R - 1, dtype),
                             jnp.zeros(R, jnp.int8), int0, int0, int0)

    def move(self, key: Array, state: Any, params: Params, beta: Array) -> tuple:
        """One HMC transition of a replica at ``beta``."""
        if self.all_tempered:
            # HMC on beta U with the mass matrix beta M: the same equations of motion in q
            # as at beta = 1, with velocities 1/sqrt(beta) larger; the same step size and
            # number of steps are as stable and cover the same phase at every temperature
            minv = params.inverse_mass_matrix
            if minv is None:
                size = sum(int(np.prod(jnp.shape(x))) for x in jax.tree_util.tree_leaves(state.position))
                minv = jnp.full((size,), 1.0, beta.dtype) / beta
            else:
                minv = minv / beta
            params = params._replace(inverse_mass_matrix=minv)
        return self.spec.base.build(self.at(beta), self.guard).step(key, state, params)

    def rescaled(self, state: Any, old: Array, new: Array) -> Any:
        """A replica's state at a new temperature (only where the label changed): exact
        rescaling when every term is tempered; with auxiliary fields, the tempered terms'
        share moved by ``(new - old) U_T`` (they do not read the fields, so the replica keeps
        its own fields and no untempered term, a pseudofermion solve, is evaluated again);
        else a fresh energy and gradient."""
        if self.all_tempered:
            ratio = new / old
            return state._replace(potential_energy=state.potential_energy * ratio,
                                  potential_energy_grad=jax.tree_util.tree_map(lambda g: g * ratio,
                                                                               state.potential_energy_grad))
        tree = jax.tree_util.tree_structure
        if getattr(self.potential, "auxiliary", None) and tree(state.potential_energy_grad) == tree(state.position):
            value, grad = jax.value_and_grad(self.tempered_energy)(state.position)
            shift = (new - old).astype(state.potential_energy.dtype)
            fresh = state._replace(potential_energy=state.potential_energy + shift * value,
                                   potential_energy_grad=jax.tree_util.tree_map(
                                       lambda g, t: g + shift * t, state.potential_energy_grad, grad))
        else:
            fresh = self.init_at(state.position, new)
        return jax.tree_util.tree_map(lambda f, s: jnp.where(new != old, f, s), fresh, state)

    def swaps(self, key: Array, state: TemperedState, moved: Any, beta_of_slot: Array) -> tuple:
        """DEO: the pairs ``(i, i + 1)`` with ``i`` of the transition's parity, each accepted
        with ``min(1, exp((beta_i - beta_{i+1}) (U_T(x_i) - U_T(x_{i+1}))))``. Returns the
        new ``slot_of``, which pairs were tried and their acceptance probabilities."""
        ladder, R = state.ladder, self.R
        u_t = moved.potential_energy / beta_of_slot if self.all_tempered \
            else jax.vmap(self.tempered_energy)(moved.position)
        log_ratio = (ladder[:-1] - ladder[1:]) * (u_t[state.slot_of[:-1]] - u_t[state.slot_of[1:]])
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        alpha = jnp.minimum(1.0, jnp.exp(jnp.minimum(log_ratio, 0.0))).astype(ladder.dtype)
        pair = jnp.arange(R - 1)
        tried = pair % 2 == state.transitions % 2
        u = jax.vmap(lambda i: _rng.uniform(_rng.fold_in(_rng.fold_in(key, SWAP_STREAM), i), ladder.dtype))(pair)
        swap = tried & (jnp.log(u) < log_ratio) & self.spec.swaps
        # exchange the labels of accepted pairs (the tried pairs are disjoint)
        down = jnp.concatenate([swap, jnp.zeros(1, bool)])  # index i takes the slot of i + 1
        up = jnp.concatenate([jnp.zeros(1, bool), swap])    # index i takes the slot of i - 1
        slot_of = jnp.where(down, jnp.roll(state.slot_of, -1),
                            jnp.where(up, jnp.roll(state.slot_of, 1), state.slot_of))
        return slot_of, tried, alpha

    def step(self, key: Array, state: TemperedState, params: Params) -> tuple[TemperedState, Any]:
        R, ladder = self.R, state.ladder
        beta_of_slot = ladder[_index_of(state.slot_of)]
        keys = jax.vmap(lambda s: _rng.fold_in(key, s))(jnp.arange(R))
        moved, infos = jax.vmap(self.move, in_axes=(0, 0, None, 0))(keys, state.replicas, params, beta_of_slot)
        slot_of, tried, alpha = self.swaps(key, state, moved, beta_of_slot)
        new_index = _index_of(slot_of)
        replicas = jax.vmap(self.rescaled)(moved, beta_of_slot, ladder[new_index])
        # round trips: a slot that reached the reference after the target and comes back
        at_target, at_reference = new_index == 0, new_index == R - 1
        completed = at_target & (state.last_end == 2)
        last_end = jnp.where(at_target, 1, jnp.where(at_reference & (state.last_end == 1), 2,
                                                     state.last_end)).astype(jnp.int8)
        target = jax.tree_util.tree_map(lambda x: x[slot_of[0]], replicas)
        new_state = TemperedState(
            target.position, target.potential_energy, target.potential_energy_grad, replicas, slot_of, ladder,
            state.rejection + jnp.where(tried, 1.0 - alpha, 0.0).astype(ladder.dtype),
            state.attempts + tried.astype(ladder.dtype), last_end,
            state.round_trips + jnp.sum(completed).astype(jnp.int32), state.transitions + 1, state.counted + 1)
        info = _info(state.slot_of, infos, jnp.where(tried, alpha, jnp.nan).astype(ladder.dtype), new_index,
                     new_state.round_trips)
        return new_state, info


def _info(slot_of: Array, infos: Any, swap_acceptance: Array, beta_index: Array, round_trips: Array) -> Any:
    """The chain's :data:`TemperedInfo`: the target replica's transition (the slot at
    temperature index 0 before the swaps), the first tripped replica's guard fields."""
    pick = lambda x: x[slot_of[0]]  # noqa: E731
    tripped_by_index = infos.guard_tripped[slot_of]
    first = jnp.argmax(tripped_by_index)
    f_slot = slot_of[first]
    any_trip = jnp.any(tripped_by_index)
    return TemperedInfo(
        acceptance_rate=pick(infos.acceptance_rate), is_accepted=pick(infos.is_accepted),
        is_divergent=pick(infos.is_divergent), energy=pick(infos.energy), delta_energy=pick(infos.delta_energy),
        num_steps=jnp.sum(infos.num_steps).astype(jnp.int32), step_size=pick(infos.step_size),
        guard_tripped=any_trip, guard_step=jnp.where(any_trip, infos.guard_step[f_slot], -1).astype(jnp.int32),
        guard_position=jax.tree_util.tree_map(lambda x: x[f_slot], infos.guard_position),
        replica=jnp.where(any_trip, first, -1).astype(jnp.int32), swap_acceptance=swap_acceptance,
        beta_index=beta_index, round_trips=round_trips)


def adapt_ladder(states: TemperedState, mean: Callable[[Array], Array], move: bool,
                 rescaled: Callable) -> TemperedState:
    """At the end of a warmup round: the rejection rate of each pair pooled over chains
    (``mean`` over the chain axis, in a fixed order), the ladder equalised on it when
    ``move`` (every replica's energy and gradient moved to its new temperature), and the
    swap and round-trip counters reset. ``states`` has the chain axis first."""
    rejection = mean(states.rejection) / jnp.maximum(mean(states.attempts), jnp.finfo(states.ladder.dtype).tiny)
    ladder = states.ladder
    replicas = states.replicas
    if move:
        new = equalized_ladder(ladder[0], rejection).astype(ladder.dtype)
        ladder = jnp.broadcast_to(new, ladder.shape)

        def one_chain(reps, slot_of, old_ladder, new_ladder):
            index = _index_of(slot_of)
            return jax.vmap(rescaled)(reps, old_ladder[index], new_ladder[index])

        replicas = jax.vmap(one_chain)(replicas, states.slot_of, states.ladder, ladder)
    zeros = jnp.zeros_like(states.rejection)
    return states._replace(replicas=replicas, ladder=ladder, rejection=zeros, attempts=zeros,
                           round_trips=jnp.zeros_like(states.round_trips), last_end=jnp.zeros_like(states.last_end),
                           counted=jnp.zeros_like(states.counted))


def barrier(rejection: np.ndarray) -> float:
    """The communication barrier ``Lambda = sum_i r_i``."""
    return float(np.sum(rejection))


def predicted_round_trip_rate(rejection: np.ndarray) -> float:
    """``(2 + 2 sum_i r_i / (1 - r_i))^-1`` round trips per transition (DEO)."""
    r = np.clip(np.asarray(rejection, np.float64), 0.0, 1.0 - 1e-12)
    return float(1.0 / (2.0 + 2.0 * np.sum(r / (1.0 - r))))


def replicas_for(barrier_value: float) -> int:
    """``ceil(2 Lambda + 1)`` replicas, at least 2 and at most :data:`MAX_REPLICAS` (Syed et
    al.'s rule of thumb: the round-trip rate is then within a factor of about 2 of its optimum)."""
    return int(min(MAX_REPLICAS, max(2, int(np.ceil(2.0 * barrier_value + 1.0)))))


def _pilot_result(pilot: Callable[[dict], Any], options: dict, what: str) -> Any:
    result = pilot(options)
    if result.tempering is None or getattr(result, "halted", False):
        raise ValueError(f"tempering: the pilot run for {what} did not finish; give it explicitly")
    return result


def choose_replicas(options: Mapping[str, Any], pilot: Callable[[dict], Any]) -> dict[str, Any]:
    """``replicas: "auto"``: :func:`replicas_for` the barrier ``Lambda`` a pilot run with
    :data:`PILOT_REPLICAS` replicas measured (``pilot(options) -> result``)."""
    if options.get("ladder") is not None:
        raise ValueError("tempering: replicas 'auto' chooses the number of replicas; it cannot go with a ladder")
    result = _pilot_result(pilot, dict(options, replicas=PILOT_REPLICAS), "replicas 'auto'")
    lam = float(result.tempering["barrier"])
    replicas = replicas_for(lam)
    _logger().info("tempering: replicas 'auto': the pilot with %d replicas measured Lambda = %.3g; "
                   "running %d replicas", PILOT_REPLICAS, lam, replicas)
    return dict(options, replicas=replicas)


#: ``beta_min: "auto"``: the candidates, tried from the coldest (``10^(-k/2)``, 0.32 to 1e-4)
BETA_MIN_CANDIDATES = tuple(float(10.0 ** (-k / 2.0)) for k in range(1, 9))
#: the hottest replica counts as sampled well when its slowest observable's tau_int is at most this
BETA_MIN_TAU = 2.0
#: a hotter reference is taken only while it divides that tau_int by at least this factor
BETA_MIN_KNEE = 2.0


def hottest_tau(draws: Mapping[str, Any]) -> tuple[float, str]:
    """The largest integrated autocorrelation time (draws per bulk effective sample, over
    the chains) among the observables of the hottest replica (``replicas/<name>`` at the
    last temperature index), and that observable's name (``name[i]`` for a component)."""
    from hmc import diagnostics as _diagnostics

    worst, which = 0.0, ""
    for key, values in draws.items():
        if not key.startswith("replicas/"):
            continue
        x = np.asarray(values, np.float64)[:, :, -1]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = flat.shape[0] * flat.shape[1] / np.asarray(_diagnostics.ess_bulk(flat), np.float64)
        tau = np.where(np.isfinite(tau), tau, 0.0)
        i = int(np.argmax(tau))
        if tau[i] > worst:
            worst, which = float(tau[i]), key[len("replicas/"):] + (f"[{i}]" if flat.shape[2] > 1 else "")
    return worst, which


def pilot_gradients(result: Any) -> int:
    """Gradient evaluations a run spent, warmup included (every replica's steps)."""
    warmup = int(np.sum(np.asarray(result.warmup_stats.get("n_steps", 0))))
    sampled = int(np.sum(np.asarray(result.stats.get("n_steps", 0)))) * int(result.settings.get("thin", 1))
    per_step = _integrators.gradient_evaluations_per_step(result.settings["integrator"],
                                                          result.settings.get("timescales"))
    return int((warmup + sampled) * per_step)


def choose_beta_min(options: Mapping[str, Any], pilot: Callable[[dict], Any]) -> tuple[dict[str, Any], list]:
    """``beta_min: "auto"``: the coldest reference at which a replica explores on its own.

    Pilot runs (warmup and :data:`PILOT_DRAWS` draws) try :data:`BETA_MIN_CANDIDATES` from
    the coldest. Each runs two replicas, at 1 and at the candidate, without swaps: the hot
    one is then plain HMC at the candidate temperature, with the step and the mass matrix
    tempering gives it. (Measured at the hottest temperature *level* of a swapping ladder,
    the configurations that swaps shuffle between levels hide that no replica crosses.)
    The search stops at the first candidate where the slowest observable of the hot replica
    (:func:`hottest_tau`) has ``tau_int`` at most :data:`BETA_MIN_TAU`, or at the one before
    a candidate where heating further no longer helps (it divides ``tau_int`` by less than
    :data:`BETA_MIN_KNEE`): with every term tempered, replica ``beta`` runs with the mass
    ``beta M``, so a mode that a potential well confines decorrelates at the same rate at
    every temperature, and only the barriers heating removes shorten ``tau_int``. With
    ``replicas: "auto"`` a pilot at the chosen ``beta_min`` then sizes the ladder
    (:func:`choose_replicas`). Returns the options and the trials (for the report).

    A mode that no chain of the pilot visits is invisible to this search, as to any
    diagnostic: start the chains dispersed."""
    if options.get("ladder") is not None:
        raise ValueError("tempering: beta_min 'auto' chooses the end of the ladder; it cannot go with a ladder")
    trials: list[dict[str, Any]] = []
    chosen = None
    for beta_min in BETA_MIN_CANDIDATES:
        probe = {k: v for k, v in options.items() if k not in ("replicas", "beta_min")}
        result = _pilot_result(pilot, dict(probe, ladder=[1.0, beta_min], swaps=False, adapt=False, record=True),
                               "beta_min 'auto'")
        tau, name = hottest_tau(result.draws)
        trials.append({"beta_min": beta_min, "tau": tau, "observable": name})
        _logger().info("tempering: beta_min 'auto': a replica at beta = %.3g alone: its slowest observable %s has "
                       "tau_int %.3g", beta_min, name, tau)
        if tau <= BETA_MIN_TAU:
            chosen = trials[-1]
            break
        if len(trials) >= 2 and tau * BETA_MIN_KNEE > trials[-2]["tau"]:
            chosen = trials[-2]
            break
    if chosen is None:
        chosen = trials[-1]
        _logger().warning("tempering: beta_min 'auto': heating to beta_min = %.3g still shortened the hot "
                          "replica's tau_int (%.3g); using it, the hottest candidate", chosen["beta_min"],
                          chosen["tau"])
    for trial in trials:
        trial["chosen"] = trial is chosen
    out = dict(options, beta_min=chosen["beta_min"])
    _logger().info("tempering: beta_min 'auto': using beta_min = %.3g", chosen["beta_min"])
    if options.get("replicas") == "auto":
        out = choose_replicas(out, pilot)
    return out, trials


def _logger() -> Any:
    import logging

    return logging.getLogger("hmc")


def replica_observables(potential: Any, states: TemperedState) -> dict[str, Array]:
    """Every observable of every replica, in temperature order: ``{"replicas/<name>":
    (chains, R, ...)}`` (``states`` with the chain axis first)."""
    ordered = jax.vmap(lambda reps, slot_of: jax.tree_util.tree_map(lambda x: x[slot_of], reps))(
        states.replicas.position, states.slot_of)
    values = jax.vmap(jax.vmap(potential.observe))(ordered)
    return {f"replicas/{name}": v for name, v in values.items()}


def report(states: TemperedState, index_process: np.ndarray | None = None) -> dict[str, Any]:
    """What replica exchange did since its counters were last reset (at the end of warmup,
    or of the last ladder round while in warmup), from the chains' states (chain axis first): the ladder, each
    pair's swap acceptance (Rao-Blackwellised: the mean acceptance probability, pooled
    over chains), the barrier ``Lambda``, round trips per chain and their rate per
    transition against the DEO prediction, and the index process (the temperature index
    of every replica at every draw, ``(chains, draws, R)``) when recorded."""
    attempts = np.asarray(states.attempts, np.float64).sum(axis=0)
    rejection = np.asarray(states.rejection, np.float64).sum(axis=0) / np.maximum(attempts, 1.0)
    trips = np.asarray(states.round_trips).astype(int)
    transitions = int(np.max(states.counted))
    rate = trips / max(transitions, 1)
    return {
        "ladder": np.asarray(states.ladder[0], np.float64).tolist(),
        "replicas": int(np.shape(states.ladder)[-1]),
        "swap_acceptance": (1.0 - rejection).tolist(),
        "barrier": barrier(rejection),
        "round_trips": trips.tolist(),
        "round_trip_rate": float(np.mean(rate)),
        "predicted_round_trip_rate": predicted_round_trip_rate(rejection),
        "transitions": int(transitions),
        "index_process": index_process,
    }


__all__ = ["replica_observables", "Tempered", "TemperedInfo", "TemperedState", "adapt_ladder", "barrier", "check_ladder", "equalized_ladder",
           "choose_beta_min", "choose_replicas", "hottest_tau", "ladder_of", "replicas_for", "predicted_round_trip_rate", "report"]
