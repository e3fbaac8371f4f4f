"""Deliberately broken models: one per way a gradient goes missing or non-finite.

Each factory returns a small Gaussian ``{"x": (4,)}`` (plus ``"y"`` or ``"aux"``
where needed) with one faulty term, so the guard's findings can be seen and
tested. ``python scripts/guard_demo.py`` runs them all and prints what the
guard says; configs name them as ``model.factory: "physics_models.broken:where_trap"``.

The faulty line of each model carries the comment ``# fault``.

Structural faults (refused by preflight before the first step):
``detached_term``, ``partial_detach``, ``detached_element``, ``round_term``,
``floor_term``, ``sign_term``, ``int_cast_term``, ``comparison_term``,
``custom_jvp_zero``, ``custom_vjp_zero``, ``orphan_leaf``, ``nan_init``.

Faults reached only mid-run (the gradient is fine where chains start; some
trajectories reach a region where it is not): ``where_trap``, ``log_zero``,
``exp_overflow``, ``division_by_zero``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hmc.potential import Potential

DIM = 4


def _spring(q):
    return 0.5 * jnp.sum(q["x"] ** 2)


def _init(key):
    return {"x": 0.5 * jax.random.normal(key, (DIM,))}


def _observables():
    return {"x": lambda q: q["x"], "x2": lambda q: q["x"] ** 2}


def _model(name: str, fault, init=_init, **extra) -> Potential:
    return Potential(terms={"spring": _spring, name: fault, **extra}, init=init, observables=_observables(),
                     name=f"broken.{name}")


# -- structural faults -----------------------------------------------------------------
def detached_term() -> Potential:
    """A whole term computed through ``stop_gradient``: its force is missing."""

    def tilt(q):
        return jnp.sum(jax.lax.stop_gradient(q["x"]))  # fault

    return _model("tilt", tilt)


def partial_detach() -> Potential:
    """``x**2 + stop_gradient(x)**2``: half of the force is missing."""

    def stiff(q):
        x = q["x"]
        return 0.5 * jnp.sum(x**2 + jax.lax.stop_gradient(x) ** 2)  # fault

    return _model("stiff", stiff)


def detached_element() -> Potential:
    """One element of a leaf reaches its only term through ``stop_gradient``."""

    def pin(q):
        y = q["y"].at[2].set(jax.lax.stop_gradient(q["y"][2]))  # fault
        return 0.5 * jnp.sum(y**2)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"x": 0.5 * jax.random.normal(k1, (DIM,)), "y": 0.5 * jax.random.normal(k2, (3,))}

    return _model("pin", pin, init=init)


def round_term() -> Potential:
    """A piecewise-constant term: ``round`` has a zero derivative almost everywhere."""

    def lattice(q):
        return 0.5 * jnp.sum(jnp.round(q["x"]) ** 2)  # fault

    return _model("lattice", lattice)


def floor_term() -> Potential:
    """A staircase term: ``floor`` has a zero derivative almost everywhere."""

    def steps(q):
        return jnp.sum(jnp.floor(q["x"]))  # fault

    return _model("steps", steps)


def sign_term() -> Potential:
    """``sign(x)``: piecewise constant, so no force."""

    def vee(q):
        return jnp.sum(jnp.sign(q["x"]) * 0.5)  # fault

    return _model("vee", vee)


def int_cast_term() -> Potential:
    """An int cast inside a term: ``x.astype(int32)`` drops the gradient."""

    def bins(q):
        return jnp.sum(q["x"].astype(jnp.int32).astype(q["x"].dtype) ** 2)  # fault

    return _model("bins", bins)


def comparison_term() -> Potential:
    """A comparison used as a number: ``(x > 0) * 1.0``."""

    def step(q):
        return jnp.sum((q["x"] > 0) * 1.0)  # fault

    return _model("step", step)


@jax.custom_jvp
def _square_zero_jvp(x):
    return x**2


@_square_zero_jvp.defjvp
def _square_zero_jvp_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return x**2, jnp.zeros_like(t)


def custom_jvp_zero() -> Potential:
    """A ``custom_jvp`` whose rule returns a zero tangent."""

    def custom(q):
        return 0.5 * jnp.sum(_square_zero_jvp(q["x"]))  # fault

    return _model("custom", custom)


@jax.custom_vjp
def _square_zero_vjp(x):
    return x**2


_square_zero_vjp.defvjp(lambda x: (x**2, x), lambda x, g: (jnp.zeros_like(x),))


def custom_vjp_zero() -> Potential:
    """A ``custom_vjp`` whose backward pass returns zeros."""

    def custom(q):
        return 0.5 * jnp.sum(_square_zero_vjp(q["x"]))  # fault

    return _model("custom", custom)


def orphan_leaf() -> Potential:
    """A state leaf that no term uses: it would drift without bound."""

    def init(key):  # fault
        k1, k2 = jax.random.split(key)
        return {"x": 0.5 * jax.random.normal(k1, (DIM,)), "aux": jax.random.normal(k2, (2,))}

    return Potential(terms={"spring": _spring}, init=init, observables=_observables(), name="broken.orphan_leaf")


def nan_init() -> Potential:
    """An initial state with a NaN in it."""

    def init(key):
        x = 0.5 * jax.random.normal(key, (DIM,))
        return {"x": x.at[1].set(jnp.nan)}  # fault

    return Potential(terms={"spring": _spring}, init=init, observables=_observables(), name="broken.nan_init")


# -- faults reached mid-run ---------------------------------------------------------------
WALL = 2.0


def where_trap() -> Potential:
    """``where(x < WALL, c * (WALL - x)**1.5, 0)``: beyond the wall the unselected
    branch is a fractional power of a negative number (NaN), and ``where`` passes
    0 * NaN = NaN into the gradient."""

    def barrier(q):
        x = q["x"]
        return jnp.sum(jnp.where(x < WALL, 0.1 * (WALL - x) ** 1.5, 0.0))  # fault

    return _model("barrier", barrier)


def log_zero() -> Potential:
    """An entropy-like term ``c log c`` with ``c`` clipped at zero: past the wall
    ``log(0) = -inf`` and ``0 * -inf = NaN``, in the energy and in its gradient. (A log
    barrier whose energy goes to +inf at the wall is a wall, not a fault: a step across
    it is a divergence.)"""

    def barrier(q):
        c = jnp.clip(WALL - q["x"], 0.0, None)
        return 0.05 * jnp.sum(c * jnp.log(c))  # fault

    return _model("barrier", barrier)


def exp_overflow() -> Potential:
    """A logistic step written as ``1 / (1 + exp(-a x))``: for ``a x < -88.7`` the exp
    overflows in float32; the value is still 0, its gradient inf/inf = NaN."""

    def step(q):
        x = q["x"]
        return jnp.sum(0.1 / (1.0 + jnp.exp(-50.0 * (x + WALL))))  # fault

    return _model("step", step)


def division_by_zero() -> Potential:
    """A square-root wall with a clipped distance: the energy is finite everywhere, but
    past the wall the derivative of ``sqrt`` at 0 is ``0.5 / 0``."""

    def wall(q):
        x = q["x"]
        return 0.1 * jnp.sum(jnp.sqrt(jnp.clip(WALL - x, 0.0, None)))  # fault

    return _model("wall", wall)


STRUCTURAL = (
    "detached_term",
    "partial_detach",
    "detached_element",
    "round_term",
    "floor_term",
    "sign_term",
    "int_cast_term",
    "comparison_term",
    "custom_jvp_zero",
    "custom_vjp_zero",
    "orphan_leaf",
    "nan_init",
)
MID_RUN = ("where_trap", "log_zero", "exp_overflow", "division_by_zero")
