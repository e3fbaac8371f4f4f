"""SU(3) gauge fields: the sampler's autodiff force against a hand-written staple force.

The model is ``physics_models.yang_mills("SU(3)", (L, L, L, L), beta=6)``, the Wilson action
``S = beta sum_p (1 - Re tr U_p / 3)``. One HMC trajectory (2MN, step 0.05, 10 steps, so 20
gradients; unit mass, a fresh momentum, a Metropolis test) is run, jitted and vmapped over
chains, through the integrator's own code (:func:`hmc.integrators._trajectory` and the
group drift of :func:`hmc.integrators.metric_for`) with two forces:

- **autodiff**: ours, ``jax.grad(potential.energy)`` (JAX's gradient of the plaquette
  action, turned into the algebra force by :func:`hmc.geometry.lift`; the drift
  ``U <- reunitarize(exp(h P) U)`` with :func:`hmc.groups.matmul`);
- **staple**: the force lattice codes write by hand, ``F_mu(x) = beta / (2N) Pi(U_mu(x) Sigma_mu(x))``
  with ``Sigma_mu`` the sum of the ``2 (d - 1)`` staples and the 3x3 products written out
  (:func:`staple_force`; the sign is checked against autodiff, :func:`check_staple_force`).

Against them: the **limit**, the vmapped autodiff force alone in a ``lax.scan`` (time per
gradient), and **hmc.sample** itself (guard on, the plaquette as the model's only observable,
chunks of one trajectory; its time per trajectory from the chunks after the first, which
carries the compilation). Each repeat
runs one sampler chunk, then the limit, autodiff and staple back to back (from the
sampler's ``on_chunk``); ratios are medians over repeats of ratios within a repeat.
Targets: autodiff within 1.5x of staple per trajectory; autodiff per gradient within 1.3x of
the limit.

A second table times the parts at 8^4 x 1 chain (the force with and without the lift,
the staple force with ``jnp.matmul``, the exponential, the projections, the drift), with the
code path before the gauge-speed change (50183b0: the action and the lift with ``jnp.matmul``,
the drift with the polar projection) rebuilt here for the comparison.
float32 and float64 run in separate processes (``jax_enable_x64`` is set before any array).

    python scripts/bench.py --gauge                       # both precisions, into BENCHMARKS.md
    python scripts/gauge_bench.py --precision float64     # one precision, printed only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import hmc  # noqa: E402
import hmc.geometry  # noqa: E402
import hmc.groups  # noqa: E402
import hmc.integrators as integ  # noqa: E402
import physics_models  # noqa: E402
from physics_models.yang_mills import dagger, gauge_action, ordered_pairs, re_trace_product, shift_all  # noqa: E402

BETA = 6.0
INTEGRATOR = "minimum_norm"
STEP_SIZE = 0.05
NUM_STEPS = 10
GRADIENTS = NUM_STEPS * integ.gradient_evaluations_per_step(INTEGRATOR)  # per trajectory
CASES = ((8, 1), (8, 4), (4, 64))  # (L, chains)
PRECISIONS = ("float32", "float64")
SU3 = hmc.groups.SU3()
HEADER = ("| lattice x chains | precision | autodiff ms/traj | staple ms/traj | autodiff / staple "
          "| limit ms/grad | autodiff / limit | hmc.sample (plaquette only) / limit | acceptance |")
PARTS_HEADER = "| part (8^4, 1 chain) | float32 ms | float64 ms |"


# -- the hand-written force -------------------------------------------------------------
def product(a: Array, b: Array) -> Array:
    """``a @ b`` over the trailing 3x3 axes, written out as products of entries and a sum
    (lattice codes' unrolled SU(3) multiply): one fused elementwise loop for XLA on CPU,
    where a batched ``dot_general`` of 3x3 matrices is about eight times slower."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def staple_sum(u: Array, mm: Callable[[Array, Array], Array] = product) -> Array:
    """``Sigma_mu(x) = sum_{nu != mu} [U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag
    + U_nu(x+mu-nu)^dag U_mu(x-nu)^dag U_nu(x-nu)]``, shape of ``u``: ``(d, *shape, N, N)``.

    With ``path(mu, nu) = U_mu(x) U_nu(x+mu)`` over the ordered pairs, the upper staple is
    ``U_nu(x+mu) path(nu, mu)^dag`` and the lower one ``path(mu, nu)^dag U_nu(x)`` moved to
    ``x + nu``: three products per ordered pair.
    """
    d = u.shape[0]
    mu, nu = ordered_pairs(d)
    swap = np.array([list(zip(mu, nu)).index((b, a)) for a, b in zip(mu, nu)])
    corners = shift_all(u)  # [m, n] -> U_n(x + m)
    path = mm(u[mu], corners[mu, nu])
    upper = mm(corners[mu, nu], dagger(path[swap]))
    lower = mm(dagger(path), u[nu])
    lower = jnp.stack([jnp.roll(lower[p], 1, axis=int(n)) for p, n in enumerate(nu)])
    return jnp.sum((upper + lower).reshape(d, d - 1, *u.shape[1:]), axis=1)


def staple_force(u: Array, beta: float = BETA, mm: Callable[[Array, Array], Array] = product) -> Array:
    """The algebra force of the Wilson action, ``F_mu(x) = beta / (2N) Pi(U_mu(x) Sigma_mu(x))``
    (``Pi`` the traceless anti-Hermitian part), in our convention
    ``F = sum_a (d/dt S(exp(t T_a) U)|_0) T_a``, ``tr(T_a T_b) = -delta_ab / 2``: the sign and
    normalisation are the ones :func:`check_staple_force` finds against autodiff."""
    return beta / (2 * u.shape[-1]) * SU3.algebra(mm(u, staple_sum(u, mm)))


def wilson_action(u: Array, beta: float = BETA) -> Array:
    """``beta sum_p (1 - Re tr U_p / N)`` with the written-out product (as the staple code
    would compute the energy at the end of a trajectory)."""
    d, n = u.shape[0], u.shape[-1]
    mu, nu = np.triu_indices(d, 1)
    corners = shift_all(u)
    plaquettes = re_trace_product(product(u[mu], corners[mu, nu]), product(u[nu], corners[nu, mu])) / n
    return beta * jnp.sum(1.0 - plaquettes)


def check_staple_force(dtype: Any) -> dict[str, float]:
    """``max |F_staple - jax.grad(potential.energy)|`` on a Haar-random 4^4 configuration,
    and the same with the opposite sign (so that a wrong sign cannot pass)."""
    potential = physics_models.yang_mills(group="SU(3)", shape=(4, 4, 4, 4), beta=BETA)
    u = SU3.random(jax.random.key(11), (4, 4, 4, 4, 4), dtype)
    autodiff = jax.jit(jax.grad(potential.energy))({"U": u})["U"]
    staple = jax.jit(staple_force)(u)
    return {"max_difference": float(jnp.max(jnp.abs(staple - autodiff))),
            "max_difference_opposite_sign": float(jnp.max(jnp.abs(staple + autodiff))),
            "max_force": float(jnp.max(jnp.abs(autodiff)))}


# -- the code path before the gauge-speed change (50183b0), for the breakdown ----------------
def matmul_energy(q: dict) -> Array:
    """Our potential as it was computed before ``hmc.groups.matmul``: the plaquette action
    and the lift (:func:`hmc.geometry.force`) with ``jnp.matmul`` (XLA's ``dot_general``)."""
    u = _matmul_lift(q["U"])
    d, n = u.shape[0], u.shape[-1]
    mu, nu = np.triu_indices(d, 1)
    corners = shift_all(u)
    plaquettes = re_trace_product(jnp.matmul(u[mu], corners[mu, nu]), jnp.matmul(u[nu], corners[nu, mu])) / n
    return BETA * jnp.sum(1.0 - plaquettes)


@jax.custom_vjp
def _matmul_lift(u: Array) -> Array:
    return u


_matmul_lift.defvjp(lambda u: (u, u), lambda u, g: (-0.5 * SU3.algebra(jnp.matmul(u, jnp.swapaxes(g, -1, -2))),))


def polar_drift(position: dict, velocity: dict, h: Array) -> dict:
    """The drift as it was: ``project(exp(h P) @ U)`` with ``jnp.matmul`` and the polar
    projection (:meth:`hmc.groups.Group.project`, 6 Newton steps) in place of
    :meth:`hmc.groups.SU3.reunitarize`."""
    u = position["U"]
    return {"U": SU3.project(jnp.matmul(SU3.exp((h * velocity["U"]).astype(u.dtype)), u))}


# -- trajectories --------------------------------------------------------------------------
class ChainState(NamedTuple):
    """One chain between trajectories: the gradient and energy are carried, as the sampler does."""

    position: dict
    potential_energy: Array
    potential_energy_grad: dict


ForceFn = Callable[[dict], dict]
ValueAndForceFn = Callable[[dict], tuple[Array, dict]]


def transition(potential: Any, force: ForceFn, value_and_force: ValueAndForceFn, like: dict,
               drift: Callable | None = None) -> Callable[[Array, ChainState], tuple[ChainState, Array]]:
    """``(key, state) -> (state, accepted)``: one 2MN trajectory with ``force`` (and the
    energy at its end from ``value_and_force``) and a Metropolis test; ``drift`` defaults to
    the sampler's group drift."""
    plan = integ.schedule(INTEGRATOR)
    metric = integ.metric_for(potential, None, like)
    drift = drift or metric.drift

    def step(key: Array, state: ChainState) -> tuple[ChainState, Array]:
        key_momentum, key_accept = hmc.rng.split(key, 2)
        momentum = metric.sample_momentum(key_momentum, state.position)
        start = integ.IntegratorState(state.position, momentum, state.potential_energy_grad)
        end, _, potential_end = integ._trajectory(plan, (force,), (value_and_force,), metric.velocity, start,
                                                  STEP_SIZE, NUM_STEPS, False, drift_fn=drift)
        delta = (potential_end + metric.kinetic_energy(end.momentum)
                 - state.potential_energy - metric.kinetic_energy(momentum))
        delta = jnp.where(jnp.isfinite(delta), delta, jnp.inf)
        accepted = jnp.log(hmc.rng.uniform(key_accept, delta.dtype)) < -delta
        proposal = ChainState(end.position, potential_end, end.potential_energy_grad)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(accepted, new, old), proposal, state), accepted

    return step


