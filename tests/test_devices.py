"""Chains sharded over several devices give the same draws as one device.

JAX fixes the device count when its backend starts, so each check runs in a fresh
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (4 CPU devices).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import jax, numpy as np, hmc, physics_models as pm
    import physics_models.broken

    out = {"devices": len(jax.devices())}
    pot = pm.get("phi4")(shape=(6, 6))
    base = dict(seed=1, num_chains=8, num_warmup=60, num_samples=30, chunk_size=20, progress=False)
    cases = {
        "pooled_diagonal": {},
        "per_chain_dense": dict(adaptation="per_chain", mass_matrix="dense"),
        "step_guard_jitter": dict(guard_check="step", trajectory_length=1.0, jitter=0.3),
        "ghmc": dict(kernel="ghmc", num_steps=2, persistence=0.8),
        # NUTS: each chain's tree loop runs until the deepest chain's tree is built, per device
        "nuts": dict(kernel="nuts"),
    }
    for name, extra in cases.items():
        one = hmc.sample(pot, **base, **extra)
        four = hmc.sample(pot, **base, **extra, devices=4)
        out[name] = max(float(np.max(np.abs(one.draws[k] - four.draws[k]))) for k in one.draws)
        out[name + "_stats"] = all(np.array_equal(one.stats[k], four.stats[k]) for k in one.stats)
        out[name + "_devices"] = four.settings["devices"]
    # trajectory_length: auto, on a flat state and through an embedding (U(1) angles)
    auto_cases = {
        "auto_length": (pot, {}),
        "auto_length_embedding": (pm.get("u1_gauge")(L=4, beta=1.0), dict(integrator="leapfrog")),
        # a flat spectrum (an elementwise Gaussian): the smallest frequency over chains on every device
        "auto_length_flat": (hmc.Potential.from_logdensity(
            lambda q: -0.5 * jax.numpy.sum((q / np.linspace(0.5, 2.0, 6).astype(np.float32)) ** 2),
            lambda k: jax.random.normal(k, (6,))), {}),
        # replica exchange: ladder rounds pool the swap rates over chains across devices
        "tempering": (pm.get("classical_double_well")(height=8.0), dict(trajectory_length=1.0, tempering={
            "replicas": 4, "beta_min": 0.05})),
    }
    for name, (model, extra) in auto_cases.items():
        kw = dict(base, num_warmup=120, **({"trajectory_length": "auto"} if "tempering" not in extra else {}), **extra)
        one, four = hmc.sample(model, **kw), hmc.sample(model, **kw, devices=4)
        out[name] = max(float(np.max(np.abs(one.draws[k] - four.draws[k]))) for k in one.draws)
        # NaN marks a swap pair not tried in that transition: equal where both are NaN
        same = lambda a, b: np.array_equal(a, b, equal_nan=np.issubdtype(np.asarray(a).dtype, np.floating))  # noqa: E731
        out[name + "_stats"] = all(same(one.stats[k], four.stats[k]) for k in one.stats) and all(
            same(one.warmup_stats[k], four.warmup_stats[k]) for k in one.warmup_stats)
        out[name + "_devices"] = four.settings["devices"]
        if "length_jitter" in one.warmup_stats:
            out[name + "_jitter"] = float(one.warmup_stats["length_jitter"][0, -1])
    # a model whose gradient breaks mid-run: trips located and replayed on sharded chains
    broken = pm.broken.log_zero()
    kw = dict(seed=2, num_chains=8, num_warmup=0, step_size=0.3, num_samples=200, chunk_size=50, progress=False)
    one, four = hmc.sample(broken, **kw), hmc.sample(broken, **kw, devices=4)
    out["broken_trips"] = int(one.stats["guard_tripped"].sum())
    out["broken_same"] = bool(np.array_equal(one.stats["guard_tripped"], four.stats["guard_tripped"]))
    out["broken_events"] = [(e.term, e.primitive) for e in four.guard_events] == [
        (e.term, e.primitive) for e in one.guard_events]
    auto = hmc.sample(pot, **dict(base, num_chains=6), devices="auto")
    out["auto_devices_for_6_chains"] = auto.settings["devices"]
    try:
        hmc.sample(pot, **dict(base, num_chains=6), devices=4)
    except ValueError as err:
        out["indivisible"] = str(err)
    print("RESULT", json.dumps(out))
''')


SMALL = textwrap.dedent('''
    import json
    import jax, numpy as np, hmc, physics_models as pm

    pot = pm.phi4(shape=(4, 4))
    kw = dict(seed=3, num_chains=4, num_warmup=0, step_size=0.2, num_samples=20, chunk_size=10, num_steps=4,
              progress=False, integrator="leapfrog")
    one, two = hmc.sample(pot, **kw), hmc.sample(pot, **kw, devices=2)
    same = all(np.array_equal(one.draws[k], two.draws[k]) for k in one.draws)
    same &= all(np.array_equal(one.stats[k], two.stats[k]) for k in one.stats)

    # the ChEES signal of trajectory_length: auto, on chains on one device and sharded over
    # two: its chain means of products must not round differently (fused multiply-adds)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from hmc import adaptation
    from hmc.devices import ordered_mean, ordered_sum

    signal = jax.jit(lambda *a: adaptation.chees_signal(*a, np.float32(0.4), ordered_mean,
                                                          lambda x: ordered_sum(x, 1)))
    sharded = NamedSharding(Mesh(np.array(jax.devices()), ("chains",)), PartitionSpec("chains"))
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(20):
        args = [rng.normal(size=(8, 36)).astype(np.float32) for _ in range(3)]
        args.append(rng.uniform(size=8).astype(np.float32))
        differ += int(signal(*args) != signal(*(jax.device_put(x, sharded) for x in args)))
    print("RESULT", json.dumps({"devices": len(jax.devices()), "same": bool(same), "used": two.settings["devices"],
                                "signal_differs": differ}))
''')


def test_two_devices_give_the_draws_of_one():
    """The default tier's device case: a small run sharded over two forced CPU devices
    equals the one-device run bit for bit (the slow tier runs the full matrix, warmup's
    pooled adaptation across devices included).
    An elementwise model: a dense quadratic form (gaussian) rounds its dot product
    differently at another per-device batch size, by an ulp, which warmup amplifies."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SMALL], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert out == {"devices": 2, "same": True, "used": 2, "signal_differs": 0}


