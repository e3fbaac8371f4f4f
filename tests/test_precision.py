"""run.precision: float64 is float64 everywhere, float32 stays float32 even with x64 on.

x64 is a process-wide switch, so this runs in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np, hmc, physics_models as pm
    from hmc import integrators

    out = {}
    pot = pm.get("phi4")(shape=(4, 4))
    for precision in ("float64", "float32"):  # float32 after x64 was switched on
        for mass in ("diagonal", "dense"):
            r = hmc.sample(pot, seed=0, num_chains=4, num_warmup=40, num_samples=20, chunk_size=10,
                           mass_matrix=mass, precision=precision, progress=False)
            dtypes = {f"draws.{k}": str(v.dtype) for k, v in r.draws.items()}
            dtypes.update({f"stats.{k}": str(v.dtype) for k, v in r.stats.items()
                           if k not in ("diverging", "guard_tripped", "n_steps")})
            dtypes["step_size"] = str(np.asarray(r.step_size).dtype)
            dtypes["inverse_mass_matrix"] = str(r.inverse_mass_matrix.dtype)
            dtypes["final"] = str(jax.tree_util.tree_leaves(r.final_positions)[0].dtype)
            out[f"{precision}-{mass}"] = sorted(set(dtypes.values()))
    # the momentum drawn for a float32 state under x64
    q = jnp.zeros((3,), jnp.float32)
    for minv in (None, jnp.ones(3, jnp.float32), jnp.eye(3, dtype=jnp.float32)):
        metric = integrators.euclidean_metric(minv, q)
        p = metric.sample_momentum(jax.random.key(0), q)
        out.setdefault("momentum32", []).append(str(p.dtype))
        out.setdefault("kinetic32", []).append(str(metric.kinetic_energy(p).dtype))
    out["x64"] = bool(jax.config.read("jax_enable_x64"))
    print("RESULT", json.dumps(out))
''')


@pytest.mark.slow
def test_precision_end_to_end():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert out["x64"]
    assert out["float64-diagonal"] == ["float64"] and out["float64-dense"] == ["float64"]
    assert out["float32-diagonal"] == ["float32"] and out["float32-dense"] == ["float32"]
    assert out["momentum32"] == ["float32"] * 3 and out["kinetic32"] == ["float32"] * 3
