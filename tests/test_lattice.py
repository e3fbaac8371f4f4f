"""One lattice over several devices: the split, the halo exchange the compiler makes of a
shift, and draws that agree with one device's.

Multi-device checks run in a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(JAX fixes the device count when its backend starts), as in ``tests/test_devices.py``.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmc
import physics_models as pm
from hmc import lattice


def _run_forced(script: str, devices: int = 4, timeout: int = 900) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])


# -- one device ------------------------------------------------------------------------
@pytest.mark.parametrize("axis, steps", [(0, 1), (1, 1), (1, -1), (0, 2), (1, 5)])
def test_shift_is_roll_with_the_same_gradient(axis, steps):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    assert np.array_equal(lattice.shift(x, axis, steps), jnp.roll(x, -steps, axis))
    weights = jnp.arange(20.0).reshape(5, 4)
    grad = jax.grad(lambda y: jnp.sum(weights * lattice.shift(y, axis, steps) ** 2))(x)
    expected = jax.grad(lambda y: jnp.sum(weights * jnp.roll(y, -steps, axis) ** 2))(x)
    assert np.array_equal(grad, expected)
    # forward mode works too (split and concatenate are ordinary linear primitives)
    _, tangent = jax.jvp(lambda y: lattice.shift(y, axis, steps), (x,), (jnp.ones_like(x),))
    assert np.array_equal(tangent, jnp.ones_like(x))


def test_split_axis_is_the_first_declared_and_errors_name_leaf_axis_and_sizes():
    shapes = {"U": (4, 8, 6, 6, 12, 3, 3), "phi": (8, 6)}
    assert lattice.split_axes({"U": (1, 2, 3, 4), "phi": (0, 1)}, shapes, 4) == {"U": 1, "phi": 0}
    assert lattice.split_axes({"U": (4, 1, 2, 3)}, shapes, 4) == {"U": 4}  # the time axis listed first
    with pytest.raises(ValueError, match=r"leaf 'U': lattice axis 2 has size 6, not a multiple of the 4 devices"):
        lattice.split_axes({"U": (2, 1)}, shapes, 4)
    with pytest.raises(ValueError, match="names leaf 'V'"):
        lattice.split_axes({"V": (0,)}, shapes, 2)
    with pytest.raises(ValueError, match=r"has shape \(8, 6\)"):
        lattice.split_axes({"phi": (2,)}, shapes, 2)
    with pytest.raises(ValueError, match="declares none"):
        lattice.split_axes({}, shapes, 2)


def test_partition_spec_counts_the_split_axis_from_the_leaf_end():
    """A state with more batch axes than the chain's (tempering's replicas, ``(chain,
    replica, *leaf)``) is split on the leaf's lattice axis, not on the replica axis."""
    from jax.sharding import PartitionSpec as P

    path = (jax.tree_util.GetAttrKey("replicas"), jax.tree_util.DictKey("phi"))
    assert lattice.partition_spec(path, 3, {"phi": 0}) == P("chain", "lattice", None)
    assert lattice.partition_spec(path, 3, {"phi": 0}, {"phi": 2}) == P("chain", "lattice", None)
    assert lattice.partition_spec(path, 4, {"phi": 0}, {"phi": 2}) == P("chain", None, "lattice", None)
    assert lattice.partition_spec(path, 1, {"phi": 0}, {"phi": 2}) == P("chain")  # a per-chain scalar
    assert lattice.partition_spec((jax.tree_util.DictKey("x"),), 3, {"phi": 0}, {"phi": 2}) == P("chain")


def test_constrain_is_the_identity_without_a_lattice_mesh():
    x = jnp.arange(8.0).reshape(2, 4)
    assert lattice.constrain(x, 1) is x