def trajectories_runner(potential: Any, force: ForceFn, value_and_force: ValueAndForceFn, links: Array,
                        n_traj: int, drift: Callable | None = None) -> Callable[[], tuple]:
    """``n_traj`` trajectories of every chain of ``links`` (``(chains, d, *shape, 3, 3)``) in one
    jitted ``lax.scan``, compiled here; the returned call reruns them from the same start."""
    chains = links.shape[0]
    step = jax.vmap(transition(potential, force, value_and_force, {"U": links[0]}, drift))
    states = jax.jit(jax.vmap(lambda u: ChainState({"U": u}, *value_and_force({"U": u}))))(links)
    keys = hmc.rng.split(jax.random.key(1), n_traj)

    @jax.jit
    def run(states: ChainState) -> tuple:
        def body(states: ChainState, key: Array) -> tuple:
            return step(hmc.rng.split(key, chains), states)

        return jax.lax.scan(body, states, keys)

    jax.block_until_ready(run(states))
    return lambda: run(states)


def limit_runner(force: ForceFn, links: Array, n_grads: int) -> Callable[[], Array]:
    """The vmapped force alone, ``n_grads`` times in a ``lax.scan`` (as scripts/bench.py's limit)."""
    vmapped = jax.vmap(force)

    @jax.jit
    def run(u: Array) -> Array:
        return jax.lax.scan(lambda u, _: (u - 1e-4 * vmapped({"U": u})["U"], None), u, None, length=n_grads)[0]

    jax.block_until_ready(run(links))
    return lambda: run(links)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def links_for(size: int, chains: int, dtype: Any) -> Array:
    return SU3.random(jax.random.key(3), (chains, 4, size, size, size, size), dtype)


