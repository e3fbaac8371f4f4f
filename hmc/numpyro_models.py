"""numpyro models as guarded potentials: one term per site, draws in constrained space.

:func:`from_numpyro` runs numpyro's own machinery and rewrites no distribution: the
model is traced once to find its sites and their supports; each evaluation substitutes
the unconstrained state through numpyro's ``_unconstrain_reparam`` (the bijection to the
site's support and its log-Jacobian, as numpyro's own ``potential_energy`` does) and
takes every site's log-density from ``numpyro.infer.util.compute_log_probs``.

Terms (``U = -log density``):

- each latent ``sample`` site: its log-prior at the constrained value plus its own
  log-Jacobian (named after the site);
- each observed ``sample`` site: its log-likelihood (named after the site);
- each ``factor`` site: its value (named after the site).

The state is ``{site: unconstrained value}``; the observables are the constrained
latent values and the ``deterministic`` sites, under their site names. Where each site
was declared in the user's code is recorded (:attr:`hmc.Potential.sites`), so the
guard can say "site 'tau' (HalfCauchy, model.py:12)" even when the NaN arose inside a
numpyro distribution.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hmc.potential import Potential

PyTree = Any

INIT_STRATEGIES = ("uniform", "median", "mean", "sample", "feasible")
LOG_DET = "_{}_log_det"  # the factor numpyro's _unconstrain_reparam adds for a site's log-Jacobian


def _library_dirs() -> tuple[str, ...]:
    import numpyro

    dirs = [os.path.dirname(os.path.abspath(numpyro.__file__)), os.path.dirname(os.path.abspath(jax.__file__)),
            os.path.dirname(os.path.abspath(__file__))]
    return tuple(d + os.sep for d in dirs)


def _declaring_frame() -> str | None:
    """``"file.py:line"`` of the innermost frame outside numpyro, jax and this package: the
    user's line that called ``numpyro.sample`` / ``factor`` / ``deterministic``."""
    skip = _library_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(skip) and "contextlib" not in path and "functools" not in path:
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _recorder() -> Any:
    from numpyro.primitives import Messenger

    class Declared(Messenger):
        """Records where each site is declared (the model runs unchanged)."""

        def __init__(self, fn: Callable) -> None:
            super().__init__(fn)
            self.sources: dict[str, str | None] = {}

        def process_message(self, msg: dict) -> None:
            if msg["type"] in ("sample", "deterministic") and msg["name"] not in self.sources:
                self.sources[msg["name"]] = _declaring_frame()

    return Declared


def _distribution_name(fn: Any) -> str:
    """The distribution under numpyro's wrappers (expand, mask, to_event)."""
    from numpyro.distributions.distribution import Unit

    if isinstance(fn, Unit):
        return "factor"
    while hasattr(fn, "base_dist") and type(fn).__name__ in ("ExpandedDistribution", "MaskedDistribution",
                                                             "Independent", "ImproperUniform"):
        fn = fn.base_dist
    return type(fn).__name__


def _init_strategy(strategy: Any) -> Any:
    from numpyro.infer import initialization

    if strategy is None:
        strategy = "uniform"
    if isinstance(strategy, str):
        if strategy not in INIT_STRATEGIES:
            raise ValueError(f"init_strategy must be one of {list(INIT_STRATEGIES)} or a numpyro init strategy, "
                             f"got {strategy!r}")
        strategy = getattr(initialization, f"init_to_{strategy}")
    if not isinstance(strategy, functools.partial):
        strategy = strategy()  # numpyro's init_to_* called without a site returns the strategy
    return strategy


class _Sites:
    """The model's sites by role, from one trace."""

    def __init__(self, trace: Mapping[str, dict], sources: Mapping[str, str | None]) -> None:
        from numpyro.distributions.distribution import Unit

        self.latent, self.observed, self.factor, self.deterministic = [], [], [], []
        self.params: dict[str, Any] = {}
        self.info: dict[str, dict[str, Any]] = {}
        for name, site in trace.items():
            kind = site["type"]
            if kind == "param":
                self.params[name] = site["value"]
            elif kind == "deterministic":
                self.deterministic.append(name)
            elif kind == "sample":
                self._sample(name, site, isinstance(site["fn"], Unit), sources.get(name))
        if not self.latent:
            raise ValueError("from_numpyro: the model has no latent sample site to sample")

    def _sample(self, name: str, site: dict, is_factor: bool, source: str | None) -> None:
        if site["is_observed"]:
            role = "factor" if is_factor else "observed"
        else:
            if site["fn"].support.is_discrete:
                raise ValueError(f"from_numpyro: latent site {name!r} ({_distribution_name(site['fn'])}) is discrete; "
                                 "HMC needs continuous latents (marginalise it out, or use numpyro's DiscreteHMCGibbs)")
            role = "latent"
        if name.startswith("_") and name.endswith("_log_det"):
            raise ValueError(f"from_numpyro: site name {name!r} clashes with numpyro's log-Jacobian factors")
        getattr(self, role).append(name)
        self.info[name] = {"site": name, "kind": role, "distribution": _distribution_name(site["fn"]),
                           "source": source}


