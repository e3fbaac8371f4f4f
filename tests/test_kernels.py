"""The kernel interface: the driver runs any kernel; generalized HMC is the second one."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
from hmc import config, integrators, kernels, rng
from hmc.kernels import GHMC, Kernel, Params
from physics_models import broken, gaussian, harmonic_oscillator

Z_MAX = 4.5


def _same(a, b):
    assert a.draws.keys() == b.draws.keys() and a.stats.keys() == b.stats.keys()
    for group_a, group_b in ((a.draws, b.draws), (a.stats, b.stats)):
        for k in group_a:
            np.testing.assert_array_equal(group_a[k], group_b[k], err_msg=k)


def test_ghmc_without_persistence_is_hmc():
    """c = 0 refreshes the momentum fully: every transition is an HMC transition with
    the same keys (up to the rounding of a differently fused program)."""
    pot = gaussian(dim=3)
    chains, axes = 3, Params(None, None)
    params = Params(jnp.float32(0.7), jnp.ones(3, jnp.float32))
    steppers = []
    for spec in (kernels.HMC(num_steps=5), GHMC(num_steps=5, persistence=0.0)):
        kernel = spec.build(pot.energy, "trajectory")
        steppers.append((jax.jit(jax.vmap(kernel.step, in_axes=(0, 0, axes))), jax.vmap(kernel.init)))
    q = jax.vmap(pot.init)(jax.random.split(jax.random.key(0), chains))
    (step_a, init_a), (step_b, init_b) = steppers
    a, b = init_a(q), init_b(q)
    for t in range(40):
        keys = jax.random.split(jax.random.key(t), chains)
        (a, info_a), (b, info_b) = step_a(keys, a, params), step_b(keys, b, params)
        np.testing.assert_array_equal(info_a.is_accepted, info_b.is_accepted)
        np.testing.assert_allclose(a.position["x"], b.position["x"], atol=1e-5)
    assert 0 < int(info_a.is_accepted.sum())


def _ghmc_state(c: float, step_size: float):
    pot = gaussian(dim=4)
    kernel = GHMC(integrator="leapfrog", num_steps=1, persistence=c).build(pot.energy, "step")
    state = kernel.init({"x": jnp.array([0.3, -0.2, 0.5, 0.1])})
    p0 = {"x": jnp.array([1.0, -2.0, 0.5, 0.25])}
    return pot, kernel, state._replace(momentum=p0), p0


def _refreshed(key, c, p0, position):
    key_momentum = rng.split(key, 3)[0]
    noise = integrators.euclidean_metric(None, position).sample_momentum(key_momentum, position)
    return jax.tree_util.tree_map(lambda p, xi: c * p + jnp.sqrt(1 - c * c) * xi, p0, noise)


def test_ghmc_rejection_keeps_the_position_and_flips_the_refreshed_momentum():
    _, kernel, state, p0 = _ghmc_state(0.8, step_size=1e4)  # far past stability: rejected
    key = jax.random.key(5)
    new, info = kernel.step(key, state, Params(jnp.asarray(1e4, jnp.float32), None))
    assert not bool(info.is_accepted)
    np.testing.assert_array_equal(new.position["x"], state.position["x"])
    expected = _refreshed(key, jnp.float32(0.8), p0, state.position)
    np.testing.assert_array_equal(new.momentum["x"], -expected["x"])


def test_ghmc_acceptance_keeps_the_direction_of_motion():
    _, kernel, state, p0 = _ghmc_state(0.99, step_size=1e-3)
    key = jax.random.key(6)
    new, info = kernel.step(key, state, Params(jnp.asarray(1e-3, jnp.float32), None))
    assert bool(info.is_accepted)
    expected = _refreshed(key, jnp.float32(0.99), p0, state.position)
    # one tiny step: the momentum is the refreshed one, barely changed by the force
    np.testing.assert_allclose(new.momentum["x"], expected["x"], atol=1e-2)
    assert float(jnp.dot(new.momentum["x"], p0["x"])) > 0.9 * float(jnp.dot(p0["x"], p0["x"]))


@pytest.mark.slow
def test_ghmc_oscillator_exact_values():
    """A cheap stand-in for the validation script's ghmc row: x2, x4 and the action of
    the lattice oscillator against their exact values."""
    pot = harmonic_oscillator(n_sites=16, a=0.5)
    r = hmc.sample(pot, kernel="ghmc", seed=1, num_chains=8, num_warmup=400, num_samples=1500, jitter=0.2,
                   progress=False)
    assert r.settings["kernel"] == "ghmc" and r.settings["num_steps"] == 1
    summary = r.summary().observables
    for name in ("x2", "x4", "action"):
        z = np.abs(np.asarray(summary[name].z))
        assert np.all(z < Z_MAX), (name, summary[name].mean, summary[name].exact, summary[name].mcse)


def test_ghmc_resume_is_bit_exact():
    pot = gaussian(dim=3)
    kw = dict(kernel="ghmc", seed=7, num_chains=2, num_warmup=50, num_samples=60, chunk_size=20, progress=False)
    whole = hmc.sample(pot, **kw)
    saved = []

    def stop_after_three(end):
        saved.append(end.snapshot())
        return len(saved) == 3

    first = hmc.sample(pot, **kw, on_chunk=stop_after_three)
    assert first.stopped
    _same(whole, hmc.sample(pot, **kw, resume=saved[-1]))


def test_ghmc_guard_locates_and_names_a_broken_term():
    r = hmc.sample(broken.where_trap(), kernel="ghmc", num_steps=3, seed=1, num_chains=4, num_warmup=0,
                   num_samples=100, step_size=0.4, max_trip_fraction=1.0, progress=False, integrator="leapfrog")
    assert r.stats["guard_tripped"].sum() > 0
    located = [e for e in r.guard_events if e.phase == "sampling" and e.kind == "nonfinite_gradient"]
    assert located and all(e.term == "barrier" and e.primitive == "pow" and e.leapfrog_step is not None
                           for e in located)
    assert np.all(np.isfinite(r.draws["x"]))


def test_persistence_belongs_to_ghmc():
    with pytest.raises(ValueError, match="persistence"):
        hmc.sample(gaussian(dim=2), persistence=0.5, num_warmup=10, num_samples=10, progress=False)
    with pytest.raises(ValueError, match="persistence"):
        kernels.GHMC(persistence=1.0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        hmc.sample(gaussian(dim=2), kernel="nuts?", num_warmup=10, num_samples=10, progress=False)


def test_config_kernel_keys():
    cfg = config.RunConfig.model_validate({"model": {"name": "gaussian"}, "sampler": {"kernel": "ghmc"}})
    assert cfg.sampler.num_steps == 1 and config.sample_kwargs(cfg)["kernel"] == "ghmc"
    cfg = config.RunConfig.model_validate({"model": {"name": "gaussian"},
                                           "sampler": {"kernel": "ghmc", "num_steps": 3, "persistence": 0.5}})
    assert (cfg.sampler.num_steps, cfg.sampler.persistence) == (3, 0.5)
    with pytest.raises(Exception, match="persistence"):
        config.RunConfig.model_validate({"model": {"name": "gaussian"}, "sampler": {"persistence": 0.5}})


# -- a kernel written outside the package --------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomWalk:
    """Random-walk Metropolis with a Gaussian proposal of width ``scale * step_size``:
    the interface in full, with no gradient in the transition."""

    scale: float = 1.0
    name: str = "random_walk"

    def build(self, potential_fn, guard="trajectory"):
        def init(position):
            energy, grad = jax.value_and_grad(potential_fn)(position)
            return hmc.HMCState(position, energy, grad)

        def step(key, state, params):
            key_move, key_accept = jax.random.split(key)
            flat, unravel = jax.flatten_util.ravel_pytree(state.position)
            eps = jnp.asarray(params.step_size, flat.dtype) * self.scale
            proposal = unravel(flat + eps * jax.random.normal(key_move, flat.shape, flat.dtype))
            energy = potential_fn(proposal)
            delta = jnp.where(jnp.isfinite(energy), energy - state.potential_energy, jnp.inf)
            accept = jnp.log(jax.random.uniform(key_accept, dtype=flat.dtype)) < -delta
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b),
                                         hmc.HMCState(proposal, energy, state.potential_energy_grad), state)
            info = kernels.Info(
                acceptance_rate=jnp.minimum(1.0, jnp.exp(-delta)).astype(flat.dtype), is_accepted=accept,
                is_divergent=jnp.zeros((), bool), energy=new.potential_energy, delta_energy=delta,
                num_steps=jnp.zeros((), jnp.int32), step_size=eps, guard_tripped=jnp.zeros((), bool),
                guard_step=jnp.asarray(-1, jnp.int32), guard_position=state.position)
            return new, info

        return Kernel(init=init, step=step, replay=lambda key, state, params: step(key, state, params)[1])


def test_a_kernel_written_outside_the_package_runs_in_the_driver():
    pot = gaussian(dim=2)
    r = hmc.sample(pot, kernel=RandomWalk(scale=1.0), seed=2, num_chains=8, num_warmup=300, num_samples=1500,
                   target_accept=0.4, progress=False)
    assert r.settings["kernel"] == "random_walk"
    assert 0.25 < float(np.mean(r.stats["acceptance_rate"])) < 0.55
    for name in ("x", "x2"):
        s = r.summary().observables[name]
        assert np.all(np.abs(np.asarray(s.z)) < Z_MAX), (name, s.mean, s.exact, s.mcse)


def _beyond_a_wall():
    """Two terms: ``wall`` is +inf beyond x = 2 (a log of a distance floored at 0, its
    gradient NaN there) and ``other`` is NaN there (a sqrt of a negative number)."""
    def wall(q):
        return -jnp.sum(jnp.log(jnp.maximum(2.0 - q["x"], 0.0)))

    def other(q):
        return 0.5 * jnp.sum(q["x"] ** 2) + 0.1 * jnp.sum(jnp.sqrt(2.0 - q["x"]))

    return hmc.Potential(terms={"wall": wall, "other": other},
                         init=lambda k: {"x": 1.5 + 0.1 * jax.random.normal(k, (2,))})


@pytest.mark.parametrize("kernel", ["hmc", pytest.param("nuts", marks=pytest.mark.slow)])
def test_a_trajectory_beyond_an_infinite_wall_is_a_divergence_for_every_kernel(kernel):
    """One rule: where some term is +inf the state lies beyond an infinite wall, so the
    trajectory is a divergence, whatever NaN the other terms give there; no guard trip
    is counted and no event raised (a NaN at finite energy remains the guard's)."""
    kw = dict(num_steps=8) if kernel == "hmc" else {}
    r = hmc.sample(_beyond_a_wall(), kernel=kernel, seed=0, num_chains=4, num_warmup=0, num_samples=100,
                   step_size=0.6, max_trip_fraction=1.0, progress=False, **kw)
    assert int(r.stats["diverging"].sum()) > 0
    assert int(r.stats["guard_tripped"].sum()) == 0 and not r.guard_events
    assert np.all(np.asarray(r.draws["x"]) < 2.0)
