"""pytest collection for the micro-benchmarks: ``bench_*.py`` files are test modules here.

``make bench`` runs ``python -m pytest -q benchmarks --benchmark-only``; the
project's ``python_files`` default (``test_*.py``) would collect nothing in this
folder, so this hook collects every ``bench_*.py`` as a module (scripts among them
define no ``test_*`` functions and contribute no items).
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's own collector takes it
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
