"""`thymos serve`: run the server, and shut it down gracefully on SIGTERM or SIGINT.

The first signal stops new runs (503), lets active runs reach a safe point within the grace
period, records the rest as interrupted, ends the streams, then lets uvicorn close and exit 0.
A second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from types import FrameType

import uvicorn

from thymos.api import (
    HEADER_BYTES_MAX,
    ConnectionLimits,
    check_storage,
    create_app,
    limited_protocol,
)
from thymos.runtime import Runtime
from thymos.settings import Settings

log = logging.getLogger("thymos.serve")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        app = self.config.app
        runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None:
            log.info(
                "shutting down: no new runs; %.1fs for active runs to reach a safe point",
                self._settings.shutdown_grace_s,
            )
            await runtime.shutdown(self._settings.shutdown_grace_s)
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Run until stopped. `SettingsError`, `PolicyError` or `StorageUnusable` (from building
    the app, or from the storage check before serving) propagate to the command, which reports
    them and exits 2."""
    app = create_app(settings)
    asyncio.run(check_storage(settings))
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        connections_max=_connections_that_fit(settings.connections_max),
        connections_per_client_max=settings.connections_per_client_max,
        message_bytes_max=settings.body_bytes_max + HEADER_BYTES_MAX,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's loggers propagate to the root's one structured handler (`configure_logging`);
        # its access log stays off: `observability.AccessLog` writes one line per request.
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=max(1, round(settings.idle_timeout_s)),
        access_log=False,
        http=limited_protocol(limits),
        ws="none",
        # The request guard checks Host and Origin; no proxy headers are trusted.
        proxy_headers=False,
        server_header=False,
    )
    server = GracefulServer(config, settings)
    server.run()


DESCRIPTORS_RESERVED = 256
"""File descriptors kept for everything but client connections: the ledger's connections, tool
subprocesses and their pipes, log files."""


def _connections_that_fit(wanted: int) -> int:
    """Raise the descriptor limit toward what `wanted` connections need, and lower `wanted` to
    what the limit allows (saying so), so the server never runs out of descriptors to accept
    with and `/health` keeps answering."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + DESCRIPTORS_RESERVED
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fits = max(1, soft - DESCRIPTORS_RESERVED)
    log.warning(
        "the process may open %d files; serving at most %d connections (not %d)",
        soft,
        fits,
        wanted,
    )
    return fits
