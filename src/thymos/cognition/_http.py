"""The HTTP client model calls share."""

from __future__ import annotations

import httpx2

REQUEST_TIMEOUT_S = 120.0
"""One model request, streamed or whole, from start to last byte."""


def model_http_client() -> httpx2.AsyncClient:
    """The HTTP client every model call of a server shares (its connections are pooled; the
    runtime closes it at shutdown). Each call still has the SDK's own timeout."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(REQUEST_TIMEOUT_S, connect=10.0),
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
    )
