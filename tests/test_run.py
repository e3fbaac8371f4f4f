"""The research workflow end to end: ``hmc run`` and its run directory, resume after
SIGTERM and SIGKILL, refusal to resume a different run, sweeps, exit codes, plots."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

import hmc
from hmc import cli, config, rundir, runner

PHI4 = """
model: {name: phi4, params: {shape: [4, 4]}}
sampler: {num_chains: 3, num_warmup: 40, num_samples: %(samples)d, num_steps: 5}
run: {seed: 11, chunk_size: %(chunk)d}
output: {dir: %(out)s}
"""


def write_config(tmp_path, samples=60, chunk=20, out="runs/phi4", name="phi4.yaml", text=None):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text or PHI4 % dict(samples=samples, chunk=chunk, out=out)))
    return str(path)


def hmc_cli(*args, cwd, env=None, timeout=240, wait=True):
    """The installed console entry point, in a fresh process."""
    command = [sys.executable, "-c", "import sys; from hmc.cli import main; sys.exit(main())", *args]
    env = dict(os.environ, **(env or {}))
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def nc(path):
    return rundir.read_draws(os.path.join(path, "draws.nc"))


def assert_same_draws(a, b):
    for group in ("draws", "stats", "warmup_stats"):
        assert set(a[group]) == set(b[group]), group
        for name in a[group]:
            np.testing.assert_array_equal(a[group][name], b[group][name], err_msg=f"{group}/{name}")


# -- one run, its files --------------------------------------------------------------------


def _finish_a_run(folder):
    cfg_path = write_config(folder, out=str(folder / "out"))
    assert cli.main(["run", cfg_path, "--no-progress"]) == 0
    return [str(folder), cfg_path, str(folder / "out")]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """``hmc run`` in-process (main(argv)) once per test session, shared by the file
    checks below (and by the pytest-xdist workers). Tests that run the CLI on it again
    work on a copy (:func:`own_copy`)."""
    from conftest import once_per_session

    folder, cfg_path, out = once_per_session(tmp_path_factory, "finished_run", _finish_a_run)
    return pathlib.Path(folder), cfg_path, out


def own_copy(finished_run, tmp_path):
    """The finished run directory copied into this test's folder: ``(config, out)``."""
    import shutil

    _, cfg_path, out = finished_run
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    return cfg_path, copy


