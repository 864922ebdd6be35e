"""Fixtures for ezlist tests: a fresh instance root with one list."""

from __future__ import annotations

from pathlib import Path

import pytest

from ezlist.listdir import ListConfig, ListOptions, make_list


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def cfg(root: Path) -> ListConfig:
    return make_list(root, "sos@lists.local.test", ListOptions())