def test_potential_validates_lattice_axes_and_models_declare_them():
    assert pm.phi4(shape=(4, 6)).lattice_axes == {"phi": (0, 1)}
    assert pm.u1_gauge(L=4).lattice_axes == {"theta": (1, 2)}
    assert pm.yang_mills(group="SU(2)", shape=(4, 4, 4)).lattice_axes == {"U": (1, 2, 3)}
    pot = pm.phi4(shape=(4, 4))
    for bad in ({"phi": (0, 0)}, {"phi": (-1,)}, {"phi": ()}):
        with pytest.raises(ValueError, match="distinct non-negative axes"):
            hmc.Potential(terms=pot.terms, init=pot.init, lattice_axes=bad)


def test_mesh_is_checked_before_sampling():
    from hmc import config
    from hmc.devices import check_mesh, resolve_layout

    assert check_mesh({"lattice": 2}) == {"chain": 1, "lattice": 2}
    with pytest.raises(ValueError, match="unknown"):
        check_mesh({"chains": 2})
    with pytest.raises(ValueError, match="spans 2 device"):
        resolve_layout({"chain": 1, "lattice": 2}, 4, 4)
    assert len(resolve_layout({"chain": 1}, None, 4).devices) == 1  # the chain path, one device
    with pytest.raises(config.ConfigError, match=r"run.mesh \{'chain': 1, 'lattice': 4\} spans 4 device"):
        config.build({"model": {"name": "phi4"}, "run": {"mesh": {"chain": 1, "lattice": 4}, "devices": 2}})
    with pytest.raises(config.ConfigError, match="run.mesh.lattice"):
        config.build({"model": {"name": "phi4"}, "run": {"mesh": {"lattice": 0}}})
    cfg = config.build({"model": {"name": "phi4"}, "run": {"mesh": {"chain": 1, "lattice": 2}}})
    assert config.sample_kwargs(cfg)["mesh"] == {"chain": 1, "lattice": 2}
    assert "mesh" not in config.sample_kwargs(config.build({"model": {"name": "phi4"}}))


HLO = """
  %collective-permute.1 = f32[2,1,16]{2,1,0} collective-permute(%x), channel_id=2, source_target_pairs={{0,1}}
  %all-reduce.4 = (f32[2]{0}, f32[2]{0}) all-reduce(%a, %b), channel_id=5, to_apply=%add
  %all-gather-start = (f32[2,4,16]{2,1,0}, f32[2,16,16]{2,1,0}) all-gather-start(%y), dimensions={1}
  %all-gather-done = f32[2,16,16]{2,1,0} all-gather-done(%all-gather-start)
  ROOT %tuple = (f32[2]{0}) tuple(%z)
"""


def test_collectives_are_read_from_hlo_text():
    found = lattice.collectives(HLO)
    assert [c.op for c in found] == ["collective-permute", "all-reduce", "all-gather"]
    assert [c.bytes for c in found[:2]] == [128, 16]
    assert lattice.traffic(HLO)["all-reduce"] == {"count": 1, "bytes": 16}
    assert [c.op for c in lattice.gathers_of_fields(HLO, 2 * 16 * 16)] == ["all-gather"]


FORCE = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np, physics_models as pm
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from hmc import lattice

    mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("chain", "lattice"))
    out = {}
    for name, roll in (("shift", lambda x, mu: lattice.shift(x, mu, 1)), ("roll", lambda x, mu: jnp.roll(x, -1, mu))):
        energy = lambda phi: sum(jnp.sum((roll(phi, mu) - phi) ** 2) for mu in range(2)) + jnp.sum(phi ** 4)
        force = jax.jit(jax.vmap(jax.value_and_grad(energy)))
        x = jax.device_put(np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32),
                           NamedSharding(mesh, P("chain", "lattice")))
        text = force.lower(x).compile().as_text()
        one = jax.vmap(jax.value_and_grad(energy))(np.asarray(x))
        out[name] = {"traffic": lattice.traffic(text), "gathers": len(lattice.gathers_of_fields(text, 2 * 16 * 16)),
                     "largest": {c.op: max(d.largest for d in lattice.collectives(text) if d.op == c.op)
                                 for c in lattice.collectives(text)},
                     "force_same": bool(np.array_equal(one[1], force(x)[1]))}
    print("RESULT", json.dumps(out))
