"""Dynamical Wilson fermions on SU(3) in 4D: even-odd, nested timescales, and the autodiff
fermion force against a hand-written one.

The model is ``physics_models.qcd("SU(3)", (L, L, L, L), beta=5.6, mass=0.1)`` with two
flavours of pseudofermions (``S_F = phi^dag (M^dag M)^{-1} phi``, one CG solve to ``1e-8``
per force), in float64. The links are thermalised-ish: a quenched run
(``physics_models.yang_mills``, the same beta) from a cold start, :data:`THERMAL_TRAJECTORIES`
trajectories of length 1 with the step adapted, the last state kept.

Three parts, each in its own process (``jax_enable_x64`` is set before any array):

- **even-odd** (``--part even_odd``): at 4^4 and 8^4, on the same links and for the same
  Gaussian ``eta`` (pseudofermions ``phi = M^dag eta``, the model's exact heat bath, for either
  operator ``M = D`` or the Schur complement ``D_hat``), the CG iterations, the time per force
  (``jax.grad`` of the fermion term, the solve included) and the time of one application of
  ``M`` and of ``M^dag M``, with ``even_odd`` off and on; and where the Schur complement's time
  goes (its two packed hops against the full hop).
- **schemes** (``--part schemes``): at 4^4, flat 2MN, nested 2MN (fermion outer, gauge inner)
  and the three-level Hasenbusch split at equal acceptance: from the same configurations of the
  dynamical theory, trajectory length 1, a scan of the outer step count (the step fixed at
  ``1/n``) and a run at each scheme's cheapest count with acceptance at least
  :data:`TARGET_ACCEPT`; seconds and forces per trajectory and per effective sample of the
  plaquette (each scheme's result cached as it ends; ``--samples`` sets the run's length).
- **forces** (``--part forces``): the fermion force by autodiff through the solver's custom
  rule (what the model does) against :func:`hand_force`, written out here for the
  unpreconditioned operator; checked against autodiff to rounding before it is timed, both
  with the CG solve and given its solution ``X``.

    python scripts/bench.py --qcd                        # all parts, into BENCHMARKS.md
    python scripts/bench.py --qcd --part forces          # rerun one part (others from the cache)
    python scripts/qcd_bench.py --part forces            # one part, printed only
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import hmc  # noqa: E402
import hmc.diagnostics  # noqa: E402
import hmc.forces  # noqa: E402
import hmc.groups  # noqa: E402
import hmc.integrators as integ  # noqa: E402
import physics_models  # noqa: E402
from physics_models import wilson as w  # noqa: E402
from physics_models.fermions import to_complex, to_real  # noqa: E402
from physics_models.yang_mills import plaquettes  # noqa: E402

BETA = 5.6
MASS = 0.1
CG_TOL = 1e-8
CG_MAXITER = 2000
THERMAL_TRAJECTORIES = 100
SU3 = hmc.groups.SU3()
PARTS = ("even_odd", "forces", "schemes")
qcd_module = importlib.import_module("physics_models.qcd")  # the package exports the factory as qcd
CACHE = os.path.join(HERE, "..", "out", "qcd_bench")


# -- configurations and timing ---------------------------------------------------------------
def thermal_links(size: int, trajectories: int = THERMAL_TRAJECTORIES, seed: int = 0) -> Array:
    """``(4, L, L, L, L, 3, 3)`` complex128 links: a quenched run at :data:`BETA` from a cold
    start, ``trajectories`` trajectories of length 1 (step adapted), the last state; kept in
    :data:`CACHE` so that every part sees the same configuration."""
    path = os.path.join(CACHE, f"links_{size}_{trajectories}_{seed}.npy")
    if os.path.exists(path):
        return jnp.asarray(np.load(path))
    u = quenched_run(size, trajectories, seed)
    os.makedirs(CACHE, exist_ok=True)
    np.save(path, np.asarray(u))
    return u


def quenched_run(size: int, trajectories: int, seed: int) -> Array:
    quenched = physics_models.yang_mills(group="SU(3)", shape=(size,) * 4, beta=BETA, start="cold")
    quenched = dataclasses.replace(quenched, observables={"plaquette": quenched.observables["plaquette"]},
                                   derived={}, exact={})
    r = hmc.sample(quenched, seed=seed, num_chains=1, num_warmup=trajectories - 1, num_samples=1,
                   trajectory_length=1.0, precision="float64", record=[], progress=False, guard="off")
    return jnp.asarray(r.final_positions["U"][0], jnp.complex128)


def plaquette(u: Array) -> float:
    return float(jnp.mean(plaquettes(u)))


def looped(fn: Callable[[Array], Any], u: Array, calls: int) -> Callable[[], Array]:
    """``fn`` ``calls`` times in one jitted ``lax.scan``, each call on links nudged by the last
    one's output (so that nothing is hoisted); compiled here. A loop, not single calls: it
    reuses buffers as a trajectory does."""
    def body(links: Array, _: None) -> tuple[Array, None]:
        out = fn(links)
        leaves = jax.tree_util.tree_leaves(out)
        nudge = sum(jnp.sum(jnp.real(leaf)) for leaf in leaves)
        return links + 1e-30 * nudge, None

    run = jax.jit(lambda links: jax.lax.scan(body, links, None, length=calls)[0])
    jax.block_until_ready(run(u))
    return lambda: run(u)


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved(runners: dict[str, tuple[Callable[[], Any], int]], repeats: int) -> dict[str, np.ndarray]:
    """``{name: seconds per call over repeats}`` for ``{name: (runner, calls per run)}``, the
    runners interleaved within each repeat (load changes hit all alike)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run, calls) in runners.items():
            times[name].append(seconds(run) / calls)
    return {name: np.asarray(t) for name, t in times.items()}


