"""The Wilson (gradient) flow of gauge links: t^2 <E(t)>, the scales t0 and w0, the flowed
topological charge.

Lüscher, "Properties and uses of the Wilson flow in lattice QCD", JHEP 1008 (2010) 071,
arXiv:1006.4518: the links flow by ``dV/dt = Z(V) V`` with ``Z = -g0^2 (d S_w)`` the Lie
derivative of the Wilson action ``S_w = (1/g0^2) sum_p Re tr(1 - U_p)`` (every oriented
plaquette). In this package's conventions ``g0^2 S_w`` is the Wilson action of
:func:`physics_models.yang_mills` at ``beta = 2N``, and its Lie derivative is the
sampler's own autodiff force (:mod:`hmc.geometry`), so ``Z = -F(S at beta = 2N)``. The
integrator is Lüscher's third-order Runge-Kutta scheme on the group (his appendix C):

    W1 = exp(Z0 / 4) W0,  W2 = exp(8 Z1 / 9 - 17 Z0 / 36) W1,  V = exp(3 Z2 / 4 - 8 Z1 / 9 + 17 Z0 / 36) W2,

with ``Z_i = eps Z(W_i)``. The energy density ``E = (1/4) G^a_mu_nu G^a_mu_nu`` is measured
two ways: from the plaquette, ``E = 2 sum_{mu<nu} Re tr(1 - U_p)``, and from the clover,
``E = -sum_{mu<nu} tr(F_mu_nu^2)`` (F the anti-Hermitian clover field strength); they
differ at O(a^2). ``t0``: where ``t^2 <E> = 0.3``; ``w0``: where ``t d/dt (t^2 <E>) = 0.3``
(BMW, arXiv:1203.4469), both by linear interpolation on the measured grid.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmc import geometry, groups
from physics_models.yang_mills import clover_field_strengths, gauge_action, plaquettes, topological_charge

#: Lüscher's RK3 coefficients: (coefficient of Z0, Z1, Z2) of each stage's exponent
_STAGES = ((0.25, 0.0, 0.0), (-17.0 / 36.0, 8.0 / 9.0, 0.0), (17.0 / 36.0, -8.0 / 9.0, 0.75))


def flow_force(group: Any) -> Any:
    """``V -> Z(V)``: the flow's generator, ``-`` the algebra force of the Wilson action at
    ``beta = 2N`` (shape of ``V``)."""
    beta = 2.0 * group.n

    def z(v: jax.Array) -> jax.Array:
        return -jax.grad(lambda w: gauge_action(geometry.lift(group, w), beta))(v)

    return z


def rk3_step(group: Any, v: jax.Array, eps: float) -> jax.Array:
    """One step of Lüscher's RK3 scheme on the group (projected back at its end)."""
    z = flow_force(group)
    zs: list[jax.Array] = []
    w = v
    for coefficients in _STAGES:
        zs.append(eps * z(w))
        exponent = sum(c * zi for c, zi in zip(coefficients, zs) if c)
        w = groups.matmul(group.exp(exponent), w)
    return group.reunitarize(w)


