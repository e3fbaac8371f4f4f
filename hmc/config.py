"""Run configuration: a pydantic schema for the YAML files, dotted overrides, sweeps.

Every key mirrors an argument of :func:`hmc.sample`; unknown keys are errors.
All problems in a file are reported at once, each with its dotted key and the
offending value (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import itertools
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from hmc.potential import Potential


class ConfigError(ValueError):
    """A configuration problem; ``problems`` lists ``"dotted.key: message"`` lines."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n  " + "\n  ".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str | None = None
    factory: str | None = None
    # potential: the factory returns an hmc.Potential; numpyro: it is a numpyro model, and
    # params are its keyword arguments (a string ending in .npz, .npy or .csv is read as data)
    kind: Literal["potential", "numpyro"] = "potential"
    init_strategy: Literal["uniform", "median", "mean", "sample", "feasible"] = "uniform"  # kind numpyro
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of model.name (a registered model) and model.factory")
        if self.kind == "numpyro" and self.factory is None:
            raise ValueError("model.kind: numpyro needs model.factory (the numpyro model function)")
        if self.kind != "numpyro" and self.init_strategy != "uniform":
            raise ValueError("model.init_strategy applies to model.kind: numpyro")
        return self


class TimescaleLevel(_Section):
    terms: list[str] = Field(min_length=1)  # the terms whose force acts on this level
    steps: PositiveInt = 1  # steps of this level per drift of the level outside it
    integrator: Literal["leapfrog", "minimum_norm", "yoshida4", "force_gradient"] | None = None  # this level's; null: the sampler's


class TemperingConfig(_Section):
    replicas: Annotated[int, Field(ge=2)] | Literal["auto"] = 8  # replicas per chain; auto: 2 Lambda + 1 from a pilot
    # the hottest replica's inverse temperature; auto: pilot runs lower it until the hottest replica explores
    beta_min: Annotated[float, Field(gt=0.0, lt=1.0)] | Literal["auto"] = 0.1
    ladder: list[float] | None = None  # explicit inverse temperatures, 1 first, decreasing (overrides the above)
    terms: list[str] | None = None  # the tempered terms (default: all)
    adapt: bool = True  # adapt the ladder in warmup rounds
    record: bool = False  # also record every replica's observables (replicas/<name>, temperature order)
    swaps: bool = True  # false: the replicas run side by side without exchange (a contrast)