def autodiff_pair(potential: Any) -> tuple[ForceFn, ValueAndForceFn]:
    return jax.grad(potential.energy), jax.value_and_grad(potential.energy)


def staple_pair() -> tuple[ForceFn, ValueAndForceFn]:
    def force(q: dict) -> dict:
        return {"U": staple_force(q["U"])}

    return force, lambda q: (wilson_action(q["U"]), force(q))


def measure(size: int, chains: int, precision: str, repeats: int) -> dict[str, float]:
    """One row: medians over ``repeats`` of (sampler chunk, limit, autodiff, staple), run back
    to back from the sampler's ``on_chunk``."""
    dtype = jnp.complex64 if precision == "float32" else jnp.complex128
    potential = physics_models.yang_mills(group="SU(3)", shape=(size,) * 4, beta=BETA)
    links = links_for(size, chains, dtype)
    runners = {
        "limit": limit_runner(jax.grad(potential.energy), links, GRADIENTS),
        "autodiff": trajectories_runner(potential, *autodiff_pair(potential), links, 1),
        "staple": trajectories_runner(potential, *staple_pair(), links, 1),
    }
    accepted = [float(np.mean(runners[k]()[1])) for k in ("autodiff", "staple")]
    times: dict[str, list[float]] = {k: [] for k in (*runners, "sampler")}

    chunks = []

    def between(end: Any) -> None:
        chunks.append(end.record)
        if len(chunks) == 1:  # the first chunk carries the compilation
            return
        times["sampler"].append(end.record["seconds"] * chains / end.record["trajectories"])
        for name, run in runners.items():
            times[name].append(seconds(run))

    # the plaquette as the only observable, as scripts/bench.py's targets have none: the model's
    # default six (Wilson loops, the clover charge) cost more than the force (see parts())
    lean = dataclasses.replace(potential, observables={"plaquette": potential.observables["plaquette"]},
                               derived={}, exact={})
    hmc.sample(lean, seed=0, num_chains=chains, num_warmup=0, num_samples=repeats + 1, step_size=STEP_SIZE,
               num_steps=NUM_STEPS, integrator=INTEGRATOR, mass_matrix="identity", record=[], chunk_size=1,
               init_positions={"U": links}, precision=precision, progress=False, on_chunk=between)
    t = {k: np.asarray(v) for k, v in times.items()}
    return {
        "autodiff_ms": 1e3 * float(np.median(t["autodiff"])),
        "staple_ms": 1e3 * float(np.median(t["staple"])),
        "limit_ms_per_grad": 1e3 * float(np.median(t["limit"])) / GRADIENTS,
        "autodiff_over_staple": float(np.median(t["autodiff"] / t["staple"])),
        "autodiff_over_limit": float(np.median(t["autodiff"] / t["limit"])),
        "sampler_over_limit": float(np.median(t["sampler"] / t["limit"])),
        "acceptance": float(np.mean(accepted)),
        "repeats": len(t["limit"]),
    }