def energy_densities(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(E_plaquette, E_clover)`` averaged over the sites (see the module docstring)."""
    n = v.shape[-1]
    e_plaq = 2.0 * n * jnp.sum(jnp.mean(1.0 - plaquettes(v), axis=tuple(range(1, v.ndim - 2))))
    f = clover_field_strengths(v)
    e_clover = jnp.sum(jnp.mean(jnp.sum(jnp.abs(f) ** 2, axis=(-2, -1)), axis=tuple(range(1, f.ndim - 2))))
    return e_plaq, e_clover


def _flow_program(group: Any, eps: float, steps_per_point: int, points: int) -> Any:
    def observe(v: jax.Array) -> dict:
        e_plaq, e_clover = energy_densities(v)
        out = {"E_plaquette": e_plaq, "E_clover": e_clover}
        if v.shape[0] == 4:
            out["Q"] = topological_charge(v)
        return out

    def run(v: jax.Array) -> dict:
        def point(w: jax.Array, _: Any) -> tuple:
            w = jax.lax.fori_loop(0, steps_per_point, lambda _, x: rk3_step(group, x, eps), w)
            return w, observe(w)

        first = observe(v)
        _, rest = jax.lax.scan(point, v, None, length=points)
        return {k: jnp.concatenate([first[k][None], rest[k]]) for k in first}

    return jax.jit(run)


def flow(group: Any, links: jax.Array, t_max: float = 1.0, eps: float = 0.01, every: int = 5) -> dict[str, np.ndarray]:
    """Flow one configuration ``links`` (``(d, *shape, N, N)``) to ``t_max`` in steps of
    ``eps``, measuring every ``every`` steps: ``{"t", "E_plaquette", "E_clover"[, "Q"]}``."""
    group = groups.get(group)
    points = max(1, int(round(t_max / (eps * every))))
    out = _flow_program(group, float(eps), int(every), points)(group.project(jnp.asarray(links)))
    result = {k: np.asarray(v, np.float64) for k, v in out.items()}
    result["t"] = eps * every * np.arange(points + 1)
    return result


def crossing(t: np.ndarray, y: np.ndarray, level: float = 0.3) -> float:
    """The first ``t`` where ``y`` reaches ``level``, linearly interpolated; NaN if never."""
    above = np.nonzero(y >= level)[0]
    if not len(above) or above[0] == 0:
        return float("nan")
    k = above[0]
    return float(t[k - 1] + (level - y[k - 1]) * (t[k] - t[k - 1]) / (y[k] - y[k - 1]))


def scales(t: np.ndarray, t2e: np.ndarray, level: float = 0.3) -> dict[str, float]:
    """``t0`` (``t^2 <E> = level``) and ``w0`` (``t d/dt (t^2 <E>) = level``, as ``sqrt`` of
    its flow time) from a mean curve on the grid ``t``."""
    t0 = crossing(t, t2e, level)
    w = t[1:-1] * (t2e[2:] - t2e[:-2]) / (t[2:] - t[:-2]) if len(t) > 2 else np.array([])
    w0_squared = crossing(t[1:-1], w, level) if len(w) else float("nan")
    return {"t0": t0, "w0": math.sqrt(w0_squared) if np.isfinite(w0_squared) else float("nan")}


def measure(group: Any, configurations: Any, t_max: float = 1.0, eps: float = 0.01,
            every: int = 5) -> dict[str, Any]:
    """Flow every configuration (leading axis) and average: ``t``, ``t2E_plaquette`` and
    ``t2E_clover`` (mean and standard error over configurations), ``t0`` and ``w0`` of each
    discretisation from the mean curves, and (4D) the flowed charge ``Q`` of each
    configuration at ``t_max``. Configurations should be independent (thin by the
    integrated autocorrelation time) for the errors to hold."""
    runs = [flow(group, c, t_max, eps, every) for c in configurations]
    t = runs[0]["t"]
    out: dict[str, Any] = {"t": t.tolist(), "configurations": len(runs), "eps": eps}
    for kind in ("plaquette", "clover"):
        curves = np.stack([t ** 2 * r[f"E_{kind}"] for r in runs])
        mean = curves.mean(axis=0)
        err = curves.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.full_like(mean, np.nan)
        out[f"t2E_{kind}"], out[f"t2E_{kind}_err"] = mean.tolist(), err.tolist()
        out[kind] = scales(t, mean)
    if "Q" in runs[0]:
        out["Q"] = [float(r["Q"][-1]) for r in runs]
    return out


def format_result(result: dict[str, Any], rows: int = 8) -> str:
    """A :func:`measure` result as a few lines a terminal shows."""
    t = np.asarray(result["t"])
    lines = [f"Wilson flow of {result['configurations']} configuration(s), RK3, eps {result['eps']:g}",
             f"{'t':>8}  {'t^2 E (plaquette)':>22}  {'t^2 E (clover)':>22}"]
    for k in np.unique(np.linspace(0, len(t) - 1, min(rows, len(t))).round().astype(int)):
        row = [f"{result[f't2E_{kind}'][k]:.5g} +- {result[f't2E_{kind}_err'][k]:.2g}" for kind in ("plaquette", "clover")]
        lines.append(f"{t[k]:>8.4g}  {row[0]:>22}  {row[1]:>22}")
    for kind in ("plaquette", "clover"):
        lines.append(f"{kind}: t0 = {result[kind]['t0']:.5g}, w0 = {result[kind]['w0']:.5g} "
                     "(NaN: not reached by t_max)")
    if "Q" in result:
        lines.append("flowed topological charge at t_max: " + ", ".join(f"{q:.3f}" for q in result["Q"][:12])
                     + (" ..." if len(result["Q"]) > 12 else ""))
    return "\n".join(lines)
