"""Gradients per effective sample at the adapted step and at fixed multiples of it.

One warmup (the defaults but for the settings below), then, from its final states and
with its mass matrix, fixed-step runs at each multiple of the adapted step, all in this
one process. Gradients per effective sample = gradients spent on the draws / the
smallest bulk ESS over the observables (``magnetization`` left out: in the broken phase
it tunnels between the two vacua, and its ESS measures tunnelling, not the step).

    python scripts/step_scan.py oscillator 0.8 1.25 1.5
    python scripts/step_scan.py phi4 0.8 1.2 1.5
    python scripts/step_scan.py lengths      # trajectory_length: auto against the configs' lengths
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import hmc  # noqa: E402
import physics_models  # noqa: E402
from hmc import diagnostics, integrators  # noqa: E402

MODELS = {
    "oscillator": lambda: physics_models.harmonic_oscillator(n_sites=64, a=0.5),
    "phi4": lambda: physics_models.phi4(shape=(16, 16), m2=-1.0, lam=0.5),
}
COMMON = dict(num_chains=32, trajectory_length=1.5, jitter=0.2, record=[], progress=False, precision="float32")


def gradients_per_ess(result: hmc.SampleResult) -> float:
    grads = result.stats["n_steps"].sum() * integrators.gradient_evaluations_per_step("minimum_norm")
    ess = min(float(np.min(diagnostics.ess_bulk(v))) for k, v in result.draws.items() if k != "magnetization")
    return grads / ess


#: name -> (model, the shipped config's trajectory settings)
LENGTHS = {
    "oscillator": (MODELS["oscillator"], dict(trajectory_length=1.5, jitter=0.2)),
    "phi4": (MODELS["phi4"], dict(trajectory_length=1.5, jitter=0.2)),
    "gaussian": (lambda: physics_models.gaussian(dim=10, condition_number=10.0, correlation=0.5),
                 dict(num_steps=10, mass_matrix="dense")),
}


def lengths() -> None:
    """Gradients per effective sample with the hand-set length and with ``auto``."""
    for name, (model, settings) in LENGTHS.items():
        potential = model()
        extra = {k: v for k, v in settings.items() if k == "mass_matrix"}
        for label, kwargs in (("hand-set", settings), ("auto", dict(extra, trajectory_length="auto"))):
            common = {k: v for k, v in COMMON.items() if k not in ("trajectory_length", "jitter")}
            r = hmc.sample(potential, num_warmup=500, num_samples=1000, **common, **kwargs)
            length = float(r.warmup_stats["trajectory_length"][0, -1]) if label == "auto" else None
            print(f"{name} {label}: eps={float(np.max(r.step_size)):.4f} "
                  f"acceptance={r.stats['acceptance_rate'].mean():.3f} gradients/ESS={gradients_per_ess(r):.1f}"
                  + (f" T={length:.3f}" if length else ""), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "lengths":
        return lengths()
    potential = MODELS[argv[0]]()
    adapted = hmc.sample(potential, num_warmup=500, num_samples=1000, **COMMON)
    eps = float(adapted.step_size)
    print(f"adapted: eps={eps:.4f} acceptance={adapted.stats['acceptance_rate'].mean():.3f} "
          f"gradients/ESS={gradients_per_ess(adapted):.1f}")
    if adapted.step_note:
        print(f"  ({adapted.step_note})")
    for multiple in map(float, argv[1:]):
        fixed = hmc.sample(potential, num_warmup=0, num_samples=1000, step_size=eps * multiple,
                           inverse_mass_matrix=adapted.inverse_mass_matrix, init_positions=adapted.final_positions,
                           **COMMON)
        print(f"x{multiple}: eps={eps * multiple:.4f} acceptance={fixed.stats['acceptance_rate'].mean():.3f} "
              f"gradients/ESS={gradients_per_ess(fixed):.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
