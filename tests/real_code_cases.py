"""A corpus of potentials written with code we did not write: jax-md, TensorFlow
Probability's JAX substrate and numpyro, plus the minimal reproducers distilled
from them.

Each case is a :class:`Case`: a potential, a state, and what the guard must say
there: nothing (``expect=None``: a correct model, any finding is a false alarm) or
one finding (``Expect``: kind, primitive and the library's own source line, found
by searching the library's file for a snippet, so a reformatted release fails
loudly instead of silently). ``tests/test_real_code.py`` runs every case;
``scripts/guard_corpus.py`` prints the table (false alarms and attribution accuracy).

Cases whose library is missing are skipped (``jax_md``, ``tensorflow_probability``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hmc


@dataclasses.dataclass
class Expect:
    kind: str  # "disconnected", "nonfinite_gradient", ...
    primitive: str | None  # primitive name, without [params]; None: not checked
    where: tuple[str, str] | None  # (module, snippet) of the line to blame; None: not checked
    cause: str | None = None  # "overflow", "singularity", "domain"

    @property
    def source(self) -> str | None:
        return None if self.where is None else library_line(*self.where)


@dataclasses.dataclass
class Case:
    name: str
    library: str  # "jax_md", "tfp", "numpyro", "jax"
    build: Callable[[Any], tuple[hmc.Potential, Any]]  # dtype -> (potential, position)
    expect: Expect | None = None
    dtypes: tuple = ("float32", "float64")


def library_line(module: str, snippet: str) -> str:
    """``file.py:N`` of the first line of ``module``'s source that contains ``snippet``."""
    mod = importlib.import_module(module)
    path = inspect.getsourcefile(mod)
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if snippet in line:
                return f"{os.path.basename(path)}:{number}"
    raise LookupError(f"{snippet!r} not found in {path}: the library changed")


def judge(case: Case, events: list, cause: bool = True) -> tuple[bool, str]:
    """``(right, what was said)``: no event at all for correct code; for a fault, an
    event of the expected kind, primitive, line and (with ``cause``) cause."""
    said = "; ".join(
        f"{e.kind} {e.primitive or '-'} {e.source or '-'}" + (f" ({e.cause})" if getattr(e, "cause", None) else "")
        for e in events
    ) or "nothing"
    if case.expect is None:
        return not events, said
    x = case.expect
    for e in events:
        if e.kind != x.kind:
            continue
        if x.primitive is not None and (e.primitive or "").split("[")[0] != x.primitive:
            continue
        if x.where is not None and e.source != x.source:
            continue
        if cause and x.cause is not None and getattr(e, "cause", None) != x.cause:
            continue
        return True, said
    return False, said


def available(library: str) -> bool:
    module = {"jax_md": "jax_md", "tfp": "tensorflow_probability.substrates.jax"}.get(library)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)


def _dummy_init(position: Any) -> Callable:
    return lambda key: position


# -- jax-md ------------------------------------------------------------------------------
def _lattice(n_side: int, spacing: float, dim: int = 3, jitter: float = 0.05, seed: int = 0) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * dim, indexing="ij"), -1).reshape(-1, dim)
    rng = np.random.default_rng(seed)
    return spacing * (grid + 0.5) + jitter * rng.standard_normal(grid.shape)


def _lj13(dtype: Any) -> np.ndarray:
    """An icosahedral LJ13 cluster (centre + 12 vertices at the LJ pair distance), jittered."""
    phi = (1 + 5**0.5) / 2
    vertices = []
    for a in (-1, 1):
        for b in (-1, 1):
            vertices += [(0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a)]
    v = np.array(vertices, float)
    v = v / np.linalg.norm(v[0]) * 2 ** (1 / 6)
    rng = np.random.default_rng(1)
    return np.concatenate([np.zeros((1, 3)), v]) + 0.02 * rng.standard_normal((13, 3))