def row(size: int, chains: int, precision: str, m: dict[str, float]) -> str:
    return (f"| {size}^4 x {chains} | {precision} | {m['autodiff_ms']:.0f} | {m['staple_ms']:.0f} "
            f"| {m['autodiff_over_staple']:.2f}x | {m['limit_ms_per_grad']:.1f} | {m['autodiff_over_limit']:.2f}x "
            f"| {m['sampler_over_limit']:.2f}x | {m['acceptance']:.2f} |")


# -- where the time goes --------------------------------------------------------------------
PART_CALLS = 10


def in_scan(part: Callable[[Array], Any], links: Array) -> Callable[[], Array]:
    """``part`` :data:`PART_CALLS` times in a jitted ``lax.scan``, each call on the last one's
    links (``u + 1e-7 * part(u)``, or its sum for other shapes), as the limit runs the force: a
    single call would also time the allocation of its output and temporaries, which a loop
    reuses (in float64 at 8^4 a single force call took 3-4 times its time in a loop)."""
    def body(u: Array, _: None) -> tuple[Array, None]:
        leaves = jax.tree_util.tree_leaves(part(u))
        if len(leaves) == 1 and leaves[0].shape == u.shape:
            return u + 1e-7 * leaves[0], None
        return u + 1e-7 * sum(jnp.sum(jnp.real(leaf)) for leaf in leaves), None

    run = jax.jit(lambda u: jax.lax.scan(body, u, None, length=PART_CALLS)[0])
    jax.block_until_ready(run(links))
    return lambda: run(links)


