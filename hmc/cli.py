"""The ``hmc`` command line: a thin layer over :mod:`hmc.config` and :mod:`hmc.runner`.

Exit codes: 0 ok; 2 invalid config or usage (the message names the dotted key);
3 the guard refused to start or halted the run; 4 the run directory's
checkpoint belongs to a different config, version, precision or device layout, or
none of its files reads back (each damaged file named); 6 finished, but the verdict is
not clean (only with --strict or run.strict); 74 a write failed for lack of space or
quota (the last checkpoint is intact: free space and run again); 75 stopped by SIGTERM/SIGUSR1 after checkpointing (run the same command again).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from typing import Any

EPILOG = """\
examples:
  hmc run configs/phi4.yaml                       run (or resume) the job in output.dir
  hmc run configs/phi4.yaml sampler.num_samples=5000 run.seed=7 --out runs/long
  hmc run configs/sweep.yaml --list-sweep         show the sweep grid with indices
  hmc run configs/sweep.yaml --index 3            run point 3 (default: $SLURM_ARRAY_TASK_ID)
  hmc check configs/phi4.yaml                     preflight: which term reaches which leaf
  hmc check --reversibility configs/su2_2d.yaml   forward, flip, back: |dq|, |dH|, order
  hmc measure runs/su3_4d flow                     Wilson flow of the recorded links: t^2 E, t0, w0
  hmc summary runs/phi4                           summary table (also of a run in progress)
  hmc plot runs/phi4                              (re)draw runs/phi4/plots/*.png
  hmc models                                      registered models and their parameters

exit codes: 0 ok, 2 invalid config or usage, 3 guard refused or halted,
4 checkpoint incompatible with this config/version, 6 finished but the verdict is not clean
(--strict only), 74 no space left writing the run directory (free space, run again),
75 checkpointed after SIGTERM/SIGUSR1 (run the same command again to resume).
"""

RUN_HELP = """\
Run the config, or resume it: when the output directory holds a checkpoint of
the same config, sampling continues where it stopped and gives the same draws
as an uninterrupted run. SIGTERM and SIGUSR1 checkpoint at the next chunk
boundary and exit 75. Overrides are dotted keys, values in YAML:
sampler.step_size=0.05 'guard.allow=[disconnected:prior]' model.params.shape=[16,16].
"""


def _config_error(err: Exception) -> int:
    print(f"hmc: {err}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace) -> Any:
    from hmc import config

    cfg = config.load(args.config, args.overrides)
    if getattr(args, "sweep", None):
        cfg = config.with_sweep_file(cfg, args.sweep)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from hmc import config, runner

    cfg = _load(args)
    config_dir = os.path.dirname(os.path.abspath(args.config))
    points = config.sweep_points(cfg)
    if args.list_sweep:
        if not cfg.sweep:
            print("this config has no sweep (one run)")
            return 0
        for i, point in enumerate(points):
            one = config.sweep_config(cfg, i)
            shown = " ".join(f"{k}={v!r}" for k, v in point.items())
            print(f"{i:4d}  {shown}  seed={one.run.seed}  -> {one.output.dir}")
        print(f"{len(points)} points: sbatch --array=0-{len(points) - 1} ...")
        return 0
    if args.out is not None:
        cfg = config.build(cfg.model_dump(), [("output.dir", args.out)])
    if args.strict:
        cfg = config.build(cfg.model_dump(), [("run.strict", True)])
    runner.start_distributed(cfg)
    if not cfg.sweep:
        return runner.execute(cfg, config_dir, progress=not args.no_progress)
    index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if index is None:
        raise config.ConfigError([
            f"sweep: this config has a sweep of {len(points)} points; choose one with --index N "
            f"(0..{len(points) - 1}, default $SLURM_ARRAY_TASK_ID), or --index all to run them one after another"
        ])
    indices = range(len(points)) if str(index) == "all" else [_index(index, len(points))]
    codes = [runner.execute(config.sweep_config(cfg, i), config_dir, progress=not args.no_progress)
             for i in indices]
    return max(codes)


def _index(value: Any, count: int) -> int:
    from hmc.config import ConfigError

    try:
        return int(value)
    except ValueError:
        raise ConfigError([f"--index: {value!r} is not a sweep index (0..{count - 1}) or 'all'"]) from None


def _check(args: argparse.Namespace) -> int:
    from hmc import runner

    cfg = _load(args)
    if args.reversibility:
        return runner.check_reversibility(cfg, os.path.dirname(os.path.abspath(args.config)))
    return runner.check(cfg, os.path.dirname(os.path.abspath(args.config)))


def _summary(args: argparse.Namespace) -> int:
    from hmc import runner

    _require_run_dir(args.run_dir)
    print(runner.summarize_run(args.run_dir, runner.potential_for(args.run_dir))["text"])
    return 0


def _plot(args: argparse.Namespace) -> int:
    from hmc import plots

    _require_run_dir(args.run_dir)
    for path in plots.plot_run(args.run_dir):
        print(path)
    return 0


def _require_run_dir(path: str) -> None:
    from hmc.config import ConfigError

    if not os.path.isdir(path):
        raise ConfigError([f"{path}: no such run directory"])
    if not any(os.path.exists(os.path.join(path, f)) for f in ("draws.nc", os.path.join("checkpoint", "state.npz"))):
        raise ConfigError([f"{path}: not a run directory (no draws.nc and no checkpoint/)"])


def _measure(args: argparse.Namespace) -> int:
    from hmc import runner

    _require_run_dir(args.run_dir)
    return runner.measure_flow(args.run_dir, t_max=args.t_max, eps=args.eps, every=args.every,
                               configurations=args.configurations)


def _models(args: argparse.Namespace) -> int:
    import physics_models

    for name, factory in physics_models.REGISTRY.items():
        doc = (inspect.getdoc(factory) or "").splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for param, default in physics_models.parameters(name).items():
            print(f"    {param} = {default!r}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hmc",
        description="Hamiltonian Monte Carlo for physics in JAX, with a gradient guard that names the "
        "term, primitive and source line behind every broken gradient.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{run,check,summary,plot,models,measure}")

    run = sub.add_parser("run", help="run or resume a config", description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", help="YAML config (see configs/)")
    run.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="settings that replace the file's")
    run.add_argument("--out", metavar="DIR", help="run directory (default: output.dir of the config)")
    run.add_argument("--index", metavar="N", help="sweep point to run (default $SLURM_ARRAY_TASK_ID); 'all' runs "
                     "every point in turn")
    run.add_argument("--sweep", metavar="FILE", help="YAML file with a sweep grid (dotted.key: [values]) replacing "
                     "the config's")
    run.add_argument("--list-sweep", action="store_true", help="print the sweep points with their indices and exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    run.add_argument("--strict", action="store_true", help="exit 6 when the run finishes with a verdict that is not "
                     "clean (the summary's warnings; also run.strict in the config)")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="preflight only: the term x leaf table; exit 3 if broken",
                           description="Check that every term's gradient reaches the leaves it depends on and "
                           "that energies and gradients are finite at every chain's initial state.")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    check.add_argument("--sweep", metavar="FILE", help=argparse.SUPPRESS)
    check.add_argument("--reversibility", action="store_true",
                       help="integrate forward, flip the momentum, integrate back: max |dq|, |dH| and the order "
                       "of the energy error (the config's integrator, step_size or 0.1, num_steps or 10, precision)")
    check.set_defaults(func=_check)

    summary = sub.add_parser("summary", help="summary of a run directory (finished or in progress)")
    summary.add_argument("run_dir")
    summary.set_defaults(func=_summary)

    plot = sub.add_parser("plot", help="write the run directory's plots/*.png")
    plot.add_argument("run_dir")
    plot.set_defaults(func=_plot)

    sub.add_parser("models", help="list the registered physics models and their parameters").set_defaults(func=_models)

    measure = sub.add_parser("measure", help="a measurement on a finished run's recorded states (flow: the Wilson "
                             "flow of gauge links: t^2 E, t0, w0, flowed Q)")
    measure.add_argument("run_dir")
    measure.add_argument("what", choices=["flow"])
    measure.add_argument("--t-max", type=float, default=1.0, help="flow time to reach (lattice units)")
    measure.add_argument("--eps", type=float, default=0.01, help="RK3 step of the flow")
    measure.add_argument("--every", type=int, default=5, help="measure every this many steps")
    measure.add_argument("--configurations", type=int, default=20, help="at most this many draws, spread evenly")
    measure.set_defaults(func=_measure)
    return top


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (not the stream of the moment the
    handler was made): a caller that swaps stderr, or closes the one it swapped in, keeps
    clean logs."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging() -> None:
    log = logging.getLogger("hmc")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s hmc %(levelname)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    top = parser()
    # overrides may follow options too (hmc run c.yaml --out d key=value): argparse leaves those over
    args, extra = top.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        top.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _setup_logging()
    from hmc.config import ConfigError
    from hmc.rundir import CheckpointMismatch, DamagedFile, DiskFull, RunDirectoryBusy, StorageError

    try:
        return int(args.func(args))
    except ConfigError as err:
        return _config_error(err)
    except RunDirectoryBusy as err:
        print(f"hmc: {err}", file=sys.stderr)
        return 2
    except CheckpointMismatch as err:
        print(f"hmc: {err}", file=sys.stderr)
        return 4
    except DiskFull as err:
        print(f"hmc: a write failed: {err}. The run stopped there; its last checkpoint is intact. Free space (or "
              "raise the quota) and run the same command again: it resumes with the draws of an uninterrupted run.",
              file=sys.stderr)
        return 74
    except StorageError as err:
        print(f"hmc: a write failed: {err}. The last checkpoint is intact; give the run a writable directory "
              "(or restore this one) and run the same command again.", file=sys.stderr)
        return 74
    except DamagedFile as err:
        print(f"hmc: a file of the run directory is damaged: {err}. Restore it from a copy (a finished run's draws "
              "live only in draws.nc once its checkpoint is pruned).", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