def jaxmd_lj_free(dtype):
    from jax_md import energy, space

    displacement, _ = space.free()
    lj = energy.lennard_jones_pair(displacement)
    pot = hmc.Potential(terms={"lj": lambda q: lj(q["R"])}, init=_dummy_init(None), name="jaxmd.lj13")
    return pot, {"R": jnp.asarray(_lj13(dtype), dtype)}


def jaxmd_lj_neighbor_list(dtype):
    from jax_md import energy, space

    n_side, density = 4, 0.8
    box = float((n_side**3 / density) ** (1 / 3))
    displacement, _ = space.periodic(box)
    R0 = jnp.asarray(np.mod(_lattice(n_side, box / n_side), box), dtype)
    neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(displacement, box)
    nbrs0 = neighbor_fn.allocate(R0)

    def lj(q):
        nbrs = neighbor_fn.update(q["R"], nbrs0)  # the list follows the state inside the term
        return energy_fn(q["R"], neighbor=nbrs)

    return hmc.Potential(terms={"lj": lj}, init=_dummy_init(None), name="jaxmd.lj_nl"), {"R": R0}


def jaxmd_soft_sphere_periodic(dtype):
    from jax_md import energy, space

    n_side, box = 3, 3.3
    displacement, _ = space.periodic(box)
    soft = energy.soft_sphere_pair(displacement, sigma=1.0)
    R0 = jnp.asarray(_lattice(n_side, box / n_side), dtype)
    return hmc.Potential(terms={"soft": lambda q: soft(q["R"])}, init=_dummy_init(None), name="jaxmd.soft"), {"R": R0}


def jaxmd_morse_periodic(dtype):
    from jax_md import energy, space

    n_side = 3
    spacing = 1.0
    box = n_side * spacing
    displacement, _ = space.periodic(box)
    morse = energy.morse_pair(displacement, sigma=1.0, epsilon=1.0, alpha=3.0, r_onset=1.2, r_cutoff=1.45)
    R0 = jnp.asarray(_lattice(n_side, spacing), dtype)
    return hmc.Potential(terms={"morse": lambda q: morse(q["R"])}, init=_dummy_init(None), name="jaxmd.morse"), {"R": R0}


def jaxmd_overlap(dtype):
    """Two atoms 1e-3 sigma apart: the r^-13 force overflows (float32)."""
    pot, q = jaxmd_lj_free(dtype)
    R = np.asarray(q["R"], float).copy()
    R[1] = R[0] + np.array([1e-3, 0.0, 0.0])
    return pot, {"R": jnp.asarray(R, dtype)}


def jaxmd_cutoff_equals_onset(dtype):
    """``lennard_jones_pair(r_cutoff=2.0)`` with the default ``r_onset=2.0``: the smooth
    cutoff divides by ``(r_c^2 - r_o^2)^3 = 0``."""
    from jax_md import energy, space

    displacement, _ = space.free()
    lj = energy.lennard_jones_pair(displacement, r_cutoff=2.0)
    R = _lj13(dtype) * 1.25  # some pairs between onset and cutoff
    return hmc.Potential(terms={"lj": lambda q: lj(q["R"])}, init=_dummy_init(None), name="jaxmd.cutoff"), {
        "R": jnp.asarray(R, dtype)
    }


# -- TensorFlow Probability (JAX substrate) ---------------------------------------------------
EIGHT_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
EIGHT_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _tfd():
    import tensorflow_probability.substrates.jax as tfp

    return tfp.distributions


def _tfp_eight_schools_model(dtype):
    """Centred eight schools as a JointDistributionCoroutineAutoBatched (its log_prob
    traces a PRNG key into the program), and the observations."""
    tfd = _tfd()
    y, sigma = (jnp.asarray(a, dtype) for a in (EIGHT_Y, EIGHT_SIGMA))

    def model():
        mu = yield tfd.Normal(jnp.asarray(0.0, dtype), 5.0, name="mu")
        tau = yield tfd.HalfCauchy(jnp.asarray(0.0, dtype), 5.0, name="tau")
        theta = yield tfd.Sample(tfd.Normal(mu, tau), 8, name="theta")
        yield tfd.Independent(tfd.Normal(theta, sigma), 1, name="y")

    return tfd.JointDistributionCoroutineAutoBatched(model), y