def fermion_model(size: int, even_odd: bool, **kw: Any) -> Any:
    return physics_models.qcd(group="SU(3)", shape=(size,) * 4, beta=BETA, mass=MASS, even_odd=even_odd,
                              cg_tol=CG_TOL, cg_maxiter=CG_MAXITER, **kw)


def sources(potential: Any, u: Array, count: int, seed: int = 5) -> Array:
    """``count`` pseudofermion fields from the model's heat bath (``phi = M^dag eta``, ``eta``
    complex Gaussian from the keys ``fold_in(key(seed), i)``), stacked."""
    fields = [potential.refresh(jax.random.fold_in(jax.random.key(seed), i), {"U": u})["phi"] for i in range(count)]
    return jnp.stack(fields)


def autodiff_force(potential: Any) -> Callable[[Array, Array], Array]:
    """``(u, phi) -> F``: ``jax.grad`` of the model's fermion term (one CG solve, the custom
    rule, the lift to the algebra), as the sampler computes it."""
    term = potential.terms["fermion"]
    return jax.grad(lambda u, phi: term(potential.lifted({"U": u, "phi": phi})))


# -- (a) even-odd ---------------------------------------------------------------------------------
def chained(fn: Callable[[Array], Array], psi: Array, calls: int = 10) -> Callable[[], Array]:
    """``psi <- fn(psi) / 100`` ``calls`` times in a jitted ``lax.scan`` (as a CG applies its
    operator: each call on the last one's output); compiled here."""
    run = jax.jit(lambda p: jax.lax.scan(lambda p, _: (0.01 * fn(p), None), p, None, length=calls)[0])
    jax.block_until_ready(run(psi))
    return lambda: run(psi)


def operator_runners(op: w.Wilson, u: Array, psi: Array) -> dict[str, tuple[Callable[[], Any], int]]:
    """Applications of ``M`` and of ``M^dag M`` at fixed links (``prepare`` once, as the CG)."""
    prep = w.prepare(op, u)
    tag = "D_hat" if op.even_odd else "D"
    return {f"M = {tag}": (chained(lambda p: w.matvec(op, prep, p), psi), 10),
            f"M^dag M, M = {tag}": (chained(lambda p: w.matvec_dagger(op, prep, w.matvec(op, prep, p)), psi), 10)}


