import fcntl
import json
import logging
import os
import tempfile

import pytest

# One JAX compilation cache for the whole test session, shared with the worker processes
# of pytest-xdist and with every subprocess a test starts (``hmc run`` and the device
# checks inherit the environment): a program compiled once is not compiled again. Set
# before jax is imported; a cache directory given by the user wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"guarded-hmc-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# two test processes on one accelerator must not each reserve most of its memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@pytest.fixture(autouse=True)
def _quiet_jax_logs():
    logging.getLogger("jax").setLevel(logging.WARNING)
    yield


def once_per_session(tmp_path_factory, name, compute):
    """``compute(folder)`` (a JSON-able result; ``folder`` is its own, shared) once per
    test session, shared by the pytest-xdist workers: the first to take the lock
    computes, the others read."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    result = base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            folder = base / name
            folder.mkdir(exist_ok=True)
            result.write_text(json.dumps(compute(folder)))
    return json.loads(result.read_text())


# -- where the test tier's time goes ----------------------------------------------------------
# With HMC_TEST_TIMINGS=FOLDER each test process writes one JSON line per test: its wall time
# and the seconds JAX spent tracing, lowering and compiling in this process (JAX's own
# duration events), with the number of XLA compilations. scripts/test_timings.py reads them.
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
_compile_seconds = {"trace": 0.0, "lower": 0.0, "compile": 0.0, "programs": 0}


def _on_duration(event, seconds, **_):
    kind = _COMPILE_EVENTS.get(event)
    if kind is not None:
        _compile_seconds[kind] += seconds
        if kind == "compile":
            _compile_seconds["programs"] += 1


if os.environ.get("HMC_TEST_TIMINGS"):
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_on_duration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    folder = os.environ.get("HMC_TEST_TIMINGS")
    if not folder:
        yield
        return
    import time

    before = dict(_compile_seconds)
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    record = {"test": item.nodeid, "wall": wall,
              **{k: _compile_seconds[k] - before[k] for k in _compile_seconds}}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"), "a") as out:
        out.write(json.dumps(record) + "\n")


@pytest.fixture(autouse=True)
def _release_compiled_programs(request):
    """After a slow test, drop JAX's compiled programs and traces: a slow-tier worker runs
    many large programs in one process, and XLA's CPU compiler has crashed (SIGSEGV,
    SIGABRT) late in such a process. The default tier keeps them: its tests share programs."""
    yield
    if request.node.get_closest_marker("slow") is not None:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
