"""Fixed-seed draws of a few runs, as digests (recorded before the driver was split, and
again when warmup got the pooled step-size controller and trajectories their exact length).

A refactor of the driver, the kernel or the guard must keep every draw, statistic
and guard event bit for bit. Bits depend on the XLA build and the CPU it targets,
so a digest is compared only on the platform it was recorded on (the key holds
the jax and jaxlib versions, the backend and the CPU model); elsewhere the test
records nothing and is skipped. ``python tests/test_digests.py --record`` adds
this platform's digests to ``tests/digests.json``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import platform
import sys

import jax
import jaxlib
import numpy as np
import pytest

import hmc
import physics_models as pm
from physics_models import broken

DIGESTS = pathlib.Path(__file__).with_name("digests.json")


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def platform_key() -> str:
    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} {jax.default_backend()} {_cpu_model()}"


CASES = {
    "oscillator_default": lambda: hmc.sample(
        pm.harmonic_oscillator(n_sites=16), seed=3, num_chains=4, num_warmup=100, num_samples=60, chunk_size=40,
        progress=False),
    "phi4_jitter_per_chain_thin_dense_leapfrog": lambda: hmc.sample(
        pm.phi4(shape=(4, 4), m2=-1.0, lam=0.5), seed=5, num_chains=3, num_warmup=80, num_samples=40, thin=2,
        integrator="leapfrog", trajectory_length=1.2, jitter=0.3, adaptation="per_chain", mass_matrix="dense",
        chunk_size=32, progress=False),
    "where_trap_trips_step_guard": lambda: hmc.sample(
        broken.where_trap(), seed=1, num_chains=4, num_warmup=60, num_samples=60, chunk_size=30,
        guard_check="step", max_trip_fraction=1.0, progress=False),
    "where_trap_trips_trajectory_guard_yoshida": lambda: hmc.sample(
        broken.where_trap(), seed=2, num_chains=4, num_warmup=0, num_samples=80, step_size=0.3, num_steps=7,
        integrator="yoshida4", mass_matrix="identity", max_trip_fraction=1.0, progress=False),
}


#: the warmup record's entries when the digests were recorded: one added since (``length_jitter``)
#: is a record of the adaptation's state, whose effect the draws and these entries carry
WARMUP_KEYS = ("acceptance_rate", "adapted_step", "diverging", "guard_tripped", "n_steps", "step_limit", "step_size",
               "trajectory_length")


def digest(result: hmc.SampleResult) -> str:
    h = hashlib.sha256()
    warmup = {k: v for k, v in result.warmup_stats.items() if k in WARMUP_KEYS}
    for group in (result.draws, result.stats, warmup):
        for name in sorted(group):
            array = np.ascontiguousarray(group[name])
            h.update(f"{name}{array.dtype}{array.shape}".encode())
            h.update(array.tobytes())
    h.update(np.ascontiguousarray(result.step_size).tobytes())
    if result.inverse_mass_matrix is not None:
        h.update(np.ascontiguousarray(result.inverse_mass_matrix).tobytes())
    for event in result.guard_events:
        d = event.to_dict()
        h.update(json.dumps([d.get(k) for k in ("kind", "phase", "term", "leaf", "primitive", "chain", "draw",
                                                 "leapfrog_step", "action")]).encode())
    return h.hexdigest()


def _recorded() -> dict:
    return json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}


# one case in the default tier, all four in the slow tier (each compiles its own sampler)
DEFAULT_TIER = {"oscillator_default"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=[] if name in DEFAULT_TIER else [pytest.mark.slow])
                                  for name in sorted(CASES)])
def test_draws_match_the_recorded_digest(name):
    recorded = _recorded().get(platform_key())
    if recorded is None or name not in recorded:
        pytest.skip(f"no digest recorded on this platform ({platform_key()})")
    assert digest(CASES[name]()) == recorded[name]


if __name__ == "__main__":
    if "--record" in sys.argv:
        table = _recorded()
        table[platform_key()] = {name: digest(run()) for name, run in sorted(CASES.items())}
        DIGESTS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(json.dumps(table[platform_key()], indent=1))
