"""Storage faults: damaged checkpoint files are named, a damaged newest generation falls back
to the previous one with the draws of an uninterrupted run, and a finished run survives a
damaged checkpoint."""

import contextlib
import json
import os

import numpy as np
import pytest

import hmc.runner
from hmc import cli, config, rundir, runner

CONFIG = """\
model: {name: gaussian, params: {dim: 2}}
sampler: {num_chains: 2, num_warmup: 20, num_samples: 40, num_steps: 3, step_size: 0.5}
run: {chunk_size: 10, seed: 3}
output: {dir: %(out)s}
"""


def _write(tmp_path, out):
    path = tmp_path / f"{os.path.basename(out)}.yaml"
    path.write_text(CONFIG % {"out": out})
    return str(path)


def _stop_after(chunks):
    """A stop_on_signals whose flag turns on after ``chunks`` chunks."""
    count = iter(range(10**6))

    @contextlib.contextmanager
    def fake():
        class Flag(dict):
            def __getitem__(self, key):
                if key == "signal":
                    return "SIGTERM" if next(count) >= chunks - 1 else None
                return None

        yield Flag()

    return fake


def _stopped_run(tmp_path, monkeypatch, name, chunks=4):
    out = str(tmp_path / name)
    path = _write(tmp_path, out)
    monkeypatch.setattr(hmc.runner, "stop_on_signals", _stop_after(chunks))
    assert runner.execute(config.load(path), str(tmp_path), progress=False) == runner.EXIT_STOPPED
    monkeypatch.undo()
    return out, path


def _draws(out):
    data = rundir.read_draws(os.path.join(out, "draws.nc"))
    return {**data["draws"], **{"stat:" + k: v for k, v in data["stats"].items()}}


