"""The house reads one way: no module imports against the data flow

    potential -> guard (preflight) -> kernels -> driver (settings, initial, chunks,
    sampler) -> run directory, runner, plots

A later module may import an earlier one; the run directory reads data (the
checkpoint schema), never the driver."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "hmc"

# module -> modules of the package it must not import (directly)
FORBIDDEN = {
    "potential": {"guard", "kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/events": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/preflight": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/reach": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/attribution": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/replay": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "guard/monitor": {"kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "kernels/base": {"guard", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "kernels/hmc": {"guard", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "kernels/ghmc": {"guard", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "checkpoint": {"guard", "kernels", "sampler", "chunks", "initial", "settings", "runner", "rundir"},
    "chunks": {"sampler", "initial", "runner", "rundir"},
    "initial": {"sampler", "chunks", "runner", "rundir"},
    "rundir": {"sampler", "chunks", "initial", "settings", "kernels", "runner"},
}


def imported(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hmc"):
            parts = node.module.split(".")[1:]
            names.add(parts[0] if parts else node.names[0].name)
            if not parts:
                names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hmc."))
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_no_import_against_the_data_flow(module):
    assert not imported(module) & FORBIDDEN[module]


def test_no_function_in_the_package_is_long_and_no_nonlocal():
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Nonlocal), f"{path.name}:{node.lineno} nonlocal"
            if isinstance(node, ast.FunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                length = body[-1].end_lineno - body[0].lineno + 1
                assert length <= 60, f"{path.name}: {node.name} has {length} lines"
