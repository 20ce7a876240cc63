"""Shared setup of the test suite: offline, CPU, tiny models built in code.

pytest puts this folder on `sys.path` (rootdir-relative "prepend" imports), so the helper modules next to the
tests (`_schedule_rl_two_process.py`, `_rloo_two_process.py`, `_distributed.py`) import by name; scripts that
are not packages (recipes, benchmarks) load with the `load_script` fixture.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(relative_path: str, name: str | None = None):
    """The script `ROOT/relative_path` as a fresh module, registered in `sys.modules` under `name` (dataclasses
    resolve string annotations through it)."""
    path = ROOT / relative_path
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """`load_script("recipes/train_schedule.py")` -> the module."""
    return _load_script


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
