"""Shared test fixtures: where the team's shared data lives, and a few audio helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ``../shared`` next to the checkout: notes and fixtures, read at run time, never copied.
SHARED = (REPO / ".." / "shared").resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's shared folder; its absence is a broken checkout, not a skip."""
    assert SHARED.is_dir(), f"expected the shared folder at {SHARED}"
    return SHARED
