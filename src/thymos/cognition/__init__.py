"""Cognition: the provider protocol and the providers (today the deterministic mock).

**Architecture Invariant:** a provider gets an immutable context and returns text, intents and
usage. It cannot act: it has no handle on tools, the ledger or the world.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ._mock import (
    SCRIPT_ELEMENT_SCHEMA,
    SCRIPT_ELEMENTS_MAX,
    TURN_TOKENS_MAX,
    MockCognition,
    script_element_schema,
    validate_script,
)
from ._protocol import (
    AssistantTurn,
    Cognition,
    CognitionContext,
    CognitionEvent,
    CognitionFailed,
    Emit,
    HistoryItem,
    Observation,
    ToolView,
    Turn,
)

PROVIDERS = ("mock",)
"""Providers this build can run. Real vendors (anthropic, openai, presets) slot in here."""


def create_provider(
    provider: str, *, model: str | None, script: Sequence[Mapping[str, Any]] | None
) -> Cognition:
    """The cognition for one run; the caller has checked `provider` is in `PROVIDERS`."""
    assert provider in PROVIDERS, provider
    return MockCognition(script)


__all__ = [
    "PROVIDERS",
    "SCRIPT_ELEMENTS_MAX",
    "SCRIPT_ELEMENT_SCHEMA",
    "TURN_TOKENS_MAX",
    "AssistantTurn",
    "Cognition",
    "CognitionContext",
    "CognitionEvent",
    "CognitionFailed",
    "Emit",
    "HistoryItem",
    "MockCognition",
    "Observation",
    "ToolView",
    "Turn",
    "create_provider",
    "script_element_schema",
    "validate_script",
]
