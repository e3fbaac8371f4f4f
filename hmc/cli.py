"""The ``hmc`` command line (a thin layer over the library).

This release has ``hmc models``; ``run``, ``check``, ``summary`` and ``plot``
arrive with the config layer.
"""

from __future__ import annotations

import argparse
import inspect
import sys


def _models(args: argparse.Namespace) -> int:
    import physics_models

    for name, factory in physics_models.REGISTRY.items():
        doc = (inspect.getdoc(factory) or "").splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for param, default in physics_models.parameters(name).items():
            print(f"    {param} = {default!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmc", description="Hamiltonian Monte Carlo with a gradient guard.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the registered physics models and their parameters").set_defaults(func=_models)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
