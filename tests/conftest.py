"""Shared fixtures. Tests run on CPU; assets come from torchformers.tools.assets (PyPI packages)."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def clean_register_env(monkeypatch):
    """No REGISTER_PATH from the outside leaks into a test."""
    monkeypatch.delenv("REGISTER_PATH", raising=False)
    yield monkeypatch
