"""The defaults on a Bayesian target nobody here wrote: inference-gym's stochastic-volatility
model of S&P 500 returns (103 dimensions), wrapped as a user would wrap it
(scripts/bayes_defaults.py), sampled with ``hmc.sample(potential, num_chains=16)`` and
nothing else, against inference-gym's ground truth."""

import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _script():
    spec = importlib.util.spec_from_file_location("bayes_defaults", os.path.join(HERE, "..", "scripts",
                                                                                 "bayes_defaults.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_stochastic_volatility_comes_out_right_at_the_defaults():
    pytest.importorskip("inference_gym")
    script = _script()
    target = script.gym_target("sv_small")
    mean, _ = script.truth(target)
    potential = script.gym_potential(target, "sv_small")
    assert potential.kind == "bayesian"
    result, _ = script.one_run(potential, "default", 16, 0, {})
    row = script.report(result, mean, 0.0)
    assert row["max_z"] < 5 and row["max_rhat"] <= 1.01, row
    # the verdict states what is left: divergences, and nothing about mixing
    assert not any("R-hat" in w or "effective sample size" in w for w in result.warnings), result.warnings
    assert np.isfinite(row["grads_per_ess"])
