"""Compare the compiled chunk programs of two versions of the code, as lowered text.

A refactor of the driver, kernels or guard should leave every compiled program as
it was. Dump the lowered StableHLO of a few fixed runs with each version, then
compare the warmup and sampling programs (source locations and result names
stripped):

    python scripts/compare_programs.py dump /tmp/before      # on the old commit
    python scripts/compare_programs.py dump /tmp/after       # on the new one
    python scripts/compare_programs.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys

RUNS = """
import hmc, physics_models as pm
from physics_models import broken
hmc.sample(pm.harmonic_oscillator(n_sites=16), seed=3, num_chains=4, num_warmup=100, num_samples=60,
           chunk_size=40, progress=False)
hmc.sample(pm.phi4(shape=(4, 4), m2=-1.0, lam=0.5), seed=5, num_chains=3, num_warmup=80, num_samples=40, thin=2,
           integrator="leapfrog", trajectory_length=1.2, jitter=0.3, adaptation="per_chain", mass_matrix="dense",
           chunk_size=32, progress=False)
hmc.sample(broken.where_trap(), seed=1, num_chains=4, num_warmup=60, num_samples=60, chunk_size=30,
           max_trip_fraction=1.0, progress=False)
"""
PROGRAMS = ("warmup_chunk", "sample_chunk")


def dump(folder: str) -> None:
    env = dict(os.environ, JAX_DUMP_IR_TO=folder, JAX_DUMP_IR_MODES="stablehlo")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    subprocess.run([sys.executable, "-c", RUNS], env=env, check=True)


def programs(folder: str, name: str) -> list[list[str]]:
    found = []
    for file in sorted(os.listdir(folder)):
        if f"_jit_{name}_compile" in file:
            with open(os.path.join(folder, file)) as fh:
                text = fh.read()
            text = re.sub(r'\{jax.result_info = "[^"]*"\}', "", text)
            text = re.sub(r"loc\(#loc\d*\)", "", text)
            text = re.sub(r" loc\([^)]*\)", "", text)
            found.append([line for line in text.splitlines() if not line.startswith("#loc")])
    return found


def compare(before: str, after: str) -> int:
    differ = 0
    for name in PROGRAMS:
        a, b = programs(before, name), programs(after, name)
        diffs = [len(list(difflib.unified_diff(x, y, lineterm="", n=0))) for x, y in zip(a, b)]
        print(f"{name}: {len(a)} before, {len(b)} after, differing lines per program {diffs}")
        differ += len(a) != len(b) or any(diffs)
    print("identical" if not differ else "DIFFERENT")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
