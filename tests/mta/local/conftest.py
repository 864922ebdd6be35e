"""Fixtures for local delivery tests: a real alias dir, stored messages, an injector."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from local_helpers import DOMAIN, MESSAGE, Recorder
from mta.local import LocalJob


@pytest.fixture
def alias_dir(tmp_path: Path) -> Path:
    path = tmp_path / "alias"
    path.mkdir()
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def message(tmp_path: Path) -> Path:
    path = tmp_path / "mess"
    path.write_bytes(MESSAGE)
    return path


@pytest.fixture
def injector() -> Recorder:
    return Recorder()


@pytest.fixture
def make_job(alias_dir: Path, message: Path, injector: Recorder):
    def make(local: str, sender: str = "bob@remote.test", **kw) -> LocalJob:
        kw.setdefault("message_path", message)
        return LocalJob(
            alias_dir=alias_dir,
            sender=sender,
            recipient=f"{local}@{DOMAIN}",
            local=local,
            domain=DOMAIN,
            inject=injector,
            **kw,
        )

    return make