def hop_runners(size: int, u: Array) -> dict[str, tuple[Callable[[], Any], int]]:
    """Where the Schur complement's time goes: the full hop, one packed hop (half the sites),
    and hops chained 1, 2, 4 times in one loop body."""
    shape = (size,) * 4
    full, eo = w.Wilson(shape, MASS, 0.0, False), w.Wilson(shape, MASS, 0.0, True)
    prep = w.prepare(eo, u)
    psi = to_complex(jax.random.normal(jax.random.key(2), (2, *shape, 4, 3), jnp.float64))
    half = w.pack(psi, shape, 1)
    out = {"one full hop H": (chained(lambda p: full.hop(u, p), psi), 10),
           "one packed hop H_oe (half the sites)": (chained(
               lambda p: w.hop_packed(eo, prep["u_odd"], prep["u_even"], p, 1), half), 10)}
    for k in (2, 4):
        def many(p: Array, k: int = k) -> Array:
            for _ in range(k):
                p = full.hop(u, p)
            return p

        out[f"{k} full hops chained in one body (per hop)"] = (chained(many, psi), 10 * k)
    return out


def even_odd_part(sizes: tuple[int, ...] = (4, 8), count: int = 4, repeats: int = 3) -> dict[str, Any]:
    """Per lattice: plaquette, CG iterations per source, time per force and per operator
    application with ``even_odd`` off and on (same links, the same ``eta``)."""
    out = {}
    for size in sizes:
        u = thermal_links(size)
        runners, iterations = {}, {}
        for even_odd in (False, True):
            potential = fermion_model(size, even_odd)
            op = w.Wilson((size,) * 4, MASS, 0.0, even_odd)
            phis = sources(potential, u, count)
            iterations[even_odd] = [int(qcd_module.normal_solve(op, u, phi, CG_TOL, CG_MAXITER)[1][0]) for phi in phis]
            force = autodiff_force(potential)
            runners[f"force, even_odd={even_odd}"] = (looped(
                lambda links, force=force, phis=phis: jax.lax.map(lambda phi: force(links, phi), phis), u, 1), count)
            runners.update(operator_runners(op, u, to_complex(phis[0])))
        runners.update(hop_runners(size, u))
        times = interleaved(runners, repeats)
        ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
        ratio = float(np.median(times["force, even_odd=True"] / times["force, even_odd=False"]))
        out[str(size)] = {"plaquette": plaquette(u), "iterations": {str(k): v for k, v in iterations.items()},
                          "ms": ms, "force_ratio": ratio, "count": count, "repeats": repeats}
        print(size, json.dumps(out[str(size)]), flush=True)
    return out


# -- (c) the hand-written force -----------------------------------------------------------------------
def spin(matrix: np.ndarray, psi: Array) -> Array:
    """``matrix psi`` on the spin axis (-2) of ``psi`` ``(..., 4, 3)``, over the non-zero entries."""
    rows = []
    for s in range(matrix.shape[0]):
        terms = [complex(matrix[s, t]) * psi[..., t, :] for t in np.flatnonzero(np.abs(matrix[s]) > 1e-14)]
        rows.append(sum(terms[1:], terms[0]))
    return jnp.stack(rows, axis=-2)


def outer(a: Array, b: Array) -> Array:
    """``sum_s a_s b_s^dag``: colour matrices ``(..., 3, 3)`` from spinors ``(..., 4, 3)``."""
    return jnp.sum(a[..., :, :, None] * jnp.conj(b)[..., :, None, :], axis=-3)


