"""Test configuration shared by every tier.

Hypothesis runs more examples in CI (`CI=true`) than locally; both are deterministic per seed.
Async tests use anyio's pytest plugin (`@pytest.mark.anyio`) on asyncio.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
