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