def _run_four_devices(_folder):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="session")
def four_devices(tmp_path_factory):
    from conftest import once_per_session

    return once_per_session(tmp_path_factory, "four_devices", _run_four_devices)


@pytest.mark.slow
def test_four_cpu_devices_exist(four_devices):
    assert four_devices["devices"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("case", ["pooled_diagonal", "per_chain_dense", "step_guard_jitter", "ghmc", "nuts",
                                  "auto_length", "auto_length_embedding", "auto_length_flat", "tempering"])
def test_sharded_draws_are_bit_identical(four_devices, case):
    # the pooled mean over chains is summed in chain order, so even adaptation agrees to the bit
    assert four_devices[case] == 0.0
    assert four_devices[case + "_stats"]
    assert four_devices[case + "_devices"] == 4


@pytest.mark.slow
def test_the_flat_case_is_flat_and_the_others_are_not(four_devices):
    assert four_devices["auto_length_flat_jitter"] < 1.0
    assert four_devices["auto_length_jitter"] == 1.0 and four_devices["auto_length_embedding_jitter"] == 1.0


@pytest.mark.slow
def test_guard_trips_located_on_sharded_chains(four_devices):
    assert four_devices["broken_trips"] > 0
    assert four_devices["broken_same"] and four_devices["broken_events"]


@pytest.mark.slow
def test_device_count_must_divide_chains(four_devices):
    assert four_devices["auto_devices_for_6_chains"] == 3  # the largest count that divides 6
    assert "num_chains=6 is not a multiple of devices=4" in four_devices["indivisible"]


@pytest.mark.slow
def test_cli_run_on_four_devices_and_refusal_to_resume_on_another_layout(tmp_path):
    """A run checkpointed on one device (run.devices: auto) is not resumed on four."""
    import signal
    import time

    cfg = tmp_path / "phi4.yaml"
    cfg.write_text("model: {name: phi4, params: {shape: [4, 4]}}\n"
                   "sampler: {num_chains: 8, num_warmup: 20, num_samples: 400, num_steps: 5}\n"
                   "run: {chunk_size: 5, devices: auto}\noutput: {dir: out}\n")
    command = [sys.executable, "-m", "hmc.cli", "run", str(cfg), "--no-progress"]
    one = dict(os.environ, JAX_PLATFORMS="cpu")
    one.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(command, cwd=tmp_path, env=one, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "out" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count('"chunk"') >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    four = dict(one, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    again = subprocess.run(command, cwd=tmp_path, env=four, capture_output=True, text=True, timeout=300)
    assert again.returncode == 4, again.stderr[-2000:]
    assert "device layout num_devices: checkpoint 1, this run 4" in again.stderr
    fresh = subprocess.run(command + ["--out", "out4", "sampler.num_samples=20"], cwd=tmp_path, env=four,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    import xarray as xr

    with xr.open_datatree(tmp_path / "out4" / "draws.nc", engine="h5netcdf") as tree:
        assert '"num_devices": 4' in tree.attrs["devices"]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_draws_of_one_process_with_two_devices(tmp_path):
    """jax.distributed with two local CPU processes (coordinator on 127.0.0.1): process 0
    writes the run directory, and the draws equal a one-process run on two devices."""
    from hmc import rundir

    cfg = tmp_path / "phi4.yaml"
    cfg.write_text("model: {name: phi4, params: {shape: [4, 4]}}\n"
                   "sampler: {num_chains: 4, num_warmup: 30, num_samples: 40, num_steps: 5}\n"
                   "run: {chunk_size: 10}\noutput: {dir: out}\n")
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    base.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(base, HMC_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", HMC_NUM_PROCESSES="2", HMC_PROCESS_ID=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-m", "hmc.cli", "run", str(cfg), "--out", "dist",
                                       "run.distributed=true", "--no-progress"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "status:" not in outputs[1][0]  # process 1 stays quiet (gloo prints a line of its own)
    assert "status: complete" in outputs[0][0]
    single = subprocess.run([sys.executable, "-m", "hmc.cli", "run", str(cfg), "--out", "single", "--no-progress"],
                            cwd=tmp_path, env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a = rundir.read_draws(str(tmp_path / "dist" / "draws.nc"))
    b = rundir.read_draws(str(tmp_path / "single" / "draws.nc"))
    for group in ("draws", "stats", "warmup_stats"):
        for name in b[group]:
            assert (a[group][name] == b[group][name]).all(), f"{group}/{name}"
    layout = json.loads(a["attrs"]["devices"])
    assert layout["process_count"] == 2 and layout["num_devices"] == 2
