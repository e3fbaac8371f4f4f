"""The potential energy contract: a sum of named terms over a pytree state.

A :class:`Potential` is what every model returns and what the sampler consumes.
``U(q) = sum_k terms[k](q)`` is a *potential energy* (``U = -log density``).
Keeping the terms separate is what lets the guard say *which* term broke the
gradient; the sampler itself only ever sees their sum.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import Array

PyTree = Any

#: What a potential describes; it picks the default kernel (see :attr:`Potential.kind`).
KINDS = ("physics", "bayesian")


class EnergyFn(Protocol):
    """A term of the potential: ``f(q) -> scalar`` energy."""

    def __call__(self, position: PyTree) -> Array: ...


class InitFn(Protocol):
    """``init(rng_key) -> q``: a random initial state (pytree of float arrays)."""

    def __call__(self, rng_key: Array) -> PyTree: ...


def _freeze(mapping: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    mapping = dict(mapping or {})
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} names must be non-empty strings, got {name!r}")
        if not callable(value) and what != "exact":
            raise TypeError(f"{what} {name!r} must be callable, got {type(value).__name__}")
    return mapping


def _lattice_axes(mapping: Mapping[str, Any] | None) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, axes in dict(mapping or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"lattice_axes names must be non-empty strings, got {name!r}")
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if not axes or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in axes) \
                or len(set(axes)) != len(axes):
            raise ValueError(f"lattice_axes[{name!r}] must be distinct non-negative axes, got {axes!r}")
        out[name] = axes
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Potential:
    """A potential energy written as a sum of named terms.

    Parameters
    ----------
    terms
        ``name -> f(q) -> scalar``. ``U(q)`` is their sum. At least one term.
    init
        ``init(rng_key) -> q``: a random initial state. Its pytree structure,
        shapes and float dtypes define the state space.
    observables
        ``name -> g(q) -> array``, recorded with every draw.
    derived
        Optional ``name -> f(draws) -> float``: quantities that are not
        expectations of one observable (a susceptibility, a Binder cumulant).
        ``draws`` maps each observable name to its draws (first axis: draws);
        the summary estimates ``f`` on all draws and its error by a blocked
        jackknife.
    exact
        Optional ``name -> value`` of exactly known expectations of observables
        (same shape as the observable) or of derived quantities; the summary
        prints the z-score of the estimate against them.
    name
        A label for logs and summaries.
    auxiliary
        Optional ``name -> refresh(key, q) -> array``: fields that stay fixed during a
        trajectory and are redrawn at its start (the pseudofermion heat bath
        ``phi = D^dagger eta``). The state must then be a dict; the terms see it extended by
        the fields (``q["phi"]``), the observables do not. Where no trajectory supplies them
        (the guard's checks, the step-size heuristic, the stability cap), :meth:`energy`
        draws them with a fixed key at the zero state.
    health
        Optional ``term -> check(q) -> {"ok": bool, ...}``: the health of a term that runs a
        solver (``"residual"``, ``"iterations"``, any numbers). A solver stopped at its
        iteration cap returns a force that is finite but wrong; such a term should make its
        energy NaN when unhealthy (:func:`hmc.guard.unhealthy_is_nan`), which trips the
        guard and rejects the trajectory, and the guard then reports the check's numbers as
        a ``solver_not_converged`` event (the term, the residual, the iterations).
    joint
        Optional ``j(q) -> {"terms": {name: scalar}, "observables": {name: array}}``: every
        term and observable in one pass (a numpyro model runs once per gradient, not once
        per site). When given, :meth:`energy`, :meth:`term_energies` and :meth:`observe`
        use it; ``terms`` and ``observables`` stay the per-name functions the guard checks.
    sites
        Optional ``term -> {"site": ..., "kind": ..., "distribution": ..., "source":
        "file.py:line"}``: where each term was declared in the user's code (a numpyro
        sample or factor site). The guard names the site, and blames its declaration
        when the primitive it found lies in library code.
    initial_positions
        Optional states with a leading chain axis: chain ``c`` of :func:`hmc.sample`
        starts from row ``c`` (their number must be ``num_chains``).
    kind
        ``"physics"`` (a model written as an energy) or ``"bayesian"`` (a posterior:
        :meth:`from_numpyro` and :meth:`from_logdensity` set it). It picks the default
        kernel of :func:`hmc.sample`: ``"nuts"`` for a posterior, ``"hmc"`` otherwise.
    groups
        Optional ``leaf name -> group`` (``"U(1)"``, ``"SU(2)"``, ``"SU(3)"``, ``"SU(N)"`` or a
        :class:`hmc.groups.Group`): that top-level leaf of a dict state holds matrices of the
        group, shape ``(..., N, N)``, complex. Its momenta live in the Lie algebra and the
        drift is ``U <- exp(eps P) U`` (see :mod:`hmc.groups`).
    symmetries
        Optional ``name -> transform(key, q) -> q'``: exact symmetries of every term (a gauge
        transformation). Preflight evaluates each term at a few random transforms of the
        initial state and reports a term that changes as ``symmetry_broken``. With
        auxiliary fields the transform receives the state extended by them (drawn by their
        heat bath at the state) and must transform them too (a gauge transformation rotates
        a pseudofermion field at every site).
    properties
        Optional ``name -> check(key, q) -> {term: violation}``: declared properties of the
        terms' operators (``gamma5_hermiticity`` of a Dirac operator), each returning per term
        a relative violation that is rounding when the property holds. ``q`` is the state
        extended by its auxiliary fields. Preflight reports a violation beyond rounding as
        ``property_broken``, naming the term.
    lattice_axes
        Optional ``leaf name -> axes``: the lattice axes of a top-level leaf of a dict state
        or of an auxiliary field, counted without the chain axis (``{"U": (1, 2, 3, 4)}`` for
        links ``(d, *shape, N, N)``). ``sample(mesh={"chain": c, "lattice": k})`` splits each
        such leaf over ``k`` devices along the first axis listed (see :mod:`hmc.lattice`).
    embedding
        Optional ``e(q) -> array``: a map of the state into a Euclidean space in which
        ``trajectory_length="auto"`` measures how far a trajectory went (default: the
        raveled state). Compact variables need one: a U(1) link angle wraps, and
        ``(cos theta, sin theta)`` measures its change where ``theta`` does not.

    Examples
    --------
    >>> pot = Potential(terms={"quadratic": lambda q: 0.5 * jnp.sum(q["x"] ** 2)},
    ...                 init=lambda key: {"x": jax.random.normal(key, (3,))},
    ...                 observables={"x2": lambda q: q["x"] ** 2})
    """

    terms: Mapping[str, EnergyFn]
    init: InitFn
    observables: Mapping[str, Callable[[PyTree], Array]] = dataclasses.field(default_factory=dict)
    exact: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "potential"
    derived: Mapping[str, Callable[[Mapping[str, Any]], float]] = dataclasses.field(default_factory=dict)
    embedding: Callable[[PyTree], Array] | None = None
    auxiliary: Mapping[str, Callable[[Array, PyTree], Array]] = dataclasses.field(default_factory=dict)
    health: Mapping[str, Callable[[PyTree], Mapping[str, Array]]] = dataclasses.field(default_factory=dict)
    joint: Callable[[PyTree], Mapping[str, Mapping[str, Array]]] | None = None
    sites: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    initial_positions: PyTree | None = None
    groups: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = "physics"
    symmetries: Mapping[str, Callable[[Array, PyTree], PyTree]] = dataclasses.field(default_factory=dict)
    properties: Mapping[str, Callable[[Array, PyTree], Mapping[str, Array]]] = dataclasses.field(default_factory=dict)
    lattice_axes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_numpyro(cls, model: Callable[..., Any], *args: Any, init_strategy: Any = None,
                     name: str | None = None, **kwargs: Any) -> Potential:
        """A numpyro model as a potential with one term per site (see
        :func:`hmc.numpyro_models.from_numpyro`); ``args``/``kwargs`` are the model's."""
        from hmc.numpyro_models import from_numpyro

        return from_numpyro(model, *args, init_strategy=init_strategy, name=name, **kwargs)

    @classmethod
    def from_logdensity(cls, logdensity_fn: Callable[[PyTree], Array], init: Any, *, name: str = "logdensity",
                        observables: Mapping[str, Callable[[PyTree], Array]] | None = None) -> Potential:
        """Any JAX log density (the blackjax and TFP convention: ``log p(q)``, unnormalised)
        as a one-term potential, the term ``log_density`` (``U = -log p``).

        ``init`` is ``init(rng_key) -> q``, or initial states with a leading chain axis
        (chain ``c`` starts from row ``c``). ``observables`` default to the state itself:
        ``{"q": q}`` for an array, each leaf for a dict."""
        if not callable(logdensity_fn):
            raise TypeError(f"from_logdensity needs a callable log density, got {type(logdensity_fn).__name__}")
        positions = None
        if not callable(init):
            positions = jax.tree_util.tree_map(jnp.asarray, init)
            sizes = {x.shape[0] if x.ndim else None for x in jax.tree_util.tree_leaves(positions)}
            if len(sizes) != 1 or None in sizes:
                raise ValueError("from_logdensity: init must be init(rng_key) -> q or states with one leading chain "
                                 f"axis on every leaf (leading sizes {sorted(map(str, sizes))})")
            count = sizes.pop()

            def init(rng_key: Array) -> PyTree:  # a random row: what the guard's probes start from
                row = jax.random.randint(rng_key, (), 0, count)
                return jax.tree_util.tree_map(lambda x: x[row], positions)

        if observables is None:
            observables = _state_observables(init(jax.random.key(0)))
        return cls(terms={"log_density": lambda q: -logdensity_fn(q)}, init=init, observables=observables,
                   name=name, initial_positions=positions, kind="bayesian")

    def __post_init__(self) -> None:
        terms = _freeze(self.terms, "term")
        if not terms:
            raise ValueError("a Potential needs at least one term")
        if not callable(self.init):
            raise TypeError("Potential.init must be callable: init(rng_key) -> initial state")
        observables = _freeze(self.observables, "observable")
        derived = _freeze(self.derived, "derived quantity")
        exact = _freeze(self.exact, "exact")
        unknown = sorted(set(exact) - set(observables) - set(derived))
        if unknown:
            raise ValueError(f"exact values given for unknown observables {unknown}")
        clash = sorted(set(derived) & set(observables))
        if clash:
            raise ValueError(f"derived quantities {clash} share names with observables")
        object.__setattr__(self, "derived", derived)
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "observables", observables)
        object.__setattr__(self, "exact", exact)
        object.__setattr__(self, "auxiliary", _freeze(self.auxiliary, "auxiliary field"))
        health = _freeze(self.health, "health check")
        unknown = sorted(set(health) - set(terms))
        if unknown:
            raise ValueError(f"health checks given for unknown terms {unknown} (terms: {list(terms)})")
        object.__setattr__(self, "health", health)
        if self.joint is not None and not callable(self.joint):
            raise TypeError(f"Potential.joint must be callable, got {type(self.joint).__name__}")
        unknown = sorted(set(self.sites) - set(terms))
        if unknown:
            raise ValueError(f"sites given for unknown terms {unknown} (terms: {list(terms)})")
        object.__setattr__(self, "sites", dict(self.sites))
        if self.kind not in KINDS:
            raise ValueError(f"Potential.kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "symmetries", _freeze(self.symmetries, "symmetry"))
        object.__setattr__(self, "properties", _freeze(self.properties, "property"))
        object.__setattr__(self, "lattice_axes", _lattice_axes(self.lattice_axes))
        if self.groups:
            from hmc import groups as _groups

            object.__setattr__(self, "groups", {name: _groups.get(spec) for name, spec in dict(self.groups).items()})
        else:
            object.__setattr__(self, "groups", {})

    # -- auxiliary fields ---------------------------------------------------------
    def refresh(self, rng_key: Array, position: PyTree) -> dict[str, Array]:
        """Fresh auxiliary fields at ``position``: ``{name: refresh(fold_in(key, i), q)}``."""
        from hmc import rng as _rng

        if not isinstance(position, Mapping):
            raise TypeError(f"a Potential with auxiliary fields {list(self.auxiliary)} needs a dict state, "
                            f"got {type(position).__name__}")
        return {name: fn(_rng.fold_in(rng_key, i), position) for i, (name, fn) in enumerate(self.auxiliary.items())}

    def with_auxiliary(self, position: PyTree, fields: Mapping[str, Array] | None = None) -> PyTree:
        """``position`` extended by the auxiliary ``fields`` (drawn with a fixed key if
        ``None``); the state itself when the potential has none or it already holds them."""
        if not self.auxiliary or (isinstance(position, Mapping) and all(k in position for k in self.auxiliary)):
            return position
        if fields is None:
            # drawn at a zero state with a fixed key: constants of the state, so no path
            # from the state through the fields (the refresh is not part of the force)
            fields = self.refresh(jax.random.key(0), jax.tree_util.tree_map(jnp.zeros_like, position))
        return {**position, **fields}

    def state_terms(self) -> dict[str, EnergyFn]:
        """The terms as functions of the state alone (the auxiliary fields, if any, drawn
        with a fixed key by :meth:`with_auxiliary`): what the guard's checks evaluate."""
        if not self.auxiliary:
            return dict(self.terms)
        return {name: (lambda f: lambda q: f(self.with_auxiliary(q)))(fn) for name, fn in self.terms.items()}

    # -- energies -------------------------------------------------------------
    def lifted(self, position: PyTree) -> PyTree:
        """``position`` with its group leaves passed through :func:`hmc.geometry.lift`: the
        same values, and ``jax.grad`` with respect to a group leaf is the algebra force
        (the Lie derivative of the energy). The identity without groups."""
        if not self.groups:
            return position
        from hmc.geometry import lifted

        return lifted(self.groups, position)

    def energy(self, position: PyTree) -> Array:
        """Total potential energy ``U(q)``, a scalar. With group leaves its gradient there
        is the algebra force (:meth:`lifted`)."""
        position = self.with_auxiliary(self.lifted(position))
        if self.joint is not None:
            values = list(self.joint(position)["terms"].values())
        else:
            values = [fn(position) for fn in self.terms.values()]
        total = values[0]
        for value in values[1:]:
            total = total + value
        return jnp.asarray(total)

    __call__ = energy

    def term_energies(self, position: PyTree) -> dict[str, Array]:
        """Each term's energy at ``position``: ``{name: scalar}``."""
        position = self.with_auxiliary(self.lifted(position))
        if self.joint is not None:
            return {name: jnp.asarray(value) for name, value in self.joint(position)["terms"].items()}
        return {name: jnp.asarray(fn(position)) for name, fn in self.terms.items()}

    def value_and_grad(self, position: PyTree) -> tuple[Array, PyTree]:
        """``(U(q), dU/dq)``, the gradient with the structure of ``q``."""
        return jax.value_and_grad(self.energy)(position)

    def grad(self, position: PyTree) -> PyTree:
        """``dU/dq`` with the structure of ``q``."""
        return jax.grad(self.energy)(position)

    def observe(self, position: PyTree) -> dict[str, Array]:
        """Every observable at ``position``: ``{name: array}``."""
        if self.joint is not None:
            values = self.joint(self.with_auxiliary(position))["observables"]
            return {name: jnp.asarray(values[name]) for name in self.observables}
        return {name: jnp.asarray(fn(position)) for name, fn in self.observables.items()}

    # -- state helpers ----------------------------------------------------------
    def leaf_names(self, position: PyTree) -> list[str]:
        """Readable names of the state's leaves (``"phi"`` for ``{"phi": ...}``)."""
        return leaf_names(position)


def _state_observables(position: PyTree) -> dict[str, Callable[[PyTree], Array]]:
    """The state's leaves as observables, by their leaf names."""
    count = len(jax.tree_util.tree_leaves(position))
    return {name: (lambda i: lambda q: jax.tree_util.tree_leaves(q)[i])(i)
            for i, name in zip(range(count), leaf_names(position))}


def leaf_names(tree: PyTree) -> list[str]:
    """Names of a pytree's leaves: dict keys joined with ``/``; ``q`` for a bare array."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = []
    for path, _leaf in paths:
        if not path:
            names.append("q")
            continue
        parts = []
        for entry in path:
            if isinstance(entry, jax.tree_util.DictKey):
                parts.append(str(entry.key))
            elif isinstance(entry, jax.tree_util.GetAttrKey):
                parts.append(entry.name)
            elif isinstance(entry, jax.tree_util.SequenceKey):
                parts.append(str(entry.idx))
            else:
                parts.append(str(entry).strip("[]'.\""))
        names.append("/".join(parts))
    return names


def cast_tree(tree: PyTree, dtype: Any) -> PyTree:
    """Cast every floating leaf of ``tree`` to ``dtype``, and every complex leaf to the
    complex type of that precision (float32: complex64, float64: complex128)."""
    complex_dtype = jnp.result_type(dtype, jnp.complex64)

    def cast(x: Any) -> Any:
        kind = jnp.asarray(x).dtype
        if jnp.issubdtype(kind, jnp.floating):
            return jnp.asarray(x, dtype)
        if jnp.issubdtype(kind, jnp.complexfloating):
            return jnp.asarray(x, complex_dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


# Compiled programs per potential and hashable settings: a second ``sample`` call with
# the same model and settings, and the guard's checks of the same model, do not recompile.
_PROGRAMS: "weakref.WeakKeyDictionary[Potential, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def cached_program(potential: Potential, key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``potential`` and hashable ``key`` (dropped with the potential)."""
    per_potential = _PROGRAMS.setdefault(potential, {})
    if key not in per_potential:
        per_potential[key] = build()
    return per_potential[key]
