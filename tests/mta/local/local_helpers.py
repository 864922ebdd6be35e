"""Helpers shared by the local delivery tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "local.test"
MESSAGE = b"From: bob@remote.test\nSubject: hello\n\nline one\nFrom the start\n>From quoted\n"


@dataclass
class Recorder:
    """An inject callable that remembers every call (a fake of the queue's injector)."""

    calls: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    fail: Exception | None = None

    def __call__(self, sender, recipients, message):
        if self.fail is not None:
            raise self.fail
        self.calls.append((sender, tuple(recipients), bytes(message)))


def write_qmail(alias_dir: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = alias_dir / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def make_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path