def tfp_eight_schools(dtype):
    """Centred eight schools, tau on the log scale with its Jacobian."""
    jd, y = _tfp_eight_schools_model(dtype)

    def posterior(q):
        tau = jnp.exp(q["log_tau"])
        return -(jd.log_prob(q["mu"], tau, q["theta"], y) + q["log_tau"])

    position = {"mu": jnp.asarray(1.0, dtype), "log_tau": jnp.asarray(0.0, dtype),
                "theta": jnp.asarray(np.linspace(-2, 6, 8), dtype)}
    return hmc.Potential(terms={"posterior": posterior}, init=_dummy_init(position), name="tfp.eight_schools"), position


def tfp_funnel(dtype):
    tfd = _tfd()

    def model():
        v = yield tfd.Normal(jnp.asarray(0.0, dtype), 3.0, name="v")
        yield tfd.Sample(tfd.Normal(jnp.asarray(0.0, dtype), jnp.exp(v / 2)), 9, name="x")

    jd = tfd.JointDistributionCoroutineAutoBatched(model)
    position = {"v": jnp.asarray(0.5, dtype), "x": jnp.asarray(np.linspace(-1, 1, 9), dtype)}
    term = lambda q: -jd.log_prob(q["v"], q["x"])  # noqa: E731
    return hmc.Potential(terms={"funnel": term}, init=_dummy_init(position), name="tfp.funnel"), position


def tfp_stochastic_volatility(dtype, T=100):
    """Stochastic volatility (Kim, Shephard & Chib 1998) with tfp distributions and
    bijectors: persistence through a sigmoid, scale through a softplus."""
    import tensorflow_probability.substrates.jax as tfp

    tfd, tfb = tfp.distributions, tfp.bijectors
    rng = np.random.default_rng(3)
    h = np.zeros(T)
    for t in range(1, T):
        h[t] = 0.95 * h[t - 1] + 0.2 * rng.standard_normal()
    returns = jnp.asarray(np.exp(h / 2) * rng.standard_normal(T), dtype)
    sigmoid, softplus = tfb.Sigmoid(), tfb.Softplus()

    def prior(q):
        phi = 2 * sigmoid.forward(q["phi_raw"]) - 1
        sigma = softplus.forward(q["sigma_raw"])
        lp = tfd.Beta(jnp.asarray(20.0, dtype), 1.5).log_prob((phi + 1) / 2)
        lp += sigmoid.forward_log_det_jacobian(q["phi_raw"], event_ndims=0)
        lp += tfd.HalfNormal(jnp.asarray(1.0, dtype)).log_prob(sigma)
        lp += softplus.forward_log_det_jacobian(q["sigma_raw"], event_ndims=0)
        lp += tfd.Normal(jnp.asarray(0.0, dtype), 5.0).log_prob(q["mu"])
        return -lp

    def latent(q):
        phi = 2 * sigmoid.forward(q["phi_raw"]) - 1
        sigma = softplus.forward(q["sigma_raw"])
        z = q["z"]
        h0 = q["mu"] + sigma / jnp.sqrt(1 - phi**2) * z[0]
        increments = q["mu"] + sigma * z[1:]

        def step(h_prev, inc):
            h_t = phi * (h_prev - q["mu"]) + inc
            return h_t, h_t

        _, hs = jax.lax.scan(step, h0, increments)
        h_all = jnp.concatenate([h0[None], hs])
        lp = tfd.Normal(jnp.asarray(0.0, dtype), 1.0).log_prob(z).sum()
        lp += tfd.Normal(jnp.asarray(0.0, dtype), jnp.exp(h_all / 2)).log_prob(returns).sum()
        return -lp

    position = {"mu": jnp.asarray(0.0, dtype), "phi_raw": jnp.asarray(2.0, dtype),
                "sigma_raw": jnp.asarray(-1.0, dtype), "z": jnp.asarray(0.1 * np.ones(T), dtype)}
    return hmc.Potential(terms={"prior": prior, "latent": latent}, init=_dummy_init(position),
                         name="tfp.stochastic_volatility"), position


