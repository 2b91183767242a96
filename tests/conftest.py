"""Shared fixtures."""

import pytest

from helpers import HETERO_SIZES, make_federated_data


@pytest.fixture(scope="session")
def hetero_data():
  return make_federated_data(HETERO_SIZES)
