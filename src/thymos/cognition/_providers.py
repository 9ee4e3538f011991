"""The one list of cognition providers: settings, `/health`, `/providers`, the CLI and run
creation all read it.

Each provider names the environment variables of its key and endpoint (the vendors' own), a
default endpoint and a default model. Hosted providers are usable when their key is set; local
OpenAI-compatible servers (ollama, vllm, llama.cpp, LM Studio, LocalAI) need no key. The mock
is always usable. Keys are read once into `ProviderEnv` and never shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    kind: str
    """`mock`, `anthropic` or `openai` (the wire format)."""
    default_model: str | None
    base_url: str | None
    key_variable: str | None
    base_url_variable: str | None
    key_required: bool = True
    context_window: int = 128_000
    """Tokens the default model reads; a run may say otherwise (`cognition.context_tokens`)."""

    @property
    def live(self) -> bool:
        return self.kind != "mock"


LOCAL_CONTEXT_WINDOW = 8192
"""Local servers often load models with small windows; a run that knows better says so."""


def _preset(
    name: str, base_url: str, model: str, *, local: bool = False, window: int = 128_000
) -> ProviderInfo:
    upper = name.upper()
    return ProviderInfo(
        name,
        "openai",
        model,
        base_url,
        f"{upper}_API_KEY",
        f"{upper}_BASE_URL",
        key_required=not local,
        context_window=LOCAL_CONTEXT_WINDOW if local else window,
    )


PROVIDER_INFOS: tuple[ProviderInfo, ...] = (
    ProviderInfo("mock", "mock", None, None, None, None, key_required=False),
    ProviderInfo(
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        context_window=200_000,
    ),
    ProviderInfo(
        "openai",
        "openai",
        "gpt-4o-mini",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ),
    _preset("ollama", "http://localhost:11434/v1", "llama3.1", local=True),
    _preset("vllm", "http://localhost:8000/v1", "meta-llama/Llama-3.1-8B-Instruct", local=True),
    _preset("llamacpp", "http://localhost:8080/v1", "default", local=True),
    _preset("lmstudio", "http://localhost:1234/v1", "local-model", local=True),
    _preset("localai", "http://localhost:8080/v1", "gpt-4", local=True),
    _preset("openrouter", "https://openrouter.ai/api/v1", "openai/gpt-4o-mini"),
    _preset("groq", "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile"),
    _preset("together", "https://api.together.xyz/v1", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    _preset("deepseek", "https://api.deepseek.com/v1", "deepseek-chat", window=64_000),
    _preset("mistral", "https://api.mistral.ai/v1", "mistral-large-latest"),
    _preset(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        "accounts/fireworks/models/llama-v3p1-70b-instruct",
    ),
    _preset("xai", "https://api.x.ai/v1", "grok-2-latest"),
    _preset(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "gemini-2.0-flash",
        window=1_000_000,
    ),
)
PROVIDERS = tuple(p.name for p in PROVIDER_INFOS)
RUNNABLE_KINDS = frozenset({"mock", "openai", "anthropic"})
"""Wire formats this build speaks."""
_BY_NAME = {p.name: p for p in PROVIDER_INFOS}


def provider_info(name: str) -> ProviderInfo | None:
    return _BY_NAME.get(name)


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a model endpoint (None when it can): an absolute http(s) URL with a
    host, no credentials, query, fragment, spaces or control characters."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url) or not url.isprintable():
        return "cognition.base_url must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        return f"cognition.base_url is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "cognition.base_url must be an http or https URL with a host"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "cognition.base_url must not carry credentials, a query or a fragment"
    return None


def provider_variables() -> frozenset[str]:
    """Every environment variable a provider reads."""
    names: set[str] = set()
    for info in PROVIDER_INFOS:
        names.update(v for v in (info.key_variable, info.base_url_variable) if v)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class ProviderEnv:
    """The providers' variables as the server found them (keys never shown)."""

    values: Mapping[str, str] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(environ: Mapping[str, str]) -> ProviderEnv:
        wanted = provider_variables()
        return ProviderEnv({k: v for k, v in environ.items() if k in wanted and v.strip()})

    def key(self, info: ProviderInfo) -> str | None:
        return self.values.get(info.key_variable) if info.key_variable else None

    def base_url(self, info: ProviderInfo, override: str | None = None) -> str | None:
        if override:
            return override
        if info.base_url_variable and info.base_url_variable in self.values:
            return self.values[info.base_url_variable]
        return info.base_url

    def usable(self, info: ProviderInfo) -> bool:
        return not info.key_required or self.key(info) is not None

    def default_provider(self, configured: str | None) -> str:
        """`THYMOS_DEFAULT_PROVIDER`, else the first hosted provider whose key is set, else
        the mock."""
        if configured:
            return configured
        for info in PROVIDER_INFOS:
            runnable = info.kind in RUNNABLE_KINDS
            if runnable and info.live and info.key_required and self.key(info) is not None:
                return info.name
        return "mock"

    def listing(self) -> list[dict[str, Any]]:
        """What `GET /providers` and `thymos providers` show: never a key."""
        return [
            {
                "name": info.name,
                "kind": info.kind,
                "live": info.live,
                "default_model": info.default_model,
                "context_window": info.context_window,
                "base_url": self.base_url(info),
                "key_variable": info.key_variable,
                "key_required": info.key_required,
                "available": info.kind in RUNNABLE_KINDS,
                "usable": info.kind in RUNNABLE_KINDS and self.usable(info),
            }
            for info in PROVIDER_INFOS
        ]
