import pytest

from hmc import cli


def test_models_lists_registry_with_parameters(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "u1_gauge:" in out and "beta = 2.0" in out and "phi4:" in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["rn"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_overrides_after_options_and_stray_arguments(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: gaussian, params: {dim: 2}}\n")
    # overrides after --out are still overrides (the error names the key they set)
    assert cli.main(["check", str(cfg), "sampler.num_chains=0"]) == 2
    assert "sampler.num_chains" in capsys.readouterr().err
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "o"), "sampler.num_chains=0"]) == 2
    assert "sampler.num_chains" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli.main(["run", str(cfg), "--outt", "x"])
    assert err.value.code == 2 and "--outt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["summary", str(tmp_path), "a=1"])
