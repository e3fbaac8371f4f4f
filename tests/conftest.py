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