def product(a: Array, b: Array) -> Array:
    """``a @ b`` over the trailing 3x3 axes, written out (no batched ``dot_general``)."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def hand_force(op: w.Wilson, u: Array, x: Array) -> Array:
    """The algebra force of ``S = phi^dag (D^dag D)^{-1} phi`` given ``X = (D^dag D)^{-1} phi``
    (complex ``(*shape, 4, 3)``), unpreconditioned ``D`` (no clover term).

    With ``Y = D X``, ``dS = -X^dag d(D^dag D) X = -2 Re Y^dag dD X``, and only the hop of
    ``D`` depends on the links: ``dD psi(x) = -1/2 s_mu(x) [(1 - gamma_mu) dU_mu(x) psi(x + mu)
    + (1 + gamma_mu) dU_mu(x - mu)^dag psi(x - mu)]`` (``s_mu = -1`` on the time links that
    cross the antiperiodic boundary). Along ``U -> exp(t T_a) U`` (``dU = T_a U``,
    ``dU^dag = -U^dag T_a``) that gives ``dS/dt = s Re tr(T_a M)``,

        M_mu(x) = U_mu(x) sum_s X(x+mu)_s [(1 - gamma_mu) Y(x)]_s^dag
                  - sum_s X(x)_s [(1 + gamma_mu) Y(x+mu)]_s^dag U_mu(x)^dag,

    and with ``F_a = -2 Re tr(F T_a)``, ``tr(T_a T_b) = -delta_ab / 2``: ``F = -(s / 2) Pi(M)``,
    ``Pi`` the traceless anti-Hermitian part."""
    y = op.apply(u, x)
    forward_sign, _ = w.time_signs(op.shape, x.real.dtype)
    eye, gamma = np.eye(4), op._gamma
    forces = []
    for mu in range(op.d):
        x_up, y_up = jnp.roll(x, -1, axis=mu), jnp.roll(y, -1, axis=mu)
        m = product(u[mu], outer(x_up, spin(eye - gamma[mu], y))) - product(
            outer(x, spin(eye + gamma[mu], y_up)), jnp.conj(jnp.swapaxes(u[mu], -1, -2)))
        sign = forward_sign if mu == op.d - 1 else 1.0
        forces.append(-0.5 * sign * SU3.algebra(m))
    return jnp.stack(forces)


def hand_force_with_solve(op: w.Wilson, u: Array, phi: Array) -> Array:
    """One CG solve (the model's :func:`physics_models.qcd.normal_solve`), then :func:`hand_force`."""
    x, _ = qcd_module.normal_solve(op, u, phi, CG_TOL, CG_MAXITER)
    return hand_force(op, u, to_complex(x))


def autodiff_given_x(potential: Any, op: w.Wilson) -> Callable[[Array, Array], Array]:
    """``(u, X) -> F``: what the solver's custom rule does after the solve, ``-d/dU (X . M^dag M X)``
    by ``jax.grad`` through the lift (the same VJP of the operator as the model's backward)."""
    def form(links: Array, x: Array) -> Array:
        lifted = potential.lifted({"U": links})["U"]
        prep = w.prepare(op, lifted)
        return -jnp.sum(jnp.real(jnp.conj(x) * w.matvec_dagger(op, prep, w.matvec(op, prep, x))))

    return jax.grad(form)


def check_hand_force(size: int, u: Array) -> dict[str, float]:
    """``max |F_hand - F_autodiff|`` at one heat-bath source (the same CG solution in both),
    with the opposite sign for comparison, and the largest force."""
    potential = fermion_model(size, False)
    op = w.Wilson((size,) * 4, MASS, 0.0, False)
    phi = sources(potential, u, 1)[0]
    autodiff = jax.jit(autodiff_force(potential))(u, phi)
    hand = jax.jit(lambda u, phi: hand_force_with_solve(op, u, phi))(u, phi)
    return {"max_difference": float(jnp.max(jnp.abs(hand - autodiff))),
            "max_difference_opposite_sign": float(jnp.max(jnp.abs(hand + autodiff))),
            "max_force": float(jnp.max(jnp.abs(autodiff)))}


def forces_part(sizes: tuple[int, ...] = (4, 8), repeats: int = 3) -> dict[str, Any]:
    """Per lattice: the check, then autodiff against hand-written, with the solve (one per
    force) and given ``X``; medians of ratios within interleaved repeats."""
    out = {}
    for size in sizes:
        u = thermal_links(size)
        check = check_hand_force(size, u)
        print(size, "check", check, flush=True)
        if not check["max_difference"] <= 1e-10 * max(1.0, check["max_force"]):
            raise SystemExit(f"the hand-written force is not the model's force: {check}")
        potential = fermion_model(size, False)
        op = w.Wilson((size,) * 4, MASS, 0.0, False)
        phi = sources(potential, u, 1)[0]
        x = to_complex(qcd_module.normal_solve(op, u, phi, CG_TOL, CG_MAXITER)[0])
        with_solve = 2
        runners = {
            "autodiff, with solve": (looped(lambda links: autodiff_force(potential)(links, phi), u, with_solve),
                                     with_solve),
            "hand, with solve": (looped(lambda links: hand_force_with_solve(op, links, phi), u, with_solve), with_solve),
            "autodiff, given X": (looped(lambda links: autodiff_given_x(potential, op)(links, x), u, 10), 10),
            "hand, given X": (looped(lambda links: hand_force(op, links, x), u, 10), 10),
            "one D^dag D application": (chained(lambda p: w.matvec_dagger(op, w.prepare(op, u), w.matvec(
                op, w.prepare(op, u), p)), x), 10),
        }
        times = interleaved(runners, repeats)
        out[str(size)] = {
            "check": check, "plaquette": plaquette(u),
            "iterations": int(qcd_module.normal_solve(op, u, phi, CG_TOL, CG_MAXITER)[1][0]),
            "ms": {name: 1e3 * float(np.median(t)) for name, t in times.items()},
            "with_solve_ratio": float(np.median(times["autodiff, with solve"] / times["hand, with solve"])),
            "given_x_ratio": float(np.median(times["autodiff, given X"] / times["hand, given X"])),
            "repeats": repeats}
        print(size, json.dumps(out[str(size)]), flush=True)
    return out


# -- (b) nested timescales ------------------------------------------------------------------------------
INNER = 4  # gauge steps per drift of the level above
HASENBUSCH_MASS = 0.5
TARGET_ACCEPT = 0.8  # each scheme's cheapest step count with at least this acceptance (as the Schwinger scan)
SCAN_STEPS = tuple(range(1, 9))  # outer steps per trajectory tried
SCAN_DRAWS = 20  # trajectories per chain at each step count of the scan (one chunk)
EQUILIBRATION = 200  # trajectories of the flat run that brings the quenched start to the dynamical theory


def schemes(inner: int = INNER, hasenbusch_mass: float = HASENBUSCH_MASS) -> list[tuple[str, dict, list | None]]:
    """``[(name, model keywords, levels)]``: flat 2MN, nested 2MN (fermion outer, gauge ``inner``
    steps per outer drift) and Hasenbusch on three levels (ratio outer, one heavy step, gauge
    ``inner``)."""
    return [
        ("flat 2MN", {}, None),
        (f"nested 2MN: fermion / gauge x {inner}", {}, [{"terms": ["fermion"], "steps": 1},
                                                       {"terms": ["gauge"], "steps": inner}]),
        (f"Hasenbusch m_h = {hasenbusch_mass:g}: ratio / heavy / gauge x {inner}", {"hasenbusch_mass": hasenbusch_mass},
         [{"terms": ["fermion_ratio"], "steps": 1}, {"terms": ["fermion_heavy"], "steps": 1},
          {"terms": ["gauge"], "steps": inner}]),
    ]


def suggested(potential: Any, levels: list, u: Array, seed: int = 3) -> dict:
    """What ``hmc summary`` would suggest for ``levels`` at one outer step per trajectory:
    ``{"steps": [...], "forces": {term: {rms, max}}}`` (``hmc.forces.suggest_steps``: every
    level's ``eps_l * max|F_l|`` brought to the outermost's), from the forces at ``u`` (one
    configuration per chain) with fresh pseudofermions. Recorded, not used: see the table's notes."""
    keys = jax.random.split(jax.random.key(seed), u.shape[0])
    fields = jax.vmap(lambda k, q: potential.refresh(k, {"U": q}))(keys, u)
    states = types.SimpleNamespace(position={"U": u}, auxiliary=fields)
    measured = hmc.forces.chunk_forces(potential, [(level["terms"], 1) for level in levels], states, step_size=1.0)
    return {"steps": hmc.forces.suggest_steps(measured["levels"]), "forces": measured["terms"]}


def forces_per_step(timescales: list | None) -> dict[str, int]:
    """Force evaluations of each term per 2MN step (flat: every term at every kick)."""
    if not timescales:
        return {"fermion": integ.gradient_evaluations_per_step("minimum_norm"),
                "gauge": integ.gradient_evaluations_per_step("minimum_norm")}
    counts = integ.evaluations_per_step("minimum_norm", tuple(level["steps"] for level in timescales))
    return {term: c for c, level in zip(counts, timescales) for term in level["terms"]}


def fixed_run(potential: Any, timescales: list | None, u: Array, n: int, samples: int, seed: int) -> tuple[Any, list]:
    """``samples`` trajectories of length 1 in ``n`` 2MN steps (the step fixed at ``1 / n``: the
    sampler's ``ceil(1 / step)`` steps of ``1 / n`` each) on every chain from ``u``; no warmup.
    Every ``n`` runs the same compiled program. Returns the result and the chunk records."""
    records: list[dict] = []
    extra = {} if timescales is None else {"timescales": timescales}
    r = hmc.sample(potential, seed=seed, num_chains=u.shape[0], num_warmup=0, num_samples=samples,
                   integrator="minimum_norm", mass_matrix="identity", step_size=(1.0 + 1e-9) / n,
                   trajectory_length=1.0, precision="float64", init_positions={"U": u}, record=[],
                   chunk_size=SCAN_DRAWS, progress=False, on_chunk=lambda end: records.append(end.record), **extra)
    assert np.all(np.asarray(r.stats["n_steps"]) == n), "the fixed step did not give n steps"
    return r, records


def scan(potential: Any, timescales: list | None, u: Array) -> list[dict]:
    """Acceptance ``<min(1, exp(-dH))>`` and ``<dH>`` at each outer step count of
    :data:`SCAN_STEPS` (:data:`SCAN_DRAWS` trajectories per chain from the equilibrated ``u``),
    up to the first that reaches :data:`TARGET_ACCEPT` and one more."""
    rows: list[dict] = []
    for n in SCAN_STEPS:
        r, _ = fixed_run(potential, timescales, u, n, SCAN_DRAWS, seed=100 + n)
        dh = np.asarray(r.stats["delta_energy"], np.float64)
        rows.append({"n": n, "acceptance": float(np.mean(r.stats["acceptance_rate"])),
                     "dH": float(np.mean(dh)), "dH_error": float(np.std(dh) / np.sqrt(dh.size))})
        print(f"  n={n}: {json.dumps(rows[-1])}", flush=True)
        if sum(row["acceptance"] >= TARGET_ACCEPT for row in rows) >= 2:
            break
    return rows


def production(potential: Any, timescales: list | None, u: Array, n: int, samples: int, seed: int = 0) -> dict:
    """A run at ``n`` outer steps: seconds per trajectory from the sampling chunks after the
    first, ESS of the plaquette (pooled bulk, and each chain's own with their spread), forces
    per trajectory and per ESS."""
    r, records = fixed_run(potential, timescales, u, n, samples, seed)
    per_traj = sum(rec["seconds"] for rec in records[1:]) / sum(rec["trajectories"] for rec in records[1:])
    plaq = np.asarray(r.draws["plaquette"], np.float64)
    ess = float(np.min(r.summary().observables["plaquette"].ess_bulk))
    per_chain = [float(hmc.diagnostics.ess(plaq[c:c + 1])) for c in range(plaq.shape[0])]
    forces = {term: n * k for term, k in forces_per_step(timescales).items()}
    draws = plaq.size
    return {"n": n, "acceptance": float(np.mean(r.stats["acceptance_rate"])), "forces": forces, "per_traj": per_traj,
            "ess": ess, "ess_chains": per_chain, "plaquette": float(np.mean(plaq)), "draws": plaq.tolist(),
            "plaquette_error": float(np.std(plaq) / np.sqrt(ess)), "per_ess": per_traj * draws / ess,
            "forces_per_ess": {t: f * draws / ess for t, f in forces.items()}}


def equilibrated(size: int, chains: int) -> Array:
    """``(chains, 4, L, L, L, L, 3, 3)``: the quenched start brought to the dynamical theory by
    a flat run of :data:`EQUILIBRATION` trajectories (the step adapted to :data:`TARGET_ACCEPT`),
    each chain's last state; kept in :data:`CACHE`."""
    path = os.path.join(CACHE, f"dynamical_{size}_{chains}_{EQUILIBRATION}.npy")
    if os.path.exists(path):
        return jnp.asarray(np.load(path))
    u = thermal_links(size)
    potential = fermion_model(size, True)
    r = hmc.sample(potential, seed=11, num_chains=chains, num_warmup=EQUILIBRATION, num_samples=1,
                   integrator="minimum_norm", mass_matrix="identity", target_accept=TARGET_ACCEPT, trajectory_length=1.0,
                   precision="float64", init_positions={"U": jnp.broadcast_to(u, (chains, *u.shape))}, record=[],
                   progress=False)
    out = jnp.asarray(r.final_positions["U"], jnp.complex128)
    np.save(path, np.asarray(out))
    return out


def schemes_part(size: int = 4, chains: int = 4, samples: int = 1000) -> dict[str, Any]:
    """Every scheme at trajectory length 1 from the same equilibrated configurations: a scan of
    the outer step count, and a run at the cheapest count with acceptance at least
    :data:`TARGET_ACCEPT`. Each scheme's result is kept in :data:`CACHE` as it ends and not
    rerun (the Hasenbusch program compiles for minutes); delete the file to rerun all."""
    path = os.path.join(CACHE, f"schemes_{size}_{chains}_{samples}_{TARGET_ACCEPT:g}.json")
    runs = json.load(open(path)) if os.path.exists(path) else {}
    u = equilibrated(size, chains)
    for name, model, levels in schemes():
        if name in runs:
            continue
        potential = fermion_model(size, True, **model)
        potential = dataclasses.replace(potential, observables={"plaquette": potential.observables["plaquette"]},
                                        derived={})
        suggestion = None if levels is None else suggested(potential, levels, u)
        rows = scan(potential, levels, u)
        n = next((row["n"] for row in rows if row["acceptance"] >= TARGET_ACCEPT), rows[-1]["n"])
        runs[name] = {"levels": levels, "suggested": suggestion, "scan": rows,
                      **production(potential, levels, u, n, samples)}
        print(size, name, json.dumps(runs[name]), flush=True)
        with open(path, "w") as fh:
            json.dump(runs, fh, indent=1)
    return {"plaquette_start": [plaquette(x) for x in u], "chains": chains, "samples": samples,
            "scan_draws": SCAN_DRAWS, "equilibration": EQUILIBRATION, "target": TARGET_ACCEPT, "runs": runs}

# -- the tables -----------------------------------------------------------------------------------------
def even_odd_lines(result: dict[str, Any]) -> list[str]:
    """Table (a) and the hop breakdown."""
    lines = ["| lattice | plaquette | even_odd | CG iterations (per source) | ms / force | ms / force / iteration "
             "| ms / M | ms / M^dag M | force: even-odd / unpreconditioned |", "|---|---|---|---|---|---|---|---|---|"]
    hops = ["| lattice | one full hop H (ms) | one packed hop H_oe, half the sites (ms) | 2 full hops chained, per hop "
            "| 4 full hops chained, per hop |", "|---|---|---|---|---|"]
    for size, r in result.items():
        for even_odd in (False, True):
            its, ms = r["iterations"][str(even_odd)], r["ms"]
            tag = "D_hat" if even_odd else "D"
            force = ms[f"force, even_odd={even_odd}"]
            ratio = f"{r['force_ratio']:.2f}x" if even_odd else ""
            lines.append(f"| {size}^4 | {r['plaquette']:.3f} | {even_odd} | {np.mean(its):.1f} ({', '.join(map(str, its))}) "
                         f"| {force:.1f} | {force / np.mean(its):.2f} | {ms[f'M = {tag}']:.2f} "
                         f"| {ms[f'M^dag M, M = {tag}']:.2f} | {ratio} |")
        hop = [r["ms"][k] for k in ("one full hop H", "one packed hop H_oe (half the sites)",
                                    "2 full hops chained in one body (per hop)", "4 full hops chained in one body (per hop)")]
        hops.append(f"| {size}^4 | " + " | ".join(f"{v:.2f}" for v in hop) + " |")
    return lines + ["", *hops]


def schemes_lines(result: dict[str, Any]) -> list[str]:
    """Table (b): the scan, and cost per trajectory and per effective sample of the plaquette.
    Errors (+-) of the ESS from the spread of the chains' own ESS, carried to the ratios."""
    lines = ["| scheme | steps per level (outer first) | acceptance at n = 1, 2, ... | n | acceptance "
             "| light fermion forces / traj | heavy / traj | gauge / traj | ms / traj | flat / this (ms / traj) "
             "| ESS (pooled) | ESS, chains summed | s / ESS | flat / this (s / ESS) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = result["runs"]
    flat = runs.get("flat 2MN")

    def relative(r: dict) -> float:
        chains = np.asarray(r["ess_chains"])
        return float(np.std(chains, ddof=1) * np.sqrt(chains.size) / chains.sum())

    for name, r in runs.items():
        f = r["forces"]
        light = f.get("fermion", f.get("fermion_ratio", 0.0))
        steps = "n" if not r["levels"] else " / ".join(["n"] + [str(level["steps"]) for level in r["levels"][1:]])
        chains = np.asarray(r["ess_chains"])
        accs = " ".join(f"{row['acceptance']:.2f}" for row in r["scan"])
        per_traj = per_ess = ""
        if flat is not None and r is not flat:
            ratio = flat["per_ess"] / r["per_ess"]
            per_traj = f"{flat['per_traj'] / r['per_traj']:.2f}x"
            per_ess = f"{ratio:.2f}x +- {ratio * np.hypot(relative(flat), relative(r)):.2f}"
        lines.append(f"| {name} | {steps} | {accs} | {r['n']} | {r['acceptance']:.3f} | {light:.0f} "
                     f"| {f.get('fermion_heavy', 0):.0f} | {f['gauge']:.0f} | {r['per_traj'] * 1e3:.0f} | {per_traj} "
                     f"| {r['ess']:.0f} | {chains.sum():.0f} +- {chains.sum() * relative(r):.0f} "
                     f"| {r['per_ess']:.2f} +- {r['per_ess'] * relative(r):.2f} | {per_ess} |")
    for name, _, _ in schemes():
        if name not in runs:
            lines.append(f"| {name} | not measured |" + " |" * 12)
    return lines


def forces_lines(result: dict[str, Any]) -> list[str]:
    """Table (c): autodiff against the hand-written force."""
    lines = ["| lattice | CG iterations | autodiff, with solve (ms) | hand, with solve (ms) | autodiff / hand "
             "| autodiff, given X (ms) | hand, given X (ms) | autodiff / hand | one D^dag D (ms) "
             "| max abs(F_hand - F_autodiff) (opposite sign; max abs(F)) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in result.items():
        ms, c = r["ms"], r["check"]
        lines.append(f"| {size}^4 | {r['iterations']} | {ms['autodiff, with solve']:.1f} | {ms['hand, with solve']:.1f} "
                     f"| {r['with_solve_ratio']:.2f}x | {ms['autodiff, given X']:.2f} | {ms['hand, given X']:.2f} "
                     f"| {r['given_x_ratio']:.2f}x | {ms['one D^dag D application']:.2f} "
                     f"| {c['max_difference']:.1e} ({c['max_difference_opposite_sign']:.2f}; {c['max_force']:.2f}) |")
    return lines


# -- one part per process ----------------------------------------------------------------------------
def run_part(part: str, **kw: Any) -> dict[str, Any]:
    """One part in this process (``jax_enable_x64`` already on), with the versions."""
    result = {"even_odd": even_odd_part, "forces": forces_part, "schemes": schemes_part}[part](**kw)
    return {"result": result, "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}


def part_path(part: str) -> str:
    return os.path.join(CACHE, f"{part}.json")


def tables(parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run ``parts``, each in its own process (its JSON into :data:`CACHE`); return every
    part's latest result from the cache (a part not run here must have been run before)."""
    os.makedirs(CACHE, exist_ok=True)
    for part in parts:
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--part", part, "--json", part_path(part)],
                       check=True)
        print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
    missing = [p for p in PARTS if not os.path.exists(part_path(p))]
    if missing:
        raise SystemExit(f"no cached result for {missing}: run them (--part)")
    return {p: json.load(open(part_path(p))) for p in PARTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, required=True, help="one part, in this process, printed")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--samples", type=int, default=None, help="--part schemes: trajectories per chain of each run")
    parser.add_argument("--size", type=int, default=None, help="--part schemes: the lattice size L (default 4)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    given = {"samples": args.samples, "size": args.size}
    result = run_part(args.part, **{k: v for k, v in given.items() if v is not None})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
