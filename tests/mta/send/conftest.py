"""The scheduler tests' instance: ``mta send`` in a temporary folder (tests/harness.py)."""

import pytest

from tests.harness import Instance


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    yield i
    i.cleanup()