def parts(precision: str, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of each part at 8^4 x 1 chain (every force and drift on all 4 V links),
    and per gradient of whole trajectories, ours and with the code path before the change."""
    dtype = jnp.complex64 if precision == "float32" else jnp.complex128
    potential = physics_models.yang_mills(group="SU(3)", shape=(8, 8, 8, 8), beta=BETA)
    links = links_for(8, 1, dtype)
    momentum = jax.vmap(lambda u: SU3.random_algebra(jax.random.key(4), u.shape[:-2], u.dtype))(links)
    raw = jax.vmap(jax.grad(lambda u: gauge_action(u, BETA)))
    cotangent = raw(links)
    ours_drift = integ.metric_for(potential, None, {"U": links[0]}).drift
    x = STEP_SIZE * momentum

    def drift(fn: Callable) -> Callable[[Array], Array]:
        return lambda u: jax.vmap(lambda u, p: fn({"U": u}, {"U": p}, STEP_SIZE))(u, momentum)["U"]

    out = {
        "force: autodiff, ours (jax.grad(potential.energy))": jax.vmap(
            lambda u: jax.grad(potential.energy)({"U": u})["U"]),
        "force: autodiff without the lift (JAX's gradient G only)": raw,
        "force: the lift alone, -(1/2) Pi(U G^T)": lambda u: hmc.geometry.force(SU3, u, cotangent),
        "force: autodiff, action and lift with jnp.matmul (before)": jax.vmap(
            lambda u: jax.grad(matmul_energy)({"U": u})["U"]),
        "force: staple, written-out products (b)": jax.vmap(staple_force),
        "force: staple, jnp.matmul products": jax.vmap(lambda u: staple_force(u, mm=jnp.matmul)),
        "3x3 products of all links: hmc.groups.matmul (written out)": lambda u: hmc.groups.matmul(u, u),
        "3x3 products of all links: jnp.matmul": lambda u: jnp.matmul(u, u),
        "exp(h P): SU3.exp": lambda u: SU3.exp(x + 1e-9 * SU3.algebra(u)),  # depends on u: not hoisted
        "projection: SU3.reunitarize (Gram-Schmidt, ours in the drift)": SU3.reunitarize,
        "projection: SU3.project (polar, 6 Newton steps; before)": SU3.project,
        "drift: ours, reunitarize(exp(h P) U)": drift(ours_drift),
        "drift: project(exp(h P) @ U), polar and jnp.matmul (before)": drift(polar_drift),
        "observables per draw: the model's six (hmc.sample's default)": jax.vmap(lambda u: potential.observe({"U": u})),
        "observables per draw: wilson_loops (3x3) alone": jax.vmap(
            lambda u: potential.observables["wilson_loops"]({"U": u})),
    }
    functions = {name: in_scan(fn, links) for name, fn in out.items()}
    before = (jax.grad(matmul_energy), jax.value_and_grad(matmul_energy))
    variants = {
        "trajectory per gradient: (a) autodiff, ours": (autodiff_pair(potential), None),
        "trajectory per gradient: autodiff, before (jnp.matmul, polar projection)": (before, polar_drift),
        "trajectory per gradient: (b) staple, our drift": (staple_pair(), None),
    }
    trajectories = {name: trajectories_runner(potential, *pair, links, 1, drift)
                    for name, (pair, drift) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in (*functions, *trajectories)}
    for round_ in range(repeats):  # interleaved, as the main table: load changes hit every part alike
        for name, fn in functions.items():
            times[name].append(seconds(fn) / PART_CALLS)
        for name, run in trajectories.items():
            if round_ < 3:
                times[name].append(seconds(run) / GRADIENTS)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


# -- one precision per process ------------------------------------------------------------
def run_precision(precision: str, repeats: int, cases: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """Everything at one precision (``jax_enable_x64`` must already match it)."""
    dtype = jnp.complex64 if precision == "float32" else jnp.complex128
    check = check_staple_force(dtype)
    print(f"{precision}: staple force against jax.grad(potential.energy) on 4^4: max |difference| "
          f"{check['max_difference']:.2e} (opposite sign {check['max_difference_opposite_sign']:.2e}, "
          f"max |F| {check['max_force']:.2f})", flush=True)
    tolerance = 1e-12 if precision == "float64" else 1e-5
    if not check["max_difference"] <= tolerance:
        raise SystemExit(f"the staple force is not our force ({check['max_difference']:.2e} > {tolerance:.0e})")
    rows = []
    for size, chains in cases:
        m = measure(size, chains, precision, repeats)
        rows.append(row(size, chains, precision, m))
        print(rows[-1], flush=True)
    breakdown = parts(precision)
    for name, ms in breakdown.items():
        print(f"  {name}: {ms:.2f} ms", flush=True)
    return {"check": check, "rows": rows, "parts": breakdown, "jax": jax.__version__}


def tables(repeats: int = 3, cases: tuple[tuple[int, int], ...] = CASES) -> dict[str, Any]:
    """Each precision in its own process; returns ``{"check": {precision: ...}, "rows": [...],
    "parts": [...lines]}``."""
    results = {}
    print(HEADER, flush=True)
    for precision in PRECISIONS:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            spec = ",".join(f"{s}x{c}" for s, c in cases)
            subprocess.run([sys.executable, os.path.abspath(__file__), "--precision", precision, "--repeats",
                            str(repeats), "--cases", spec, "--json", out.name], check=True)
            results[precision] = json.load(open(out.name))
    names = list(results[PRECISIONS[0]]["parts"])
    parts_rows = [f"| {name} | " + " | ".join(f"{results[p]['parts'][name]:.2f}" for p in PRECISIONS) + " |"
                  for name in names]
    return {"check": {p: results[p]["check"] for p in PRECISIONS},
            "rows": [r for p in PRECISIONS for r in results[p]["rows"]], "parts": parts_rows,
            "jax": results[PRECISIONS[0]]["jax"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="one precision in this process, printed only (default: both, each in a subprocess)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(f"{s}x{c}" for s, c in CASES), help="LxCHAINS,...")
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = tuple(tuple(int(v) for v in case.split("x")) for case in args.cases.split(",") if case)
    if args.precision is None:
        tables(args.repeats, cases)
        return 0
    jax.config.update("jax_enable_x64", args.precision == "float64")
    if args.json is None:
        print(HEADER, flush=True)
    result = run_precision(args.precision, args.repeats, cases)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
