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
