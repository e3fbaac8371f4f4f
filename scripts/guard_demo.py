"""What the guard tells you: run every deliberately broken model and print its findings.

    python scripts/guard_demo.py            # all of them
    python scripts/guard_demo.py where_trap # one

Structural faults are refused before the first step (preflight). Faults reached
only mid-run are sampled with the default policy: the trajectories that reach
them are rejected and attributed, and the run halts once more than 1 % of the
sampling trajectories tripped. The models are in ``physics_models/broken.py``.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

import hmc  # noqa: E402
from physics_models import broken  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(broken.STRUCTURAL + broken.MID_RUN)
    logging.basicConfig(level=logging.ERROR)
    for name in names:
        factory = getattr(broken, name)
        print(f"== {name}: {factory.__doc__.strip().splitlines()[0] if factory.__doc__ else ''}")
        potential = factory()
        if name in broken.STRUCTURAL:
            report = hmc.guard.preflight(potential, potential.init(jax.random.key(0)))
            print(report)
        else:
            result = hmc.sample(potential, seed=0, num_chains=4, num_warmup=200, num_samples=400,
                                chunk_size=50, progress=False)
            tripped = int(result.stats["guard_tripped"].sum() + result.warmup_stats["guard_tripped"].sum())
            print(f"{tripped} trajectories tripped the guard; halted: {result.halted_reason_text()}")
            seen = set()
            for event in result.guard_events:
                key = (event.kind, event.term, event.primitive)
                if key not in seen:
                    seen.add(key)
                    print(event)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