def tfp_eight_schools_negative_scale(dtype):
    """The constrained scale handed over without its transform (``tau < 0``): tfp's
    Normal log-density takes the log of a negative scale."""
    jd, y = _tfp_eight_schools_model(dtype)

    def posterior(q):
        return -jd.log_prob(q["mu"], q["tau"], q["theta"], y)

    position = {"mu": jnp.asarray(1.0, dtype), "tau": jnp.asarray(-1.0, dtype),
                "theta": jnp.asarray(np.linspace(-2, 6, 8), dtype)}
    return hmc.Potential(terms={"posterior": posterior}, init=_dummy_init(position), name="tfp.bad_scale"), position


# -- numpyro ------------------------------------------------------------------------------
def numpyro_eight_schools(dtype):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer.util import initialize_model

    def model(sigma, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("J", len(sigma)):
            theta = numpyro.sample("theta", dist.Normal(mu, tau))
            numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    info = initialize_model(jax.random.key(0), model, model_args=(jnp.asarray(EIGHT_SIGMA, dtype),),
                            model_kwargs={"y": jnp.asarray(EIGHT_Y, dtype)}, dynamic_args=False)
    position = _cast(info.param_info.z, dtype)
    pot = hmc.Potential(terms={"numpyro": info.potential_fn}, init=_dummy_init(position), name="numpyro.eight")
    return pot, position


def numpyro_factor_log(dtype):
    """A numpyro model whose ``factor`` takes the log of a negative number past x = 1."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer.util import initialize_model

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))
        numpyro.factor("barrier", jnp.sum(jnp.log(1.0 - x)))  # log of a negative number

    info = initialize_model(jax.random.key(0), model, dynamic_args=False)
    position = {"x": jnp.asarray([0.5, 1.5], dtype)}
    return hmc.Potential(terms={"numpyro": info.potential_fn}, init=_dummy_init(position), name="numpyro.factor"), position


# -- minimal reproducers ------------------------------------------------------------------------
def minimal_mod_mask(dtype):
    def wrapped(q):
        d = jnp.mod(q["x"], 1.0) - 0.5
        w = (jnp.abs(d) < 0.4).astype(q["x"].dtype)  # mask line
        return jnp.sum(d**2 * (1 + 0 * w))

    x = jnp.asarray(np.linspace(-1.3, 2.2, 6), dtype)
    return hmc.Potential(terms={"wrapped": wrapped}, init=_dummy_init(None), name="min.mod_mask"), {"x": x}


def minimal_minimum_image(dtype):
    L = 3.0

    def pair(q):
        d = q["x"][:, None] - q["x"][None, :]
        d = d - L * jnp.round(d / L)  # minimum image
        return 0.5 * jnp.sum(d**2)

    x = jnp.asarray(np.linspace(0.1, 2.7, 5), dtype)
    return hmc.Potential(terms={"pair": pair}, init=_dummy_init(None), name="min.minimum_image"), {"x": x}


def minimal_round_value(dtype):
    def lattice(q):
        x_hat = jnp.round(q["x"])  # rounded value used as a value: the energy jumps with it
        return 0.5 * jnp.sum(x_hat**2) + 0.5 * jnp.sum(q["x"] ** 2)

    x = jnp.asarray(np.linspace(-1.2, 1.3, 4), dtype)
    return hmc.Potential(terms={"lattice": lattice}, init=_dummy_init(None), name="min.round"), {"x": x}


def minimal_discarded_nan(dtype):
    def term(q):
        x = q["x"]
        m = x > 0
        r = jnp.where(m, jnp.sqrt(jnp.where(m, x, 0.0)), 0.0)  # safe: the NaN is discarded
        return jnp.sum(r) + jnp.sqrt(x[1] - 1.0)  # the bug

    return hmc.Potential(terms={"term": term}, init=_dummy_init(None), name="min.discarded"), {
        "x": jnp.asarray([0.0, 1.0], dtype)
    }


def minimal_prng_key(dtype):
    def term(q):
        noise = jax.random.normal(jax.random.key(0), ())
        return -jnp.sum(jnp.log(q["x"])) + 0.0 * noise  # log of zero

    return hmc.Potential(terms={"term": term}, init=_dummy_init(None), name="min.key"), {
        "x": jnp.asarray([0.0, 1.0], dtype)
    }


def minimal_overflow(dtype):
    def term(q):
        return jnp.sum(q["x"] ** 12)  # overflow

    return hmc.Potential(terms={"term": term}, init=_dummy_init(None), name="min.overflow"), {
        "x": jnp.asarray([1e4, 1.0], dtype)
    }


CASES = [
    # correct code: any finding is a false alarm
    Case("jax-md LJ13, free space", "jax_md", jaxmd_lj_free),
    Case("jax-md LJ, periodic, neighbour list", "jax_md", jaxmd_lj_neighbor_list),
    Case("jax-md soft spheres, periodic", "jax_md", jaxmd_soft_sphere_periodic),
    Case("jax-md Morse solid, periodic", "jax_md", jaxmd_morse_periodic),
    Case("tfp eight schools (centred, AutoBatched)", "tfp", tfp_eight_schools),
    Case("tfp funnel", "tfp", tfp_funnel),
    Case("tfp stochastic volatility", "tfp", tfp_stochastic_volatility),
    Case("numpyro eight schools", "numpyro", numpyro_eight_schools),
    Case("jnp.mod wrap with a mask", "jax", minimal_mod_mask),
    Case("minimum image (round)", "jax", minimal_minimum_image),
    # faults: the right class, primitive and line
    Case("jax-md overlap (float32 overflow)", "jax_md", jaxmd_overlap,
         Expect("nonfinite_gradient", "mul", ("jax_md.energy", "idr = sigma / dr"), "overflow"), dtypes=("float32",)),
    Case("jax-md r_cutoff == r_onset", "jax_md", jaxmd_cutoff_equals_onset,
         Expect("nonfinite_gradient", "div", ("jax_md.energy", "(r_c - r) ** 2 * (r_c + 2 * r - 3 * r_o)"), "singularity")),
    Case("tfp negative scale", "tfp", tfp_eight_schools_negative_scale,
         Expect("nonfinite_energy", "log", ("tensorflow_probability.substrates.jax.distributions.normal",
                                             "0.5 * np.log(2. * np.pi), dtype=self.dtype) + tf.math.log(scale)"),
                "domain")),
    Case("numpyro factor, log of a negative number", "numpyro", numpyro_factor_log,
         Expect("nonfinite_energy", "log", (__name__, "# log of a negative number"), "domain")),
    Case("round used as a value", "jax", minimal_round_value,
         Expect("partially_detached", "round", (__name__, "# rounded value used as a value"))),
    Case("NaN discarded by a where, then a real one", "jax", minimal_discarded_nan,
         Expect("nonfinite_gradient", None, (__name__, "# the bug"), "singularity")),
    Case("PRNG key in the term", "jax", minimal_prng_key,
         Expect("nonfinite_energy", "log", (__name__, "# log of zero"), "singularity")),
    Case("x**12 overflow", "jax", minimal_overflow,
         Expect("nonfinite_energy", "integer_pow", (__name__, "# overflow"), "overflow"), dtypes=("float32",)),
]
