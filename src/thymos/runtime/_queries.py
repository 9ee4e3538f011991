"""The runtime's read job: what the routes show of runs (records, execution sessions, worlds,
replay reports, exports) and the server's health, live or from storage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from thymos import __version__
from thymos.cognition import provider_info
from thymos.core import (
    CorruptEntry,
    Entry,
    ErrorCode,
    RunStatus,
    RunSummary,
    ThymosError,
    parse_envelope,
)

from ._base import RuntimeBase, _Subscription
from ._branch import replay_through_source
from ._limits import REPLAY_PAGE_ROWS
from ._replay import referenced_documents
from ._views import execution_view, run_view


class Queries(RuntimeBase):
    """What routes read of runs, live or stored."""

    async def get_run(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        return run_view(await self.visible_record(run_id, tenant))

    async def list_runs(
        self,
        *,
        tenant: str | None,
        status: str | None,
        before: str | None,
        limit: int,
        parent_run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        records = await self.store.list_runs(
            tenant=tenant, status=status, before=before, limit=limit, parent_run_id=parent_run_id
        )
        return [run_view(self._live(record)) for record in records]

    async def execution(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        record = await self.visible_record(run_id, tenant)
        active = self._active.get(run_id)
        if active is not None:
            return active.snapshot.value
        summary = RunSummary.from_dict(record.summary)
        # Not active here and not finished: driven by another node (on shared storage), else
        # parked at shutdown (or not loadable) and resumed on start.
        if summary.status.terminal:
            phase = "finished"
        elif summary.status is RunStatus.WAITING_APPROVAL:
            phase = "parked"  # waiting for votes with no actor: the next vote wakes it
        else:
            phase = "elsewhere" if self.cluster.shared else "parked"
        return execution_view(record, summary, phase=phase, active_tool=None, step=None)

    def subscribe(self, run_id: str) -> _Subscription:
        """Count a stream subscriber against the per-run limit (release with `unsubscribe`)."""
        active = self._active.get(run_id)
        if active is not None:
            bound = self.config.subscribers_per_run_max
            if active.subscribers >= bound:
                raise ThymosError(
                    ErrorCode.CAPACITY_EXHAUSTED,
                    f"run {run_id} already has {bound} stream subscribers "
                    "(THYMOS_SUBSCRIBERS_PER_RUN_MAX)",
                    {"retry_after_s": 5},
                )
            active.subscribers += 1
        self.observer.subscribed()
        return _Subscription(active)

    def unsubscribe(self, subscription: _Subscription) -> None:
        if subscription.released:
            return
        subscription.released = True
        self.observer.unsubscribed()
        if subscription.active is not None:
            subscription.active.subscribers -= 1

    async def world(self, run_id: str, tenant: str | None, at_seq: int | None) -> dict[str, Any]:
        """The world after entry `seq` (default: the head). For an active run the head is the
        last durable entry: what `/events` and `/ledger` can show, never an entry still being
        written."""
        record = await self.visible_record(run_id, tenant)
        active = self._active.get(run_id)
        trajectory = active.actor.trajectory if active else None
        head = trajectory.durable_seq if trajectory else int(record.summary["head_seq"])
        seq = head if at_seq is None else at_seq
        if seq < 0 or seq > head:
            raise ThymosError(
                ErrorCode.SEQ_OUT_OF_RANGE,
                f"seq must be between 0 and the head, {head}",
                {"head": head},
            )
        if trajectory is not None and seq == trajectory.head_seq:
            world = trajectory.state.world  # everything is durable: the live projection is exact
        else:
            world = await self.world_at(run_id, seq)
        return {
            "run_id": run_id,
            "seq": seq,
            "world_hash": world.hash,
            "resources": [r.as_dict() for r in world.resources()],
        }

    async def replay(
        self,
        run_id: str,
        tenant: str | None,
        *,
        require_compiler: str | None,
        require_policy: str | None,
    ) -> dict[str, Any]:
        await self.visible_record(run_id, tenant)
        # The stored row, not the live summary: replay reads only durable entries, and the row's
        # head (written at every status change) never runs ahead of them.
        record = await self.store.get_run(run_id)
        assert record is not None
        started = time.perf_counter()
        report = await replay_through_source(
            self.store,
            record,
            root=self.root.public_key,
            require_compiler=require_compiler,
            require_policy=require_policy,
        )
        self.observer.replayed(int(report["entries"]), time.perf_counter() - started)
        # The projection (live, or from checkpoints) at the very seq the replay reached.
        live_hash: str | None = None
        if report["head_seq"] >= 0:
            active = self._active.get(run_id)
            try:
                if active is not None and report["head_seq"] == active.actor.trajectory.head_seq:
                    live_hash = active.actor.trajectory.state.world.hash
                else:
                    live_hash = (await self.world_at(run_id, report["head_seq"])).hash
            except ThymosError:
                live_hash = None
        report["live_world_hash"] = live_hash
        report["world_matches"] = live_hash is not None and live_hash == report["world_hash"]
        return report

    async def export(
        self, run_id: str, tenant: str | None, after_seq: int, *, proof: bool = False
    ) -> AsyncIterator[bytes]:
        """The run's stored envelopes as JSON Lines, verbatim, in seq order. With `proof`, each
        document a decision names comes (once) before the first entry naming it, and each
        signed head right after the entry it signs (the format is in docs/LEDGER.md)."""
        await self.visible_record(run_id, tenant)
        if proof:
            return self._export_proof(run_id, after_seq)
        return self._export(run_id, after_seq)

    async def _export(self, run_id: str, after_seq: int) -> AsyncIterator[bytes]:
        while True:
            rows = await self.store.read_rows(run_id, after_seq=after_seq, limit=REPLAY_PAGE_ROWS)
            if not rows:
                return
            yield b"".join(row.raw + b"\n" for row in rows)
            after_seq = rows[-1].seq

    async def _export_proof(self, run_id: str, after_seq: int) -> AsyncIterator[bytes]:
        sent: set[str] = set()
        while True:
            rows = await self.store.read_rows(run_id, after_seq=after_seq, limit=REPLAY_PAGE_ROWS)
            if not rows:
                return
            # Read after the rows: a head is stored with the entry it signs, so all are visible.
            heads = {
                h.seq: h
                for h in await self.store.signed_heads(
                    run_id, after_seq=after_seq, upto_seq=rows[-1].seq
                )
            }
            wanted: list[str] = []
            entries: list[Entry | None] = []
            for row in rows:
                try:
                    entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq, entry_id=row.id)
                except CorruptEntry:
                    entry = None  # exported as stored; the verifier names it
                entries.append(entry)
                if entry is not None:
                    wanted.extend(h for h in referenced_documents(entry) if h not in sent)
            found = await self.store.documents(wanted) if wanted else {}
            out: list[bytes] = []
            for row, entry in zip(rows, entries, strict=True):
                for ident in referenced_documents(entry) if entry is not None else ():
                    document = found.get(ident)
                    if ident in sent or document is None:
                        continue
                    sent.add(ident)
                    out.append(
                        b'{"document":{"body":%s,"hash":"%s","kind":"%s"}}\n'
                        % (document.body, ident.encode(), document.kind.encode())
                    )
                out.append(row.raw + b"\n")
                head = heads.pop(row.seq, None)
                if head is not None:
                    out.append(orjson.dumps({"signed_head": head.as_record()}) + b"\n")
            yield b"".join(out)
            after_seq = rows[-1].seq

    async def health(self) -> dict[str, Any]:
        """`ledger` names the backend while it answers, else says `unavailable`; `node` is this
        server's name among those sharing a database (None on unshared storage)."""
        live = await self.store.ping()
        return {
            "status": "ok",
            "mode": self.config.mode,
            "default_provider": self.config.default_provider,
            "cognition_live": bool(
                (info := provider_info(self.config.default_provider)) and info.live
            ),
            "ledger": self.store.backend if live else "unavailable",
            "node": self.cluster.node_id if self.cluster.shared else None,
            "sandbox": None if self.sandbox.support is None else self.sandbox.support.as_dict(),
            "mcp": {} if self.mcp is None else self.mcp.state(),
            "shutdown": not self.accepting,
            "version": __version__,
        }

    async def ready(self) -> bool:
        return self.accepting and await self.store.ping()