class SamplerConfig(_Section):
    kernel: Literal["hmc", "ghmc", "nuts"] | None = None  # null: nuts for a Bayesian model, hmc for physics
    integrator: Literal["leapfrog", "minimum_norm", "yoshida4", "force_gradient"] | None = None  # null: the kernel's (minimum_norm; nuts: leapfrog)
    step_size: PositiveFloat | None = None
    num_steps: PositiveInt | None = None  # null: kernel hmc adapts the length (auto), ghmc takes 1
    trajectory_length: PositiveFloat | Literal["auto"] | None = None  # auto: adapted in warmup (ChEES)
    jitter: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_trajectory_length: PositiveFloat | None = None  # warmup's own length (with a float trajectory_length)
    max_num_steps: PositiveInt | None = None  # the most steps of a trajectory_length trajectory (null: 1000)
    max_tree_depth: Annotated[int, Field(ge=1, le=30)] | None = None  # kernel nuts: at most 2**depth - 1 leaves (10)
    persistence: float | None = Field(None, ge=0.0, lt=1.0)  # kernel ghmc: c in p <- c p + sqrt(1 - c^2) xi
    mass_matrix: Literal["identity", "diagonal", "dense"] | None = None  # null: identity with group leaves, else diagonal
    adaptation: Literal["pooled", "per_chain"] = "pooled"
    target_accept: float = Field(0.8, gt=0.0, lt=1.0)
    num_chains: PositiveInt = 4
    num_warmup: int = Field(500, ge=0)
    num_samples: PositiveInt = 1000
    thin: PositiveInt = 1
    record: list[str] | Literal["auto"] | None = "auto"  # null: every state leaf
    timescales: list[TimescaleLevel] | None = None  # nested integration by term, outermost level first
    tempering: TemperingConfig | None = None  # replica exchange (non-reversible parallel tempering)

    @model_validator(mode="after")
    def _kernel_settings(self) -> SamplerConfig:
        if self.kernel == "ghmc" and self.num_steps is None:
            self.num_steps = 1  # a few integrator steps per transition is what GHMC is for
        if self.kernel in ("hmc", "ghmc") and self.integrator is None:
            self.integrator = "minimum_norm"  # a named kernel shows its integrator; null waits for the model
        if self.kernel == "nuts":
            if "integrator" not in self.model_fields_set:
                self.integrator = "leapfrog"  # one gradient per leaf: cheaper per effective sample (BENCHMARKS.md)
            given = sorted({"num_steps", "trajectory_length", "jitter", "timescales", "warmup_trajectory_length"}
                           & self.model_fields_set)
            given = [k for k in given if getattr(self, k) not in (None, 0.0)]
            if given:
                raise ValueError(f"{given[0]} does not apply to kernel nuts (the tree sets the trajectory's length; "
                                 "max_tree_depth caps it)")
            self.num_steps = None
        elif self.max_tree_depth is not None:
            raise ValueError(f"max_tree_depth applies to kernel nuts only (kernel is {self.kernel!r})")
        if self.kernel != "ghmc" and self.persistence is not None:
            raise ValueError(f"persistence applies to kernel ghmc only (kernel is {self.kernel!r})")
        if self.tempering is not None and self.kernel not in ("hmc", None):
            raise ValueError(f"tempering needs kernel hmc (kernel is {self.kernel!r})")
        if self.trajectory_length == "auto" and self.kernel not in ("hmc", None):
            raise ValueError(f"trajectory_length: auto applies to kernel hmc only (kernel is {self.kernel!r})")
        if self.warmup_trajectory_length is not None and not isinstance(self.trajectory_length, float):
            raise ValueError("warmup_trajectory_length needs a float trajectory_length (the draws' length; "
                             f"trajectory_length is {self.trajectory_length!r})")
        return self


class GuardConfig(_Section):
    policy: Literal["reject", "halt", "off"] = "reject"
    max_trip_fraction: float = Field(0.01, ge=0.0, le=1.0)
    allow: list[str] = Field(default_factory=list)
    check: Literal["trajectory", "step"] = "trajectory"


class RunSection(_Section):
    seed: int = Field(0, ge=0)
    precision: Literal["float32", "float64"] = "float32"
    chunk_size: PositiveInt = 100
    checkpoint_every: PositiveInt = 1
    devices: Literal["auto"] | PositiveInt = "auto"
    distributed: Literal["auto"] | bool = "auto"
    strict: bool = False  # exit 6 when the run finishes with a verdict that is not clean
    # {chain: c, lattice: k}: each chain's lattice split over k devices (hmc.sample(mesh=...))
    mesh: dict[Literal["chain", "lattice"], PositiveInt] | None = None

    @model_validator(mode="after")
    def _mesh_fits_devices(self) -> RunSection:
        if self.mesh is not None:
            total = self.mesh.get("chain", 1) * self.mesh.get("lattice", 1)
            if self.devices not in ("auto", total):
                raise ValueError(f"run.mesh {self.mesh} spans {total} device(s), but run.devices is {self.devices} "
                                 f"(use devices: auto or {total})")
        return self


class OutputConfig(_Section):
    dir: str = "runs/run"


class RunConfig(_Section):
    """The whole file: every section optional but ``model``."""

    model: ModelConfig
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    run: RunSection = Field(default_factory=RunSection)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _warmup_or_step(self) -> RunConfig:
        if self.sampler.step_size is None and self.sampler.num_warmup == 0:
            raise ValueError("sampler.step_size: null needs sampler.num_warmup > 0 to adapt it")
        return self


