"""This node's part among several server processes sharing one database.

A run has exactly one writer: the node holding its lease (`Leases`). A node claims a run's lease
before it creates, resumes or recovers the run, renews every lease it holds on a heartbeat
(every third of the lease's time to live), and gives a run's lease up when its actor ends. A node
that stops renewing (it died, or lost the database for longer than the lease lasts) loses its
runs: the next heartbeat of another node claims them (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
two nodes never take the same run) and recovers each under the crash-recovery rules. A node that
finds a run it was driving claimed by another stops its actor without writing: the new owner
writes from the stored head, and storage refuses any late write of the old one (`SeqConflict`).

Any node serves any run. Control actions on a run another node drives (votes, cancels) go to its
owner through the `Mailbox` and wait for its reply; observers of such a run re-read the ledger on
each `entries` notice (`LISTEN/NOTIFY` on PostgreSQL) and on their keep-alive, so a lost notice
only delays them.

On storage that is not shared (SQLite: one process owns the file) every run is this node's, and
nothing here touches storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from thymos.core import ErrorCode, ThymosError, uuid7
from thymos.storage import ClusterStore, Notice, StorageError

from ._clock import Clock

log = logging.getLogger("thymos.cluster")

FORWARD_TIMEOUT_S = 30.0
"""How long a control action waits for the run's owner to answer before 503 `not_ready`."""
TAKEOVER_BATCH = 64
"""Runs of stopped nodes claimed per heartbeat (the rest on the next ones)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str = "local"
    lease_ttl_s: float = 15.0
    shared: bool = False
    """True when other processes may use the same storage (PostgreSQL)."""


Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Carries out a control action forwarded to this node: (run id, action) -> result."""


