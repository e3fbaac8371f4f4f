import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_jax_logs():
    logging.getLogger("jax").setLevel(logging.WARNING)
    yield
