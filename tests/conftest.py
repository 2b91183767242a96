"""Shared fixtures."""

import os
import tempfile

import pytest

from helpers import HETERO_SIZES, make_federated_data

# The suite (and the runs it starts as subprocesses) never touches the user's cache.
os.environ["FEDPROX_JAX_CACHE"] = tempfile.mkdtemp(prefix="fedprox_jax_test_cache_")


@pytest.fixture(scope="session")
def hetero_data():
  return make_federated_data(HETERO_SIZES)