def test_run_directory_has_every_file(finished_run):
    _, _, out = finished_run
    for name in ("config.yaml", "draws.nc", "guard.jsonl", "log.jsonl", "summary.json", "checkpoint/state.npz"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    # the resolved config is a complete, valid config of its own
    resolved = config.load(os.path.join(out, "config.yaml"))
    assert resolved.sampler.num_samples == 60 and resolved.sampler.integrator == "minimum_norm"
    log = rundir.read_jsonl(os.path.join(out, "log.jsonl"))
    chunks = [r for r in log if r["event"] == "chunk"]
    assert [r["phase"] for r in chunks] == ["warmup"] * 2 + ["sampling"] * 3
    assert chunks[-1]["draws_done"] == 60 and chunks[-1]["iterations_done"] == 100
    for r in chunks:
        assert 0.0 <= r["acceptance_rate"] <= 1.0 and r["trajectories_per_second"] > 0 and r["step_size"] > 0
        assert r["divergences"] >= 0 and r["guard_trips"] == 0
    assert log[0]["event"] == "start" and log[-1]["event"] == "end"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["status"] == "complete"
    assert set(summary["observables"]) >= {"action", "magnetization", "susceptibility"}
    assert summary["sampler"]["num_draws"] == 60


def test_draws_nc_is_arviz_layout_and_matches_library(finished_run):
    tmp, cfg_path, out = finished_run
    with xr.open_datatree(os.path.join(out, "draws.nc"), engine="h5netcdf") as tree:
        assert {"posterior", "sample_stats", "warmup_sample_stats"} <= set(tree.children)
        post = tree["posterior"].to_dataset()
        stats = tree["sample_stats"].to_dataset()
        assert set(hmc.sampler.STAT_NAMES) <= set(stats.data_vars)
        for ds in (post, stats):
            for dim in ds.dims:  # coordinates on every dimension
                assert dim in ds.coords, dim
        assert post["phi"].dims == ("chain", "draw", "phi_dim_0", "phi_dim_1")
        assert post["action"].shape == (3, 60)
        assert stats["diverging"].dtype == bool and stats["n_steps"].dtype.kind == "i"
        attrs = tree.attrs
        for key in ("guarded_hmc_version", "jax_version", "numpyro_version", "config_hash", "devices", "precision",
                    "seed", "config_yaml", "created_at"):
            assert key in attrs, key
        assert attrs["seed"] == 11 and attrs["precision"] == "float32"
        assert tree["posterior"].attrs["inference_library"] == "guarded-hmc"
    # the same draws as the library call with the same settings
    cfg = config.load(cfg_path)
    direct = hmc.sample(config.make_potential(cfg.model), **config.sample_kwargs(cfg), progress=False)
    saved = nc(out)
    for name, x in direct.draws.items():
        np.testing.assert_array_equal(saved["draws"][name], x, err_msg=name)
    for name, x in direct.stats.items():
        np.testing.assert_array_equal(saved["stats"][name], x, err_msg=name)


def test_arviz_opens_draws_untouched(finished_run):
    az = pytest.importorskip("arviz")
    _, _, out = finished_run
    data = az.from_netcdf(os.path.join(out, "draws.nc"))
    table = az.summary(data, var_names=["action"])
    assert len(table) == 1


def test_plots_are_valid_pngs(finished_run):
    import matplotlib.image

    _, _, out = finished_run
    folder = os.path.join(out, "plots")
    names = set(os.listdir(folder))
    assert {"energy.png", "warmup.png", "guard.png", "autocorrelation.png", "trace_action.png"} <= names
    for name in names:
        with open(os.path.join(folder, name), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", name
        image = matplotlib.image.imread(os.path.join(folder, name))
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, name
        assert np.std(image) > 0.01, name  # not blank
    os.unlink(os.path.join(folder, "energy.png"))
    assert cli.main(["plot", out]) == 0
    assert os.path.isfile(os.path.join(folder, "energy.png"))


def test_rerun_of_finished_run_reports_it(finished_run, capsys, tmp_path):
    cfg_path, out = own_copy(finished_run, tmp_path)
    before = os.stat(os.path.join(out, "draws.nc")).st_mtime_ns
    assert cli.main(["run", cfg_path, "--out", out, "--no-progress"]) == 0
    assert "complete" in capsys.readouterr().out
    assert os.stat(os.path.join(out, "draws.nc")).st_mtime_ns == before
    assert cli.main(["summary", out]) == 0
    text = capsys.readouterr().out
    assert "status: complete" in text and "susceptibility" in text and "3 chains x 60 draws" in text


def test_resume_refused_on_a_different_config(finished_run, capsys, tmp_path):
    cfg_path, out = own_copy(finished_run, tmp_path)
    assert cli.main(["run", cfg_path, "sampler.num_steps=7", "--out", out, "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert "sampler.num_steps" in err and "checkpoint has 5" in err and "this run 7" in err
    assert cli.main(["run", cfg_path, "run.precision=float64", "--out", out, "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert "run.precision" in err and "jax_enable_x64" in err
    import jax

    jax.config.update("jax_enable_x64", False)


def test_resume_refused_on_another_package_version(tmp_path, capsys, monkeypatch):
    cfg_path = write_config(tmp_path, out=str(tmp_path / "out"), samples=20)
    monkeypatch.setattr(hmc, "__version__", "0.0.1-old")
    cfg = config.build(config.load(cfg_path).model_dump(), [("sampler.num_samples", 40)])
    # a stopped run: checkpoint written, not complete
    stops = iter([False, True])
    monkeypatch.setattr(hmc.runner, "stop_on_signals", _fake_signals(stops))
    assert runner.execute(cfg, str(tmp_path), progress=False) == runner.EXIT_STOPPED
    monkeypatch.setattr(hmc, "__version__", "0.1.0")
    assert cli.main(["run", cfg_path, "sampler.num_samples=40", "--no-progress"]) == 4
    assert "guarded_hmc version: checkpoint written by 0.0.1-old" in capsys.readouterr().err


def _fake_signals(stops):
    """A stop_on_signals whose flag turns on after the given chunk pattern."""
    import contextlib

    @contextlib.contextmanager
    def fake():
        class Flag(dict):
            def __getitem__(self, key):
                if key == "signal" and next(stops, True):
                    return "SIGTERM"
                return None

        yield Flag()

    return fake


# -- signals and kill -9 ------------------------------------------------------------------


def _wait_for_chunks(path, count, proc, timeout=120):
    log = os.path.join(path, "log.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hmc run ended early: {proc.communicate()}")
        try:
            if sum(r["event"] == "chunk" for r in rundir.read_jsonl(log)) >= count:
                return
        except (ValueError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError("no progress")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (subprocess) of the long config used by the interruption tests."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg_path = write_config(tmp, samples=300, chunk=4)
    done = hmc_cli("run", cfg_path, "--out", "ref", "--no-progress", cwd=tmp)
    assert done.returncode == 0, done.stderr
    return tmp, cfg_path, nc(str(tmp / "ref"))


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_at_chunk_boundary_then_resumes_bit_exact(reference, signame):
    tmp, cfg_path, ref = reference
    out = str(tmp / f"sig-{signame}")
    proc = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp, wait=False)
    _wait_for_chunks(out, 15, proc)
    proc.send_signal(getattr(signal, signame))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "run the same command again to resume" in stdout
    assert not os.path.exists(os.path.join(out, "draws.nc"))
    log = rundir.read_jsonl(os.path.join(out, "log.jsonl"))
    assert log[-1] == dict(log[-1], event="stopped", signal=signame)
    summary = hmc_cli("summary", out, cwd=tmp)
    assert summary.returncode == 0 and "in progress" in summary.stdout, summary.stderr
    again = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp)
    assert again.returncode == 0, again.stderr
    assert_same_draws(nc(out), ref)
    events = [r["event"] for r in rundir.read_jsonl(os.path.join(out, "log.jsonl"))]
    assert events[0] == "start" and "stopped" in events and "resume" in events and events[-1] == "end"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_exact(reference):
    tmp, cfg_path, ref = reference
    out = str(tmp / "killed")
    rng = random.Random()
    # kill k lands in the k-th quarter of the run (at a random chunk of it, then a random
    # moment within or after that chunk), so every kill interrupts the run before it ends
    total = sum(r["event"] == "chunk" for r in rundir.read_jsonl(str(tmp / "ref" / "log.jsonl")))
    for attempt in range(3):
        proc = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp, wait=False)
        _wait_for_chunks(out, rng.randint(attempt * total // 4 + 1, (attempt + 1) * total // 4), proc)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        # whatever the moment, every finished file parses
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if name.endswith(".jsonl"):
                rundir.read_jsonl(path)
            elif name == "config.yaml":
                config.load(path)
        if os.path.exists(os.path.join(out, "checkpoint", "state.npz")):
            rundir.RunDirectory(out).load_checkpoint()
    final = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp)
    assert final.returncode == 0, final.stderr
    assert_same_draws(nc(out), ref)
    # log.jsonl was only ever appended to: every line whole, one start, a resume per restart
    with open(os.path.join(out, "log.jsonl")) as fh:
        events = [json.loads(line)["event"] for line in fh.read().splitlines()]
    assert events[0] == "start" and events.count("start") == 1 and "resume" in events and events[-1] == "end"
    for folder in (out, os.path.join(out, "checkpoint")):
        assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]


def test_log_is_appended_and_a_line_cut_by_a_kill_is_dropped(tmp_path):
    path = str(tmp_path / "log.jsonl")
    rundir.append_jsonl(path, [{"event": "start"}])
    rundir.append_jsonl(path, [{"event": "chunk", "iterations_done": 5}])
    with open(path, "a") as fh:
        fh.write('{"event": "chu')  # killed half-way through a write
    assert [r["event"] for r in rundir.read_jsonl(path)] == ["start", "chunk"]
    rundir.repair_jsonl(path)
    rundir.append_jsonl(path, [{"event": "resume"}])
    with open(path) as fh:
        text = fh.read()
    assert text.endswith("\n")
    assert [json.loads(line)["event"] for line in text.splitlines()] == ["start", "chunk", "resume"]


@pytest.mark.slow
def test_second_process_on_a_busy_run_directory_is_refused(reference):
    tmp, cfg_path, _ = reference
    out = str(tmp / "busy")
    proc = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp, wait=False)
    try:
        _wait_for_chunks(out, 1, proc)
        second = hmc_cli("run", cfg_path, "--out", out, "--no-progress", cwd=tmp)
        assert second.returncode == 2 and "another hmc run" in second.stderr
    finally:
        proc.kill()
        proc.communicate()


# -- exit codes and errors -------------------------------------------------------------------


def test_config_errors_exit_2_naming_the_key(tmp_path, capsys):
    bad = write_config(tmp_path, text="model: {name: phi4}\nsampler: {num_chians: 4, step_size: -1}\n")
    assert cli.main(["run", bad]) == 2
    err = capsys.readouterr().err
    assert "sampler.num_chians" in err and "sampler.step_size" in err and "Traceback" not in err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert cli.main(["check", bad]) == 2
    good = write_config(tmp_path, name="good.yaml")
    assert cli.main(["run", good, "sampler.num_samples=zero"]) == 2
    assert "sampler.num_samples" in capsys.readouterr().err
    assert cli.main(["run", good, "model.params.nope=1"]) == 2
    assert "model.params" in capsys.readouterr().err
    assert cli.main(["summary", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_broken_model_check_and_run_exit_3(tmp_path, capsys):
    text = """
    model: {factory: "physics_models.broken:detached_term"}
    sampler: {num_chains: 2, num_warmup: 10, num_samples: 10}
    output: {dir: %s}
    """ % (tmp_path / "out")
    path = write_config(tmp_path, text=text, name="broken.yaml")
    assert cli.main(["check", path]) == 3
    out = capsys.readouterr().out
    assert "REFUSED" in out and "cut" in out and "guard.allow" in out
    assert cli.main(["run", path, "--no-progress"]) == 3
    events = rundir.read_jsonl(str(tmp_path / "out" / "guard.jsonl"))
    assert events and events[0]["kind"] == "disconnected" and events[0]["term"]
    good = write_config(tmp_path, name="good.yaml")
    assert cli.main(["check", good]) == 0
    assert "preflight: ok" in capsys.readouterr().out


def test_halting_guard_keeps_the_draws_and_exits_3(tmp_path, capsys):
    text = """
    model: {factory: "physics_models.broken:log_zero"}
    sampler: {num_chains: 4, num_warmup: 0, step_size: 0.3, num_samples: 400}
    guard: {policy: halt}
    run: {chunk_size: 50}
    output: {dir: %s}
    """ % (tmp_path / "out")
    path = write_config(tmp_path, text=text, name="halt.yaml")
    assert cli.main(["run", path, "--no-progress"]) == 3
    assert "halted" in capsys.readouterr().out
    saved = nc(str(tmp_path / "out"))
    assert 0 < saved["stats"]["guard_tripped"].shape[1] < 400 and saved["stats"]["guard_tripped"].any()
    events = rundir.read_jsonl(str(tmp_path / "out" / "guard.jsonl"))
    assert any(e["kind"] == "nonfinite_gradient" and e["primitive"] == "log" for e in events)
    assert os.path.isfile(tmp_path / "out" / "plots" / "guard.png")
    # the halted run stays halted when the command is repeated
    assert cli.main(["run", path, "--no-progress"]) == 3


# -- sweeps ----------------------------------------------------------------------------------


SWEEP = """
model: {name: gaussian, params: {dim: 2}}
sampler: {num_chains: 2, num_warmup: 20, num_samples: 20}
run: {seed: 5}
output: {dir: %s}
sweep: {sampler.integrator: [leapfrog, minimum_norm], sampler.target_accept: [0.7, 0.9]}
"""


def test_sweep_listing_index_and_slurm_variable(tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path, text=SWEEP % (tmp_path / "sw"), name="sweep.yaml")
    assert cli.main(["run", path, "--list-sweep"]) == 0
    listing = capsys.readouterr().out
    assert "   3  sampler.integrator='minimum_norm' sampler.target_accept=0.9  seed=8" in listing
    assert "--array=0-3" in listing
    assert cli.main(["run", path, "--no-progress"]) == 2
    assert "--index" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert cli.main(["run", path, "--no-progress"]) == 0
    resolved = config.load(str(tmp_path / "sw" / "sweep-0002" / "config.yaml"))
    assert resolved.sampler.integrator == "minimum_norm" and resolved.sampler.target_accept == 0.7
    assert resolved.run.seed == 7 and resolved.sweep == {}
    assert cli.main(["run", path, "--index", "9"]) == 2
    assert "0..3" in capsys.readouterr().err


def test_sweep_file_and_bad_sweep_keys(tmp_path, capsys):
    path = write_config(tmp_path, samples=10, out=str(tmp_path / "o"))
    grid = tmp_path / "grid.yaml"
    grid.write_text("sampler.num_steps: [3, 4, 5]\n")
    assert cli.main(["run", path, "--sweep", str(grid), "--list-sweep"]) == 0
    assert "3 points" in capsys.readouterr().out
    grid.write_text("sampler.num_stepz: [3]\nsampler.jitter: [2.0]\n")
    assert cli.main(["run", path, "--sweep", str(grid), "--list-sweep"]) == 2
    err = capsys.readouterr().err
    assert "sampler.num_stepz" in err and "sampler.jitter" in err and "sweep point 0" in err


def test_factory_file_relative_to_config_and_resolved_absolute(tmp_path, monkeypatch, capsys):
    models = tmp_path / "cfg" / "my_model.py"
    models.parent.mkdir()
    models.write_text(textwrap.dedent("""
        import jax.numpy as jnp
        from hmc import Potential

        def make(dim=2):
            return Potential(terms={"quad": lambda q: 0.5 * jnp.sum(q ** 2)},
                             init=lambda key: jnp.zeros(dim), observables={"x0": lambda q: q[0]},
                             exact={"x0": 0.0}, name="mine")
    """))
    text = """
    model: {factory: "my_model.py:make", params: {dim: 3}}
    sampler: {num_chains: 2, num_warmup: 20, num_samples: 20}
    output: {dir: %s}
    """ % (tmp_path / "out")
    path = write_config(tmp_path / "cfg", text=text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the factory file is found next to the config, not in the working folder
    assert cli.main(["run", path, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "x0" in printed and "exact" in printed
    resolved = config.load(str(tmp_path / "out" / "config.yaml"))
    assert resolved.model.factory == f"{models}:make"
    assert nc(str(tmp_path / "out"))["exact"] == {"x0": 0.0}


# -- the SLURM template ------------------------------------------------------------------------


@pytest.mark.slow
def test_array_template_forwards_usr1_and_requeues(reference, tmp_path):
    """scripts/slurm/array.sbatch under bash with SLURM's variables and a stand-in scontrol:
    USR1 to the batch shell reaches hmc, which checkpoints and exits 75; the script requeues."""
    tmp, cfg_path, _ = reference
    sweep_cfg = tmp_path / "sweep.yaml"
    sweep_cfg.write_text(open(cfg_path).read() + "sweep: {sampler.num_steps: [4, 5]}\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    (fake / "scontrol").chmod(0o755)
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "slurm", "array.sbatch")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="1",
               SLURM_JOB_ID="78", HMC=f"{sys.executable} -m hmc.cli", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(["bash", script, str(sweep_cfg), f"output.dir={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    point = str(tmp_path / "out" / "sweep-0001")
    _wait_for_chunks(point, 3, proc)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "77_1"]
    assert rundir.RunDirectory(point).has_checkpoint()
    assert config.load(os.path.join(point, "config.yaml")).sampler.num_steps == 5
    assert os.listdir(tmp_path / "cache"), "the template's compilation cache was not used"


SHIPPED = sorted(pathlib.Path(__file__).parent.parent.glob("configs/*.yaml"))
# their models' preflight is also in test_models (float32); the configs' own in the slow tier
# preflight of a lattice gauge model traces its action op by op: the slow tier
HEAVY_CONFIGS = {"schwinger.yaml", "schwinger_fine.yaml", "su2_2d.yaml", "su3_4d.yaml", "qcd_4d.yaml"}


def test_shipped_configs_are_valid_and_cover_every_model():
    import physics_models

    models = {config.load(str(path)).model.name for path in SHIPPED}
    assert set(physics_models.REGISTRY) <= models


@pytest.mark.parametrize("path", [
    pytest.param(path, marks=[pytest.mark.slow] if path.name in HEAVY_CONFIGS else [], id=path.stem)
    for path in SHIPPED if not config.load(str(path)).sweep])
def test_shipped_config_passes_preflight(path, capsys):
    assert runner.check(config.load(str(path)), str(path.parent)) == 0, path
    assert "preflight: ok" in capsys.readouterr().out


@pytest.mark.slow
def test_flat_spectrum_length_is_in_the_summary_and_the_run_directory(tmp_path, capsys):
    # a well-preconditioned Gaussian: warmup takes the quarter period with a narrow jitter, and
    # the summary, summary.json and the run directory's warmup record say so
    out = str(tmp_path / "out")
    text = f"""
        model: {{name: gaussian, params: {{dim: 3, condition_number: 4.0, correlation: 0.3}}}}
        sampler: {{mass_matrix: dense, trajectory_length: auto, num_chains: 4, num_warmup: 200, num_samples: 50}}
        output: {{dir: {out}}}
        """
    assert cli.main(["run", write_config(tmp_path, name="flat.yaml", text=text), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["summary", out]) == 0 and "trajectory length: T = " in capsys.readouterr().out
    with open(os.path.join(out, "summary.json")) as f:
        assert "a flat spectrum" in json.load(f)["sampler"]["trajectory_length_note"]
    warmup = nc(out)["warmup_stats"]
    assert float(np.asarray(warmup["length_jitter"])[0, -1]) < 1.0


def test_strict_exits_6_on_a_verdict_that_is_not_clean_and_summary_shows_the_verdict(tmp_path, capsys):
    out = str(tmp_path / "out")
    text = f"""
        model: {{name: gaussian, params: {{dim: 2}}}}
        sampler: {{num_chains: 2, num_warmup: 20, num_samples: 20, num_steps: 3}}
        output: {{dir: {out}}}
        """
    path = write_config(tmp_path, name="few.yaml", text=text)
    assert cli.main(["run", path, "--no-progress", "--strict"]) == runner.EXIT_NOT_CLEAN == 6
    printed = capsys.readouterr().out
    assert "verdict: NOT CLEAN" in printed and "effective sample size too small" in printed
    with open(os.path.join(out, "summary.json")) as f:
        warnings = json.load(f)["sampler"]["warnings"]
    assert warnings and any(w.startswith("effective sample size too small") for w in warnings)
    with open(os.path.join(out, "log.jsonl")) as f:
        assert [json.loads(line) for line in f][-1]["warnings"] == warnings
    assert cli.main(["summary", out]) == 0 and "verdict: NOT CLEAN" in capsys.readouterr().out
    # --strict is the config key run.strict (a run without it exits 0: every other run test)
    assert config.load(path).run.strict is False
    assert config.build(config.load(path).model_dump(), [("run.strict", True)]).run.strict is True
