import textwrap

import pytest

import jax.numpy as jnp

import hmc
from hmc import config


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_minimal_config_defaults(tmp_path):
    cfg = config.load(write(tmp_path, "model: {name: gaussian, params: {dim: 3}}\n"))
    assert cfg.sampler.kernel is None and cfg.sampler.integrator is None and cfg.guard.policy == "reject"
    kwargs = config.sample_kwargs(cfg)
    assert kwargs["num_chains"] == 4 and kwargs["precision"] == "float32"
    pot = config.make_potential(cfg.model)
    assert isinstance(pot, hmc.Potential) and pot.name == "gaussian"
    # a physics model runs hmc with 2MN, and the resolved config says so (and hashes as before)
    filled = config.with_kernel(cfg, pot).sampler
    assert (filled.kernel, filled.integrator, filled.max_num_steps) == ("hmc", "minimum_norm", 1000)


def test_a_null_kernel_is_nuts_for_a_bayesian_model_unless_a_trajectory_is_given(tmp_path):
    bayes = hmc.Potential.from_logdensity(lambda q: -0.5 * (q ** 2).sum(), lambda key: jnp.zeros(2))
    cfg = config.load(write(tmp_path, "model: {name: gaussian, params: {dim: 3}}\n"))
    filled = config.with_kernel(cfg, bayes).sampler
    assert (filled.kernel, filled.integrator, filled.num_steps) == ("nuts", "leapfrog", None)
    assert config.sample_kwargs(cfg.model_copy(update={"sampler": filled}))["max_num_steps"] is None
    fixed = config.load(write(tmp_path, "model: {name: gaussian}\nsampler: {num_steps: 7}\n"))
    assert config.with_kernel(fixed, bayes).sampler.kernel == "hmc"
    named = config.load(write(tmp_path, "model: {name: gaussian}\nsampler: {kernel: ghmc}\n"))
    assert config.with_kernel(named, bayes).sampler.kernel == "ghmc"


def test_every_problem_reported_with_its_dotted_key(tmp_path):
    path = write(tmp_path, """
        model: {name: phi4}
        sampler: {step_sise: 0.05, num_steps: twenty, target_accept: 1.5}
        guard: {policy: explode}
    """)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    text = str(err.value)
    for key in ("sampler.step_sise", "sampler.num_steps", "sampler.target_accept", "guard.policy"):
        assert key in text, text
    assert "'twenty'" in text and path in text
    assert len(err.value.problems) == 4


def test_overrides_and_yaml_1_1_floats(tmp_path):
    path = write(tmp_path, "model: {name: gaussian}\nsampler: {step_size: 1e-3}\n")
    cfg = config.load(path, ["sampler.step_size=0.05", "run.seed=7", "model.params.dim=5"])
    assert cfg.sampler.step_size == 0.05 and cfg.run.seed == 7 and cfg.model.params == {"dim": 5}
    assert config.load(path).sampler.step_size == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string
    with pytest.raises(config.ConfigError, match="sampler.step_size"):
        config.load(path, ["sampler.step_size=-1"])
    with pytest.raises(config.ConfigError, match="dotted.key=value"):
        config.load(path, ["sampler.step_size"])


def test_warmup_trajectory_length_goes_to_sample_and_needs_a_float_length(tmp_path):
    path = write(tmp_path, "model: {name: gaussian}\nsampler: {trajectory_length: 0.25, warmup_trajectory_length: 0.5}\n")
    assert config.sample_kwargs(config.load(path))["warmup_trajectory_length"] == 0.5
    assert config.sample_kwargs(config.load(write(tmp_path, "model: {name: gaussian}\n", "plain.yaml"))
                                )["warmup_trajectory_length"] is None
    for override in ("sampler.trajectory_length=auto", "sampler.trajectory_length=null", "sampler.kernel=nuts"):
        with pytest.raises(config.ConfigError, match="warmup_trajectory_length"):
            config.load(path, [override])


def test_model_sources_and_their_errors(tmp_path):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        import jax, jax.numpy as jnp
        import hmc
        def make(scale=1.0):
            return hmc.Potential(terms={"q": lambda q: 0.5 * jnp.sum(q["x"] ** 2) / scale},
                                 init=lambda key: {"x": jax.random.normal(key, (2,))})
    """))
    cfg = config.load(write(tmp_path, "model: {factory: 'mymodel.py:make', params: {scale: 2.0}}\n"))
    assert config.make_potential(cfg.model, str(tmp_path)).terms.keys() == {"q"}
    cfg = config.load(write(tmp_path, "model: {factory: 'physics_models:phi4', params: {shape: [4, 4]}}\n"))
    assert config.make_potential(cfg.model).name == "phi4"
    bad = [
        ("model: {factory: 'nothere.py:make'}", "not found"),
        ("model: {factory: 'mymodel.py:missing'}", "no attribute"),
        ("model: {factory: 'no_such_module_xyz:f'}", "cannot import"),
        ("model: {name: phi5}", "registered models"),
        ("model: {name: phi4, params: {kappa: 1}}", "model.params"),
    ]
    for text, message in bad:
        cfg = config.load(write(tmp_path, text + "\n"))
        with pytest.raises(config.ConfigError, match=message):
            config.make_potential(cfg.model, str(tmp_path))
    with pytest.raises(config.ConfigError, match="exactly one"):
        config.load(write(tmp_path, "model: {name: phi4, factory: 'x:y'}\n"))
    with pytest.raises(config.ConfigError, match="no such config file"):
        config.load(str(tmp_path / "absent.yaml"))


def test_sweep_points_seeds_and_folders(tmp_path):
    path = write(tmp_path, """
        model: {name: gaussian}
        run: {seed: 10}
        output: {dir: runs/g}
        sweep: {sampler.step_size: [0.05, 0.1], model.params.dim: [2, 3, 4]}
    """)
    cfg = config.load(path)
    points = config.sweep_points(cfg)
    assert len(points) == 6 and points[1] == {"sampler.step_size": 0.05, "model.params.dim": 3}
    five = config.sweep_config(cfg, 5)
    assert five.sampler.step_size == 0.1 and five.model.params["dim"] == 4
    assert five.run.seed == 15 and five.output.dir.endswith("sweep-0005") and five.sweep == {}
    assert len({config.sweep_config(cfg, i).run.seed for i in range(6)}) == 6
    with pytest.raises(config.ConfigError, match="6 point"):
        config.sweep_config(cfg, 6)


@pytest.mark.slow  # test_run's draws.nc test drives the same config path and compares bit for bit
def test_config_drives_a_real_sample(tmp_path):
    cfg = config.load(write(tmp_path, """
        model: {name: harmonic_oscillator, params: {n_sites: 8}}
        sampler: {num_chains: 2, num_warmup: 50, num_samples: 40, trajectory_length: 1.0, jitter: 0.1}
        run: {seed: 3, chunk_size: 25}
    """))
    result = hmc.sample(config.make_potential(cfg.model), progress=False, **config.sample_kwargs(cfg))
    assert result.draws["x2"].shape == (2, 40)
    assert result.settings["seed"] == 3 and result.settings["trajectory_length"] == 1.0