def _damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip" and data:
        data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    path = _write(tmp, str(tmp / "whole"))
    assert runner.execute(config.load(path), str(tmp), progress=False) == runner.EXIT_OK
    return _draws(str(tmp / "whole"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_newest_state_falls_back_to_the_previous_generation(tmp_path, monkeypatch, uninterrupted, how):
    out, path = _stopped_run(tmp_path, monkeypatch, "stopped")
    folder = os.path.join(out, "checkpoint")
    assert os.path.exists(os.path.join(folder, rundir.PREVIOUS_STATE_FILE))
    _damage(os.path.join(folder, rundir.STATE_FILE), how)
    assert runner.execute(config.load(path), str(tmp_path), progress=False) == runner.EXIT_OK
    again = _draws(out)
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    resume = [r for r in rundir.read_jsonl(os.path.join(out, "log.jsonl")) if r["event"] == "resume"][-1]
    assert resume["checkpoint"] == rundir.PREVIOUS_STATE_FILE
    assert len(resume["damaged"]) == 1 and rundir.STATE_FILE in resume["damaged"][0]


def test_every_generation_damaged_is_named_with_exit_4_and_no_traceback(tmp_path, monkeypatch, capsys):
    out, path = _stopped_run(tmp_path, monkeypatch, "broken", chunks=3)
    folder = os.path.join(out, "checkpoint")
    _damage(os.path.join(folder, rundir.STATE_FILE), "truncate")
    _damage(os.path.join(folder, rundir.PREVIOUS_STATE_FILE), "flip")
    assert cli.main(["run", path, "--no-progress"]) == runner.EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert rundir.STATE_FILE in err and rundir.PREVIOUS_STATE_FILE in err and "Traceback" not in err
    assert "truncated" in err


@pytest.mark.slow
def test_a_damaged_chunk_file_is_named(tmp_path, monkeypatch, capsys):
    out, path = _stopped_run(tmp_path, monkeypatch, "chunk", chunks=4)
    _damage(os.path.join(out, "checkpoint", "warmup-00000.npz"), "truncate")
    assert cli.main(["run", path, "--no-progress"]) == runner.EXIT_CHECKPOINT
    assert "warmup-00000.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_run_with_a_damaged_state_still_reports_its_draws(tmp_path, capsys):
    out = str(tmp_path / "done")
    path = _write(tmp_path, out)
    assert runner.execute(config.load(path), str(tmp_path), progress=False) == runner.EXIT_OK
    _damage(os.path.join(out, "checkpoint", rundir.STATE_FILE), "truncate")
    capsys.readouterr()
    assert cli.main(["run", path, "--no-progress"]) == runner.EXIT_OK
    text = capsys.readouterr().out
    assert "checkpoint is damaged" in text and "draws.nc holds every draw" in text and "verdict" in text
    import shutil

    shutil.rmtree(os.path.join(out, "checkpoint"))  # a finished run is self-contained
    assert cli.main(["summary", out]) == 0 and "verdict" in capsys.readouterr().out
    assert cli.main(["plot", out]) == 0
    capsys.readouterr()
    _damage(os.path.join(out, "draws.nc"), "flip")  # a data byte: HDF5 alone reads it back
    assert cli.main(["summary", out]) == runner.EXIT_CHECKPOINT
    assert "checksum mismatch" in capsys.readouterr().err
    _damage(os.path.join(out, "draws.nc"), "truncate")
    assert cli.main(["summary", out]) == runner.EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert "draws.nc" in err and "damaged" in err and "Traceback" not in err


def test_a_checksum_mismatch_is_named(tmp_path):
    path = str(tmp_path / "x.npz")
    rundir._savez(path, {"a": np.arange(4.0)}, {"k": 1})
    with np.load(path) as z:
        payload = {k: z[k] for k in z.files}
    payload["a0"] = payload["a0"] + 1.0  # rewritten with a valid zip, but not what was written
    np.savez(path, **payload)
    with pytest.raises(rundir.DamagedFile, match="checksum mismatch"):
        rundir._loadz(path)
    assert json.loads(json.dumps(str(rundir.DamagedFile(path, "x"))))


def _at_write(k, before=None, after=None, fail=None):
    """A _replace_atomically that, at its ``k``-th call, runs ``before()``, fails the write
    with ``fail`` (an OSError) or runs ``after()`` once it is done; returns it and its count."""
    original = rundir._replace_atomically
    calls = [0]

    def hooked(path, tmp, fill):
        calls[0] += 1
        hit = calls[0] == k
        if hit and before:
            before()
        if hit and fail is not None:
            def fill(_tmp):
                raise fail
        result = original(path, tmp, fill)
        if hit and after:
            after()
        return result

    return hooked, calls


def _disk_full_at(k):
    """A _replace_atomically whose ``k``-th call fails as a full disk does."""
    import errno

    return _at_write(k, fail=OSError(errno.ENOSPC, "No space left on device"))


def _disk_full_case(tmp_path, monkeypatch, uninterrupted, capsys, k):
    out = str(tmp_path / f"full{k}")
    path = _write(tmp_path, out)
    flaky, calls = _disk_full_at(k)
    monkeypatch.setattr(rundir, "_replace_atomically", flaky)
    code = cli.main(["run", path, "--no-progress"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    if calls[0] < k:  # fewer writes than k: the run finished untouched
        assert code == 0
        return False
    assert code == 74 and "no space left" in err and "Traceback" not in err, (k, code, err)
    assert cli.main(["run", path, "--no-progress"]) == 0  # space freed: resume
    again = _draws(out)
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(value, again[key], err_msg=f"{key} after a full disk at write {k}")
    return True


def test_a_full_disk_stops_the_run_with_exit_74_naming_the_file_and_it_resumes(tmp_path, monkeypatch, capsys):
    """The default tier's case (the slow tier checks every write index against the draws of
    an uninterrupted run)."""
    out = str(tmp_path / "full")
    path = _write(tmp_path, out)
    flaky, _ = _disk_full_at(4)
    monkeypatch.setattr(rundir, "_replace_atomically", flaky)
    assert cli.main(["run", path, "--no-progress"]) == 74
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert os.path.join(out, "") in err and "no space left" in err and "Traceback" not in err
    assert cli.main(["run", path, "--no-progress"]) == 0


@pytest.mark.slow
def test_a_full_disk_at_every_write_index(tmp_path, monkeypatch, uninterrupted, capsys):
    hit = [k for k in range(1, 40) if _disk_full_case(tmp_path, monkeypatch, uninterrupted, capsys, k)]
    assert len(hit) >= 10, hit  # every write of the run was a failure point once


@pytest.mark.slow
def test_hmc_check_estimates_the_space_a_run_needs(tmp_path, capsys):
    out = str(tmp_path / "sized")
    path = _write(tmp_path, out)
    assert cli.main(["check", path]) == 0
    text = capsys.readouterr().out
    assert "disk space: about" in text
    cfg = config.load(path)
    potential = config.make_potential(cfg.model)
    from hmc.sampler import initial_positions

    estimate = runner.space_estimate(potential, cfg, initial_positions(potential, 3, cfg.sampler.num_chains))
    assert runner.execute(cfg, str(tmp_path), progress=False) == 0
    actual = os.path.getsize(os.path.join(out, "draws.nc"))
    assert estimate["draws_nc"] >= 0.5 * actual - 20_000 and estimate["total"] < 50 * actual  # an upper bound, sized


def test_an_output_that_cannot_be_a_directory_fails_before_sampling(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = _write(tmp_path, str(blocker / "run"))
    assert cli.main(["run", path, "--no-progress"]) == 74
    err = capsys.readouterr().err
    assert str(blocker) in err and "cannot be written" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_directory_removed_mid_run_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import shutil

    out = str(tmp_path / "vanishing")
    path = _write(tmp_path, out)
    vanish, _ = _at_write(6, before=lambda: shutil.rmtree(out))
    monkeypatch.setattr(rundir, "_replace_atomically", vanish)
    assert cli.main(["run", path, "--no-progress"]) == 74
    err = capsys.readouterr().err
    assert out in err and "Traceback" not in err


def _truncate_at(path, offset):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:offset])


@pytest.mark.slow
def test_fault_campaign_on_every_file_of_a_stopped_run(tmp_path, monkeypatch, uninterrupted, capsys):
    """Every file a stopped run has written, truncated at three offsets or with a byte flipped,
    then the same command: a finished run with the uninterrupted draws, or exit 4 naming the
    damaged file; never a traceback."""
    import shutil

    base, path = _stopped_run(tmp_path, monkeypatch, "campaign", chunks=4)
    files = sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs
                   if not f.startswith("."))
    outcomes = {}
    for name in files:
        size = os.path.getsize(os.path.join(base, name))
        for fault in ("0", "10", "half", "flip"):
            shutil.rmtree(base + "-case", ignore_errors=True)
            shutil.copytree(base, base + "-case")
            target = os.path.join(base + "-case", name)
            if fault == "flip":
                _damage(target, "flip")
            else:
                _truncate_at(target, {"0": 0, "10": min(10, size), "half": size // 2}[fault])
            case = str(tmp_path / "case.yaml")
            with open(case, "w") as fh:
                fh.write(CONFIG % {"out": base + "-case"})
            code = cli.main(["run", case, "--no-progress"])
            err = capsys.readouterr().err
            assert "Traceback" not in err, (name, fault, err)
            if code == 0:
                again = _draws(base + "-case")
                for key, value in uninterrupted.items():
                    np.testing.assert_array_equal(value, again[key], err_msg=f"{name} {fault} {key}")
            else:
                assert code == runner.EXIT_CHECKPOINT and os.path.basename(name) in err, (name, fault, code, err)
            outcomes[(name, fault)] = code
    assert any(code == 0 for code in outcomes.values()) and len(outcomes) == 4 * len(files)


@pytest.mark.slow
def test_a_chunk_damaged_while_the_run_holds_it_is_rewritten(tmp_path, monkeypatch, uninterrupted):
    out = str(tmp_path / "bitrot")
    path = _write(tmp_path, out)
    chunk = os.path.join(out, "checkpoint", "warmup-00000.npz")
    rot, _ = _at_write(3, after=lambda: _damage(chunk, "flip"))  # a bad block after the write of chunk 0
    monkeypatch.setattr(rundir, "_replace_atomically", rot)
    monkeypatch.setattr(hmc.runner, "stop_on_signals", _stop_after(5))
    assert runner.execute(config.load(path), str(tmp_path), progress=False) == runner.EXIT_STOPPED
    monkeypatch.undo()
    rundir._loadz(os.path.join(out, "checkpoint", "warmup-00000.npz"))  # verifies again
    assert runner.execute(config.load(path), str(tmp_path), progress=False) == runner.EXIT_OK
    again = _draws(out)
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
