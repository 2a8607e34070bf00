"""Fixtures of the reliability suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import copy_model


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    """A private copy of the session's tiny model."""
    return copy_model(tiny_model, tmp_path / "model")