def _prepare(model: Callable, args: tuple, kwargs: dict) -> tuple[Callable, _Sites]:
    """The model's sites, from one trace run abstractly (under ``jax.make_jaxpr``: only the
    sites' names, roles, distributions and supports are read, so a prior draw that breaks a
    distribution's argument check cannot stop the model from being read; the guard reports
    such states), and the model with its ``numpyro.param`` values fixed."""
    from numpyro import handlers

    seen: dict[str, Any] = {}

    def run() -> jax.Array:
        recorder = _recorder()(handlers.seed(model, rng_seed=0))
        seen["trace"] = handlers.trace(recorder).get_trace(*args, **kwargs)
        seen["sources"] = recorder.sources
        return jnp.zeros(())

    jax.make_jaxpr(run)()
    sites = _Sites(seen["trace"], seen["sources"])
    if not sites.params:
        return model, sites
    # numpyro.param values are fixed at their initial values, as numpyro's MCMC holds them
    trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)
    sites.params = {name: trace[name]["value"] for name in sites.params}
    return handlers.substitute(model, data=sites.params), sites


def _joint(model: Callable, args: tuple, kwargs: dict, sites: _Sites) -> Callable[[PyTree], dict]:
    """``u -> {"terms": ..., "observables": ...}`` in one run of the model."""
    from numpyro import handlers
    from numpyro.distributions.distribution import validation_enabled
    from numpyro.infer import util

    seeded = handlers.seed(model, rng_seed=0)  # a model that asks for a key still runs

    def joint(position: PyTree) -> dict[str, dict[str, jax.Array]]:
        substituted = handlers.substitute(seeded, substitute_fn=functools.partial(util._unconstrain_reparam, position))
        with validation_enabled(False):  # evaluated eagerly, a bad state is the guard's to report
            log_probs, trace = util.compute_log_probs(substituted, args, kwargs, {})
        terms = {}
        for name in sites.latent:
            log_det = log_probs.get(LOG_DET.format(name))
            terms[name] = -(log_probs[name] + log_det) if log_det is not None else -log_probs[name]
        for name in sites.observed + sites.factor:
            terms[name] = -log_probs[name]
        observables = {name: trace[name]["value"] for name in sites.latent + sites.deterministic}
        return {"terms": terms, "observables": observables}

    return joint


def _initializer(model: Callable, args: tuple, kwargs: dict, sites: _Sites, strategy: Any) -> Callable:
    """``key -> u``: numpyro's init strategy, mapped to unconstrained space by each site's
    own support (as numpyro's ``find_valid_initial_params`` does, without its retries: a
    start whose gradient is broken is for the guard to report, not to hide)."""
    from numpyro import handlers
    from numpyro.distributions.distribution import validation_enabled
    from numpyro.distributions.transforms import biject_to

    def init(rng_key: jax.Array) -> dict[str, jax.Array]:
        seeded = handlers.substitute(handlers.seed(model, rng_key), substitute_fn=strategy)
        # a start value given as a constant is evaluated eagerly: numpyro's argument check
        # would raise an anonymous error where preflight names the site and the line
        with validation_enabled(False):
            trace = handlers.trace(seeded).get_trace(*args, **kwargs)
        return {name: biject_to(trace[name]["fn"].support).inv(trace[name]["value"]) for name in sites.latent}

    return init


def from_numpyro(model: Callable[..., Any], *args: Any, init_strategy: Any = None, name: str | None = None,
                 **kwargs: Any) -> Potential:
    """A numpyro model as a :class:`hmc.Potential`, one term per site.

    Parameters
    ----------
    model
        A numpyro model (a Python callable with ``numpyro.sample`` / ``factor`` /
        ``deterministic`` statements). Observed data are its arguments, as for
        numpyro's ``MCMC.run``.
    *args, **kwargs
        The model's arguments.
    init_strategy
        ``"uniform"`` (default, numpyro's ``init_to_uniform``: uniform in (-2, 2) in
        unconstrained space), ``"median"``, ``"mean"``, ``"sample"``, ``"feasible"``, or
        any numpyro init strategy (``init_to_value(values=...)``).
    name
        A label (default: the model function's name).

    Discrete latent sites are refused (HMC needs continuous latents); ``numpyro.param``
    sites are held at their initial values.
    """
    strategy = _init_strategy(init_strategy)
    fixed, sites = _prepare(model, args, kwargs)
    joint = _joint(fixed, args, kwargs, sites)
    terms = {term: (lambda t: lambda q: joint(q)["terms"][t])(term)
             for term in sites.latent + sites.observed + sites.factor}
    observables = {site: (lambda s: lambda q: joint(q)["observables"][s])(site)
                   for site in sites.latent + sites.deterministic}
    return Potential(terms=terms, init=_initializer(fixed, args, kwargs, sites, strategy), observables=observables,
                     name=name or getattr(model, "__name__", "numpyro_model"), joint=joint,
                     sites={term: sites.info[term] for term in terms}, kind="bayesian")


def site_text(info: Mapping[str, Any]) -> str:
    """``"latent site 'tau' (HalfCauchy, model.py:12)"``."""
    where = ", ".join(x for x in (info.get("distribution"), info.get("source")) if x)
    return f"{info.get('kind', '')} site {info.get('site')!r}" + (f" ({where})" if where else "")


__all__ = ["INIT_STRATEGIES", "from_numpyro", "site_text"]