def _problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{key}: {e['msg']}{shown}")
    return lines


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{key}: {'.'.join(parts[:-1])} is not a section"])
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """``["sampler.step_size=0.05", ...]`` -> ``[("sampler.step_size", 0.05), ...]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"{item}: an override is dotted.key=value"])
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def build(data: Mapping[str, Any], overrides: Iterable[tuple[str, Any]] = (), source: str | None = None) -> RunConfig:
    """Validate a config mapping with dotted ``overrides`` applied."""
    tree = copy.deepcopy(dict(data))
    for key, value in overrides:
        _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_problems(err), source) from None


def _read_yaml(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise ConfigError([f"{path}: no such {what}"])
    with open(path) as fh:
        try:
            return yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise ConfigError([f"{path}: not valid YAML: {err}"]) from None


def load(path: str, overrides: Iterable[str] = ()) -> RunConfig:
    """Read and validate a YAML config; ``overrides`` are ``dotted.key=value`` strings."""
    data = _read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    config = build(data, parse_overrides(overrides), source=path)
    check_sweep(config, source=path)
    return config


def with_sweep_file(config: RunConfig, path: str) -> RunConfig:
    """``config`` with its sweep grid replaced by the one in the YAML file ``path``
    (a mapping of dotted keys to lists of values, optionally under a ``sweep:`` key)."""
    grid = _read_yaml(path, "sweep file")
    if isinstance(grid, dict) and set(grid) == {"sweep"}:
        grid = grid["sweep"]
    data = config.model_dump()
    data["sweep"] = grid
    new = build(data, source=path)
    check_sweep(new, source=path)
    return new


def check_sweep(config: RunConfig, source: str | None = None) -> None:
    """Every sweep point must be a valid config: errors name the sweep key and value."""
    problems = [f"sweep.{key}: give a non-empty list of values" for key, values in config.sweep.items() if not values]
    if problems:
        raise ConfigError(problems, source)
    for index, point in enumerate(sweep_points(config)):
        try:
            sweep_config(config, index)
        except ConfigError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            problems += [f"sweep point {index} ({where}): {p}" for p in err.problems]
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index), source)


def sweep_points(config: RunConfig) -> list[dict[str, Any]]:
    """The grid of ``sweep`` as a list of ``{dotted.key: value}`` (row-major, keys in file order)."""
    if not config.sweep:
        return [{}]
    keys = list(config.sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(config.sweep[k] for k in keys))]


def sweep_config(config: RunConfig, index: int) -> RunConfig:
    """Sweep point ``index`` as a config of its own: its overrides applied, the seed
    offset by the index (tasks never share random streams) and its own output folder."""
    points = sweep_points(config)
    if not 0 <= index < len(points):
        raise ConfigError([f"sweep index {index}: the sweep has {len(points)} point(s) (0..{len(points) - 1})"])
    data = config.model_dump(exclude_unset=True)  # what the file says: the point's kernel picks its own defaults
    data["sweep"] = {}
    overrides = list(points[index].items())
    if "run.seed" not in points[index]:
        overrides.append(("run.seed", config.run.seed + index))
    overrides.append(("output.dir", os.path.join(config.output.dir, f"sweep-{index:04d}")))
    return build(data, overrides)


def make_potential(model: ModelConfig, config_dir: str | None = None) -> Potential:
    """The model's ``Potential``: a registered name, ``"module.path:function"`` or
    ``"path/to/file.py:function"`` (relative to the config's folder, then the working directory)."""
    import physics_models

    if model.name is not None:
        try:
            factory = physics_models.get(model.name)
        except KeyError as err:
            raise ConfigError([f"model.name: {err.args[0]}"]) from None
    else:
        factory = _import_factory(model.factory, config_dir)
    if model.kind == "numpyro":
        return _numpyro_potential(model, factory, config_dir)
    try:
        potential = factory(**model.params)
    except TypeError as err:
        raise ConfigError([f"model.params: {err}"]) from None
    except ValueError as err:
        raise ConfigError([f"model.params: {err}"]) from None
    if not isinstance(potential, Potential):
        raise ConfigError([f"model.factory: {model.factory or model.name} returned {type(potential).__name__}, "
                           "not an hmc.Potential"])
    return potential


def _numpyro_potential(model: ModelConfig, factory: Any, config_dir: str | None) -> Potential:
    """``Potential.from_numpyro(factory, **params)`` with the data files read."""
    import inspect

    params = {key: load_data(key, value, config_dir) for key, value in model.params.items()}
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as err:
        raise ConfigError([f"model.params: {err} (the arguments of the numpyro model {model.factory})"]) from None
    except ValueError:
        pass  # no signature to check
    try:
        return Potential.from_numpyro(factory, init_strategy=model.init_strategy, **params)
    except (TypeError, ValueError) as err:
        raise ConfigError([f"model.factory: the numpyro model {model.factory} could not be traced: {err}"]) from None


def _factory_file(target: str, config_dir: str | None) -> str:
    path = _find_file(target, config_dir)
    if path is None:
        raise ConfigError([f"model.factory: file {target!r} not found (looked in {_candidates(target, config_dir)})"])
    return path


def resolved(config: RunConfig, config_dir: str | None = None) -> dict[str, Any]:
    """The config as plain data with every default filled in and a factory file made
    absolute, so that the copy saved in a run directory works from anywhere."""
    data = config.model_dump(mode="json")
    factory = data["model"].get("factory")
    if factory and ":" in factory and factory.rsplit(":", 1)[0].endswith(".py"):
        target, attr = factory.rsplit(":", 1)
        data["model"]["factory"] = f"{_factory_file(target, config_dir)}:{attr}"
    if config.model.kind == "numpyro":
        data["model"]["params"] = {key: _absolute_data_path(key, value, config_dir)
                                   for key, value in data["model"]["params"].items()}
    return data


DATA_SUFFIXES = (".npz", ".npy", ".csv")


def _data_path(value: Any) -> tuple[str, str | None] | None:
    """``("file.csv", "column")`` for a data reference ``"file.csv:column"`` (the part
    after the colon optional), ``None`` for any other parameter value."""
    if not isinstance(value, str):
        return None
    for suffix in DATA_SUFFIXES:
        if value.endswith(suffix):
            return value, None
        cut = value.rfind(suffix + ":")
        if cut > 0:
            return value[:cut + len(suffix)], value[cut + len(suffix) + 1:] or None
    return None


def _locate(value: Any, config_dir: str | None) -> tuple[str, str | None, str | None] | None:
    """``(path as given, the part after the colon, the file found or None)`` of a data
    reference, ``None`` for any other parameter value."""
    ref = _data_path(value)
    return None if ref is None else (*ref, _find_file(ref[0], config_dir))


def _absolute_data_path(key: str, value: Any, config_dir: str | None) -> Any:
    located = _locate(value, config_dir)
    if located is None or located[2] is None:
        return value  # not data, or reported when the model is built
    _, part, found = located
    return found if part is None else f"{found}:{part}"


def _candidates(path: str, config_dir: str | None) -> list[str]:
    """Where a relative path is looked for: the config's folder, then the working directory."""
    return [path] if os.path.isabs(path) else [os.path.join(d, path) for d in (config_dir, os.getcwd())
                                               if d is not None]


def _find_file(path: str, config_dir: str | None) -> str | None:
    found = next((p for p in _candidates(path, config_dir) if os.path.isfile(p)), None)
    return None if found is None else os.path.abspath(found)


def load_data(key: str, value: Any, config_dir: str | None) -> Any:
    """A model parameter, with a data reference read: ``"x.npy"``; ``"d.npz"`` (its one
    array) or ``"d.npz:name"``; ``"t.csv"`` (a numeric table with an optional header row;
    one column comes back 1-D) or ``"t.csv:column"``. Paths are relative to the config's
    folder, then the working directory. Errors name the ``model.params`` key and the file."""
    import numpy as np

    located = _locate(value, config_dir)
    if located is None:
        return value
    path, part, found = located
    if found is None:
        raise ConfigError([f"model.params.{key}: data file {path!r} not found (looked in the config's folder "
                           "and the working directory)"])
    try:
        if found.endswith(".npy"):
            return np.load(found)
        if found.endswith(".npz"):
            return _npz_array(key, found, part)
        return _csv_array(key, found, part)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError([f"model.params.{key}: cannot read {found}: {err}"]) from None


def _npz_array(key: str, path: str, part: str | None) -> Any:
    import numpy as np

    with np.load(path) as archive:
        names = list(archive.files)
        if part is None and len(names) == 1:
            part = names[0]
        if part not in names:
            what = "name one of its arrays as file.npz:name" if part is None else f"it has no array {part!r}"
            raise ConfigError([f"model.params.{key}: {path} holds {names}; {what}"])
        return archive[part]


def _csv_array(key: str, path: str, part: str | None) -> Any:
    import numpy as np

    with open(path) as fh:
        first = fh.readline()
    cells = [c.strip() for c in first.split(",")]
    try:
        [float(c) for c in cells]
        header = None
    except ValueError:
        header = cells
    table = np.loadtxt(path, delimiter=",", skiprows=0 if header is None else 1, ndmin=2)
    if part is not None:
        if header is None or part not in header:
            raise ConfigError([f"model.params.{key}: {path} has no column {part!r} (columns: {header})"])
        return table[:, header.index(part)]
    return table[:, 0] if table.shape[1] == 1 else table


def _import_factory(spec: str, config_dir: str | None) -> Any:
    if ":" not in spec:
        raise ConfigError([f"model.factory: {spec!r} is not 'module.path:function' or 'file.py:function'"])
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = _factory_file(target, config_dir)
        name = f"_hmc_user_model_{abs(hash(os.path.abspath(path)))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise ConfigError([f"model.factory: importing {path} failed: {err}"]) from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError([f"model.factory: cannot import module {target!r}: {err}"]) from None
    if not hasattr(module, attr):
        raise ConfigError([f"model.factory: {target!r} has no attribute {attr!r}"])
    return getattr(module, attr)


def _tempering_options(t: TemperingConfig) -> dict[str, Any]:
    """The ``tempering`` argument: an explicit ladder replaces ``replicas`` and ``beta_min``."""
    options = {"adapt": t.adapt, "terms": t.terms, "record": t.record, "swaps": t.swaps}
    if t.ladder is not None:
        options["ladder"] = list(t.ladder)
    else:
        options.update(replicas=t.replicas, beta_min=t.beta_min)
    return options


def with_kernel(config: RunConfig, potential: Any) -> RunConfig:
    """``config`` with the kernel a null ``sampler.kernel`` stands for filled in
    (:func:`hmc.settings.default_kernel`: nuts for a Bayesian model, hmc for physics), and a
    null ``integrator`` and ``max_num_steps`` by that kernel's defaults: the run directory's
    config then says what ran, and a run made before these keys could be null resumes."""
    from hmc.settings import default_kernel, default_mass_matrix

    s = config.sampler
    kernel = default_kernel(potential, s.kernel, num_steps=s.num_steps, trajectory_length=s.trajectory_length,
                            jitter=s.jitter, warmup_trajectory_length=s.warmup_trajectory_length,
                            persistence=s.persistence, timescales=s.timescales, tempering=s.tempering)
    data = s.model_dump(exclude_unset=True)
    data["kernel"] = kernel
    data["integrator"] = s.integrator or ("leapfrog" if kernel == "nuts" else "minimum_norm")
    data["max_num_steps"] = s.max_num_steps or 1000
    data["mass_matrix"] = default_mass_matrix(potential, s.mass_matrix)
    return config.model_copy(update={"sampler": SamplerConfig.model_validate(data)})


def sample_kwargs(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`hmc.sample` this config asks for."""
    s, g, r = config.sampler, config.guard, config.run
    return dict(
        seed=r.seed,
        num_chains=s.num_chains,
        num_warmup=s.num_warmup,
        num_samples=s.num_samples,
        kernel=s.kernel,
        integrator=s.integrator,
        persistence=s.persistence,
        step_size=s.step_size,
        num_steps=s.num_steps,
        trajectory_length=s.trajectory_length,
        jitter=s.jitter,
        warmup_trajectory_length=s.warmup_trajectory_length,
        max_num_steps=None if s.kernel == "nuts" else s.max_num_steps,
        max_tree_depth=s.max_tree_depth,
        timescales=None if s.timescales is None else [level.model_dump(exclude_none=True) for level in s.timescales],
        tempering=None if s.tempering is None else _tempering_options(s.tempering),
        mass_matrix=s.mass_matrix,
        adaptation=s.adaptation,
        target_accept=s.target_accept,
        thin=s.thin,
        record=s.record,
        guard=g.policy,
        max_trip_fraction=g.max_trip_fraction,
        allow=list(g.allow),
        guard_check=g.check,
        chunk_size=r.chunk_size,
        precision=r.precision,
        devices=r.devices,
        **({} if r.mesh is None else {"mesh": dict(r.mesh)}),
    )
