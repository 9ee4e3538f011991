"""Cognition: the provider protocol and the providers (today the deterministic mock).

**Architecture Invariant:** a provider gets an immutable context and returns text, intents and
usage. It cannot act: it has no handle on tools, the ledger or the world.
"""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx2

from ._context import (
    CHARS_PER_TOKEN,
    OUTPUT_RESERVE_TOKENS,
    WINDOW_TOKENS_MAX,
    WINDOW_TOKENS_MIN,
    fit_history,
)
from ._http import model_http_client
from ._mock import (
    SCRIPT_ELEMENT_SCHEMA,
    SCRIPT_ELEMENTS_LIMIT,
    SCRIPT_ELEMENTS_MAX,
    TURN_TOKENS_MAX,
    MockCognition,
    script_element_schema,
    validate_script,
)
from ._prices import DEFAULT_PRICES, Prices, PricesError
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
from ._providers import (
    PROVIDER_INFOS,
    PROVIDERS,
    RUNNABLE_KINDS,
    ProviderEnv,
    ProviderInfo,
    base_url_problem,
    provider_info,
    provider_variables,
)

if TYPE_CHECKING:
    from ._anthropic import AnthropicCognition
    from ._openai import OpenAICognition


def __getattr__(name: str) -> Any:
    """The vendor adapters are imported on first use: their SDKs take seconds to import, which
    every `thymos` command (and every server that runs only the mock) would pay at start."""
    if name == "AnthropicCognition":
        from ._anthropic import AnthropicCognition

        return AnthropicCognition
    if name == "OpenAICognition":
        from ._openai import OpenAICognition

        return OpenAICognition
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_provider(
    provider: str,
    *,
    model: str | None,
    script: Sequence[Mapping[str, Any]] | None,
    base_url: str | None = None,
    env: ProviderEnv | None = None,
    stream: bool = True,
    context_tokens: int | None = None,
    http_client: httpx2.AsyncClient | None = None,
) -> Cognition:
    """The cognition for one run; the caller has checked the provider is known and usable.
    A `base_url` given with the run gets the server's key only when it is the provider's own
    endpoint: a client cannot send the server's key elsewhere."""
    info = provider_info(provider)
    assert info is not None and info.kind in RUNNABLE_KINDS, provider
    if info.kind == "mock":
        return MockCognition(script)
    env = env or ProviderEnv()
    configured = env.base_url(info)
    endpoint = base_url or configured
    key = env.key(info) if endpoint == configured else None
    window = context_tokens or info.context_window
    if info.kind == "anthropic":
        from ._anthropic import AnthropicCognition

        return AnthropicCognition(
            model=model or info.default_model or "default",
            base_url=endpoint,
            api_key=key,
            window_tokens=window,
            stream=stream,
            http_client=http_client,
        )
    from ._openai import OpenAICognition

    return OpenAICognition(
        provider=provider,
        model=model or info.default_model or "default",
        base_url=endpoint,
        api_key=key,
        window_tokens=window,
        stream=stream,
    )


__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_PRICES",
    "OUTPUT_RESERVE_TOKENS",
    "PROVIDERS",
    "PROVIDER_INFOS",
    "RUNNABLE_KINDS",
    "SCRIPT_ELEMENTS_LIMIT",
    "SCRIPT_ELEMENTS_MAX",
    "SCRIPT_ELEMENT_SCHEMA",
    "TURN_TOKENS_MAX",
    "WINDOW_TOKENS_MAX",
    "WINDOW_TOKENS_MIN",
    "AnthropicCognition",
    "AssistantTurn",
    "Cognition",
    "CognitionContext",
    "CognitionEvent",
    "CognitionFailed",
    "Emit",
    "HistoryItem",
    "MockCognition",
    "Observation",
    "OpenAICognition",
    "Prices",
    "PricesError",
    "ProviderEnv",
    "ProviderInfo",
    "ToolView",
    "Turn",
    "base_url_problem",
    "create_provider",
    "fit_history",
    "model_http_client",
    "provider_info",
    "provider_variables",
    "script_element_schema",
    "validate_script",
]