''')


@pytest.mark.slow
def test_a_shift_of_the_split_axis_is_a_halo_exchange():
    """The phi^4 force on a 16 x 16 lattice split over 4 forced host devices: the shift is
    a collective-permute of one layer per direction (2 chains x 16 sites), the action an
    all-reduce of one scalar per chain, nothing gathers the field, and the force equals the
    one-device force bit for bit. ``jnp.roll``'s transpose adds an all-reduce of a layer."""
    out = _run_forced(FORCE)
    shift, roll = out["shift"], out["roll"]
    assert shift["gathers"] == 0 and roll["gathers"] == 0
    assert set(shift["traffic"]) == {"collective-permute", "all-reduce"}
    assert shift["traffic"]["collective-permute"]["count"] == 2  # forward and back, one layer each
    assert shift["largest"] == {"collective-permute": 2 * 16, "all-reduce": 2}
    assert roll["largest"]["all-reduce"] == 2 * 16  # the boundary layer reduced over all devices
    assert shift["force_same"] and roll["force_same"]


# -- the sampler on a lattice mesh (slow: whole runs in a 4-device process) -----------------
SAMPLER = textwrap.dedent('''
    import dataclasses, json
    import jax, numpy as np, hmc, physics_models as pm
    from hmc import lattice

    out = {}
    kw = dict(seed=3, num_chains=4, num_warmup=0, step_size=0.1, num_samples=20, chunk_size=10, num_steps=4,
              progress=False, integrator="leapfrog")

    def compare(name, pot, mesh, **extra):
        extra = {**kw, **extra}
        texts = []
        one = hmc.sample(pot, **extra)
        split = hmc.sample(pot, **extra, mesh=mesh, on_chunk=lambda end: texts.append(end.compiled_text()))
        programs = list(dict.fromkeys(texts))  # warmup and sampling programs, each once
        leaf = next(iter(pot.lattice_axes))
        field = int(np.prod(one.final_positions[leaf].shape[1:]))
        out[name] = {
            "positions_differ": max(float(np.max(np.abs(a - b))) for a, b in zip(
                jax.tree_util.tree_leaves(one.final_positions), jax.tree_util.tree_leaves(split.final_positions))),
            "draws_differ": max(float(np.max(np.abs(one.draws[k] - split.draws[k]))) for k in one.draws),
            "accepted_same": bool(np.array_equal(one.stats["acceptance_rate"] > 0.5,
                                                 split.stats["acceptance_rate"] > 0.5)),
            "lp_differ": float(np.max(np.abs(one.stats["lp"] - split.stats["lp"]))),
            # a gather of the field of the device's chains: that many elements in one collective
            "gathers": [c.line[:160] for text in programs for c in lattice.gathers_of_fields(
                text, field * 4 // mesh["chain"], conditional=False)],
            # all-gathers and all-to-alls at every iteration (not in a guard-trip branch)
            "largest_gather": max([c.largest for text in programs for c in lattice.collectives(text)
                                   if c.op in ("all-gather", "all-to-all") and not c.conditional], default=0),
            "traffic": lattice.traffic(texts[-1]),
            "largest_all_reduce": max(c.largest for text in programs for c in lattice.collectives(text)
                                      if c.op == "all-reduce"),
            "mesh": split.settings.get("mesh"),
        }

    compare("phi4", pm.phi4(shape=(8, 8)), {"chain": 2, "lattice": 2})
    compare("phi4_one_chain_group", pm.phi4(shape=(8, 8)), {"chain": 1, "lattice": 4}, mass_matrix="identity")
    compare("u1", pm.u1_gauge(L=8), {"chain": 2, "lattice": 2})
    compare("yang_mills", pm.yang_mills(group="SU(2)", shape=(4, 4)), {"chain": 2, "lattice": 2})
    # fermions: a CG solve per force, even-odd packing, noise and point sources (constants)
    compare("schwinger", pm.schwinger(L=8, beta=2.0, mass=0.3), {"chain": 2, "lattice": 2})
    compare("qcd", pm.qcd(group="SU(2)", shape=(2, 2, 2, 4), beta=2.0, mass=0.5, cg_tol=1e-8),
            {"chain": 2, "lattice": 2}, step_size=0.05)
    # warmup (the step size and a diagonal mass matrix adapted, pooled over the chains); its
    # draws agree with one device's in distribution only (rounding feeds the adaptation)
    compare("phi4_warmup", pm.phi4(shape=(8, 8)), {"chain": 2, "lattice": 2}, num_warmup=20, step_size=None,
            num_steps=None)
    # replica exchange: the replicas' states carry a replica axis before the lattice
    compare("tempering", pm.phi4(shape=(8, 6)), {"chain": 2, "lattice": 2},
            tempering={"replicas": 4, "beta_min": 0.3, "adapt": False})
    try:
        hmc.sample(pm.phi4(shape=(6, 6)), **kw, mesh={"chain": 1, "lattice": 4})
    except ValueError as err:
        out["indivisible"] = str(err)
    print("RESULT", json.dumps(out))
''')


# the largest all-reduce a case may have, in elements on a device: its chains' numbers (2 chains
# per device with chain 2 of 4 chains) times replicas (tempering: 4; the replica axis split
# by mistake reduced fields of 48 elements), noise vectors (schwinger's condensate: 4, its CG
# dot products vmapped) or source columns and timeslices (qcd's pion: 8 x T = 4)
ALL_REDUCE_BOUND = {"phi4": 2, "phi4_warmup": 2, "phi4_one_chain_group": 4, "u1": 2, "yang_mills": 2, "schwinger": 2 * 4,
                    "qcd": 2 * 8 * 4, "tempering": 2 * 4}


@pytest.fixture(scope="session")
def lattice_runs(tmp_path_factory):
    from conftest import once_per_session

    return once_per_session(tmp_path_factory, "lattice_runs", lambda _folder: _run_forced(SAMPLER))


CASES = ["phi4", "phi4_one_chain_group", "u1", "yang_mills", "schwinger", "qcd", "tempering"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_lattice_mesh_agrees_with_one_device_to_rounding(lattice_runs, case):
    """Random streams are the same bit for bit, and so are the forces of elementwise fields
    (phi^4, U(1) angles): every position of a fixed-step run is. Sums over sites add in
    another order, so energies and observables agree to rounding, and so do the SU(N)
    links, whose batched matrix products round differently at another batch size, and
    the fields driven by fermions, whose CG dot products add in another order (and the
    tempered replicas, whose forces are scaled by their temperatures)."""
    run = lattice_runs[case]
    assert run["accepted_same"]
    if case in ("yang_mills", "schwinger", "qcd", "tempering"):
        assert 0 <= run["positions_differ"] < 1e-5
    else:
        assert run["positions_differ"] == 0.0
    assert run["draws_differ"] < 1e-4 and run["lp_differ"] < 1e-3
    assert run["mesh"]["lattice"] in (2, 4)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES + ["phi4_warmup"])
def test_sampling_program_never_gathers_a_field(lattice_runs, case):
    """At every iteration no collective moves a field (fermions: the CG's dot products, the
    noise and point sources): permutes of boundary layers, all-reduces of per-chain
    (per-replica, per-timeslice) numbers, and all-gathers of at most one number per chain
    (the in-loop guard's flags; the tripped chain's position is gathered in the branch
    taken on a trip only)."""
    run = lattice_runs[case]
    assert run["gathers"] == [], run["gathers"]
    assert run["largest_gather"] <= 4, run["traffic"]
    assert run["traffic"]["collective-permute"]["count"] > 0
    assert run["largest_all_reduce"] <= ALL_REDUCE_BOUND[case], run["largest_all_reduce"]


@pytest.mark.slow
def test_indivisible_lattice_names_leaf_axis_and_sizes(lattice_runs):
    assert "leaf 'phi': lattice axis 0 has size 6, not a multiple of the 4 devices" in lattice_runs["indivisible"]


@pytest.mark.slow
def test_cli_runs_a_lattice_mesh_and_refuses_an_indivisible_one(tmp_path):
    cfg = tmp_path / "phi4.yaml"
    cfg.write_text("model: {name: phi4, params: {shape: [4, 4]}}\n"
                   "sampler: {num_chains: 2, num_warmup: 20, num_samples: 20, num_steps: 4}\n"
                   "run: {chunk_size: 10, mesh: {chain: 1, lattice: 2}}\noutput: {dir: out}\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    command = [sys.executable, "-m", "hmc.cli", "run", str(cfg), "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import xarray as xr

    with xr.open_datatree(tmp_path / "out" / "draws.nc", engine="h5netcdf") as tree:
        assert '"mesh": {"chain": 1, "lattice": 2}' in tree.attrs["devices"]
    bad = subprocess.run(command + ["--out", "bad", "model.params.shape=[5, 4]"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "run.mesh: leaf 'phi': lattice axis 0 has size 5, not a multiple of the 2 devices" in bad.stderr + bad.stdout


# -- the SLURM template -------------------------------------------------------------------------
SRUN = """#!/bin/bash
# stand-in srun: SLURM_NTASKS local processes of the command, joined by jax.distributed
pids=()
for rank in $(seq 0 $((SLURM_NTASKS - 1))); do
    HMC_COORDINATOR_ADDRESS=127.0.0.1:{port} HMC_NUM_PROCESSES=$SLURM_NTASKS HMC_PROCESS_ID=$rank \\
        "$@" > rank$rank.out 2> rank$rank.err &
    pids+=($!)
done
rc=0
for pid in "${{pids[@]}}"; do wait $pid || rc=$?; done
cat rank0.out
exit $rc
"""


@pytest.mark.slow
def test_lattice_template_splits_one_lattice_over_two_processes(tmp_path):
    """scripts/slurm/lattice_multi_node.sbatch under bash with a stand-in srun (two local CPU
    processes, one device each, jax.distributed on 127.0.0.1): one lattice over both, and the
    draws agree with one process on one device to rounding."""
    import socket

    from hmc import rundir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(SRUN.format(port=port))
    (fake / "srun").chmod(0o755)
    cfg = tmp_path / "phi4.yaml"
    cfg.write_text("model: {name: phi4, params: {shape: [4, 4]}}\n"
                   "sampler: {num_chains: 2, num_warmup: 0, step_size: 0.1, num_steps: 4, num_samples: 20}\n"
                   "run: {chunk_size: 10}\noutput: {dir: out}\n")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "slurm", "lattice_multi_node.sbatch")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_NTASKS="2", SLURM_STEP_NODELIST="localhost",
               SLURM_JOB_ID="9", HMC=f"{sys.executable} -m hmc.cli", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(["bash", script, str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    errors = "".join((tmp_path / f"rank{r}.err").read_text()[-2000:] for r in range(2) if
                     (tmp_path / f"rank{r}.err").exists())
    assert done.returncode == 0, done.stderr[-2000:] + errors
    assert "mesh: chain=1 lattice=2 over 2 tasks" in done.stdout
    one = subprocess.run([sys.executable, "-m", "hmc.cli", "run", str(cfg), "--out", "one", "--no-progress"],
                         cwd=tmp_path, env={k: v for k, v in env.items() if not k.startswith("SLURM_")},
                         capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    split = rundir.read_draws(str(tmp_path / "out" / "draws.nc"))
    single = rundir.read_draws(str(tmp_path / "one" / "draws.nc"))
    assert '"mesh": {"chain": 1, "lattice": 2}' in split["attrs"]["devices"]
    for name in single["draws"]:
        assert np.allclose(split["draws"][name], single["draws"][name], atol=1e-4), name
