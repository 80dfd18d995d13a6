"""Helpers shared by test modules (no side effects: conftest sets up the environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_service(name: str, problem: str | None, how: str) -> None:
    """Skip with a message that says what to start; under CI a missing service is a failure."""
    if problem is None:
        return
    message = f"{name} not reachable ({problem}). {how}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {message}")
    pytest.skip(message)
