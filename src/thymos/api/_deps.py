"""Access to the app's runtime from a request (set up in the lifespan, never at import)."""

from __future__ import annotations

from fastapi import Request

from thymos.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