class Cluster:
    def __init__(self, store: ClusterStore, clock: Clock, config: ClusterConfig) -> None:
        self._store = store
        self._clock = clock
        self.config = config
        self.node_id = config.node_id
        self.shared = config.shared
        self._ttl_us = int(config.lease_ttl_s * 1_000_000)
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._replies: dict[str, asyncio.Event] = {}
        self._inbox = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(
        self,
        *,
        handle: Handler,
        held: Callable[[], set[str]],
        lost: Callable[[str], None],
        take_over: Callable[[str], Awaitable[None]],
    ) -> None:
        """Listen for notices; on shared storage also run the heartbeat (renewing leases,
        dropping runs another node took, taking over runs of stopped nodes) and the inbox of
        forwarded control actions."""
        self._store.add_listener(self._on_notice)
        if not self.shared:
            return
        self._tasks = [
            asyncio.create_task(self._heartbeat(held, lost, take_over), name="thymos-heartbeat"),
            asyncio.create_task(self._serve_inbox(handle), name="thymos-inbox"),
        ]

    async def stop(self) -> None:
        self._store.remove_listener(self._on_notice)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- leases ------------------------------------------------------------------------------

    async def claim(self, run_id: str) -> bool:
        """Take the run's lease for this node (always this node's on unshared storage)."""
        if not self.shared:
            return True
        return await self._store.claim_lease(
            run_id, self.node_id, now_us=self._clock.now_us(), ttl_us=self._ttl_us
        )

    async def release(self, run_id: str) -> None:
        if not self.shared:
            return
        try:
            await self._store.release_lease(run_id, self.node_id)
        except StorageError as exc:
            # It expires on its own; another node then finds the run ended and lets it go.
            log.warning("could not release the lease of run %s: %s", run_id, exc.message)

    async def owner(self, run_id: str) -> str | None:
        """The node driving the run, when it is another one (None: this node, or nobody)."""
        if not self.shared:
            return None
        owner = await self._store.lease_owner(run_id, now_us=self._clock.now_us())
        return None if owner == self.node_id else owner

    async def _heartbeat(
        self,
        held: Callable[[], set[str]],
        lost: Callable[[str], None],
        take_over: Callable[[str], Awaitable[None]],
    ) -> None:
        interval = self.config.lease_ttl_s / 3
        while True:
            try:
                await self._beat(held, lost, take_over)
            except StorageError as exc:
                log.warning("heartbeat: the database does not answer: %s", exc.message)
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(interval)

    async def _beat(
        self,
        held: Callable[[], set[str]],
        lost: Callable[[str], None],
        take_over: Callable[[str], Awaitable[None]],
    ) -> None:
        now = self._clock.now_us()
        mine = await self._store.renew_leases(self.node_id, now_us=now, ttl_us=self._ttl_us)
        for run_id in held() - mine:
            # Claimed by another node while this one could not renew: it writes the run now.
            log.warning("run %s was taken over by another node; this node stops driving it", run_id)
            lost(run_id)
        claimed = await self._store.claim_expired_leases(
            self.node_id, now_us=self._clock.now_us(), ttl_us=self._ttl_us, limit=TAKEOVER_BATCH
        )
        for run_id in claimed:
            try:
                await take_over(run_id)
            except Exception:
                log.exception("run %s could not be taken over", run_id)

    # -- notices -----------------------------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        if notice.topic == "entries":
            for event in self._watchers.get(notice.key, ()):
                event.set()
        elif notice.topic == "messages" and notice.key == self.node_id:
            self._inbox.set()
        elif notice.topic == "replies":
            waiting = self._replies.get(notice.key)
            if waiting is not None:
                waiting.set()

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Any:
        """An event set on every new-entry notice of the run while the block runs (register
        before reading, so nothing stored after the read is missed)."""
        event = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[run_id]

    # -- control actions carried to a run's owner --------------------------------------------

    async def forward(self, owner: str, run_id: str, action: dict[str, Any]) -> dict[str, Any]:
        """Send a control action to the node driving the run and return its result (or raise
        its error); 503 `not_ready` when it does not answer in time."""
        message_id = uuid7(self._clock.now_us() // 1000, os.urandom(10))
        arrived = asyncio.Event()
        self._replies[message_id] = arrived
        try:
            await self._store.send_message(
                message_id, run_id, owner, orjson.dumps(action), now_us=self._clock.now_us()
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FORWARD_TIMEOUT_S
            while True:
                reply = await self._store.message_reply(message_id)
                if reply is not None:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ThymosError(
                        ErrorCode.NOT_READY,
                        f"node {owner}, which drives this run, did not answer; retry shortly",
                        {"retry_after_s": 1},
                    )
                # A lost notice costs at most a second.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), min(1.0, remaining))
                arrived.clear()
        finally:
            self._replies.pop(message_id, None)
        with contextlib.suppress(StorageError):
            await self._store.delete_message(message_id)
        answer = orjson.loads(reply)
        if "error" in answer:
            error = answer["error"]
            raise ThymosError(ErrorCode(error["code"]), error["message"], error.get("details"))
        result: dict[str, Any] = answer["result"]
        return result

    async def _serve_inbox(self, handle: Handler) -> None:
        interval = self.config.lease_ttl_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox.wait(), interval)
            self._inbox.clear()
            try:
                messages = await self._store.take_messages(self.node_id)
            except StorageError as exc:
                log.warning("could not read forwarded actions: %s", exc.message)
                continue
            for message in messages:
                task = asyncio.create_task(
                    self._answer(handle, message.message_id, message.run_id, message.body)
                )
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

    async def _answer(self, handle: Handler, message_id: str, run_id: str, body: bytes) -> None:
        try:
            answer: dict[str, Any] = {"result": await handle(run_id, orjson.loads(body))}
        except ThymosError as exc:
            answer = {
                "error": {"code": exc.code.value, "message": exc.message, "details": exc.details}
            }
        except Exception:
            log.exception("a forwarded action on run %s failed", run_id)
            answer = {"error": {"code": ErrorCode.INTERNAL.value, "message": "internal error"}}
        try:
            await self._store.reply_message(message_id, orjson.dumps(answer))
        except StorageError as exc:
            log.warning("could not answer a forwarded action on run %s: %s", run_id, exc.message)
