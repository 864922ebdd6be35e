"""Fixtures for the queue tests: a fresh instance root with an initialized queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.queue import open_queue


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "var"
    r.mkdir()
    open_queue(r).close()
    return r
