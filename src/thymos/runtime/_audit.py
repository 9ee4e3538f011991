"""Audit queries: every entry a tenant's runs recorded, across runs, in time order.

A listing pages through `(created_at, run_id, seq)` order with an opaque cursor (the last
entry's position); a count covers exactly what the listing pages through; a CSV export streams
page after page, so an export of a million entries holds one page at a time. Everything is read
from the storage's audit index (`LedgerStore.audit_entries`), never by scanning every tenant's
ledger.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from thymos.core import (
    EntryKind,
    ErrorCode,
    RegistryKind,
    ThymosError,
    is_run_id,
    rfc3339_from_us,
    us_from_rfc3339,
)
from thymos.storage import AuditQuery, AuditRow, LedgerStore

EXPORT_PAGE_ROWS = 1000
"""Entries read per query while a CSV export streams."""
CSV_COLUMNS = ("run_id", "seq", "id", "kind", "created_at", "payload")
_LATEST_US = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999Z: ledger times are compared as text, which holds for years 1970 to
9999; bounds outside are clamped (no entry lies beyond them)."""


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """The query parameters of `/audit/entries`, as given (checked by `query`)."""

    run_id: str | None = None
    kind: str | None = None
    since: str | None = None
    until: str | None = None


def _bad(parameter: str, message: str) -> ThymosError:
    return ThymosError(ErrorCode.INVALID_QUERY, message, {"parameter": parameter})


def _time(parameter: str, text: str) -> str:
    try:
        moment = us_from_rfc3339(text)
    except (ValueError, OverflowError):
        raise _bad(
            parameter, f"{parameter} must be an RFC 3339 time, like 2026-12-01T09:30:00Z"
        ) from None
    return rfc3339_from_us(min(max(moment, 0), _LATEST_US))


def query(tenant: str | None, filters: AuditFilters) -> AuditQuery:
    """The storage query for these filters; 400 `invalid_query` naming the parameter when one
    is malformed."""
    if filters.run_id is not None and not is_run_id(filters.run_id):
        raise _bad("run_id", "run_id is not a run id")
    kinds: tuple[str, ...] = ()
    if filters.kind is not None:
        kinds = tuple(dict.fromkeys(k.strip() for k in filters.kind.split(",")))
        known = {k.value for k in (*EntryKind, *RegistryKind)}
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise _bad(
                "kind", f"kind {unknown[0]!r} is not an entry kind ({', '.join(sorted(known))})"
            )
    since = None if filters.since is None else _time("from", filters.since)
    until = None if filters.until is None else _time("to", filters.until)
    if since is not None and until is not None and until < since:
        raise _bad("to", "to is before from")
    return AuditQuery(tenant, filters.run_id, kinds, since, until)


def encode_cursor(row: AuditRow) -> str:
    raw = orjson.dumps([row.created_at, row.run_id, row.seq])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, run_id, seq = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ThymosError(
            ErrorCode.INVALID_CURSOR, "cursor is not one this server issued"
        ) from None
    if not (
        isinstance(created_at, str)
        and isinstance(run_id, str)
        and is_run_id(run_id)
        and isinstance(seq, int)
        and 0 <= seq < 2**63
    ):
        raise ThymosError(ErrorCode.INVALID_CURSOR, "cursor is not one this server issued")
    return created_at, run_id, seq


def entry_view(row: AuditRow) -> dict[str, Any]:
    """An entry as the audit listing shows it (its body as `payload`)."""
    return {
        "run_id": row.run_id,
        "seq": row.seq,
        "id": row.id,
        "kind": row.kind,
        "created_at": row.created_at,
        "payload": orjson.loads(row.raw)["body"],
    }


class Audit:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    async def _scoped(self, tenant: str | None, filters: AuditFilters) -> AuditQuery | None:
        """The storage query, or None when it can select nothing. With a run named, the run's
        own rows are read (its primary key's range) once the run is known to be the caller's:
        another tenant's run selects nothing, exactly like a run that does not exist."""
        selected = query(tenant, filters)
        if selected.run_id is None or tenant is None:
            return selected
        record = await self._store.get_run(selected.run_id)
        if record is None or record.tenant != tenant:
            return None
        return replace(selected, tenant=None)

    async def page(
        self, tenant: str | None, filters: AuditFilters, *, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        """One page of entries and the cursor of the next (None on the last page)."""
        after = None if cursor is None else decode_cursor(cursor)
        selected = await self._scoped(tenant, filters)
        if selected is None:
            return {"entries": [], "next_cursor": None}
        rows = await self._store.audit_entries(replace(selected, after=after), limit=limit + 1)
        shown = rows[:limit]
        next_cursor = encode_cursor(shown[-1]) if len(rows) > limit else None
        return {"entries": [entry_view(row) for row in shown], "next_cursor": next_cursor}

    async def count(self, tenant: str | None, filters: AuditFilters) -> int:
        selected = await self._scoped(tenant, filters)
        return 0 if selected is None else await self._store.audit_count(selected)

    def check(self, tenant: str | None, filters: AuditFilters, cursor: str | None) -> None:
        """Raise the 400 a bad filter or cursor gets, before a streamed answer starts."""
        query(tenant, filters)
        if cursor is not None:
            decode_cursor(cursor)

    async def csv(
        self, tenant: str | None, filters: AuditFilters, *, cursor: str | None, limit: int | None
    ) -> AsyncIterator[bytes]:
        """The header row, then one row per entry (the payload as JSON text), a page at a time:
        at most `limit` rows when given, else every entry the filters cover."""
        after = None if cursor is None else decode_cursor(cursor)
        scoped = await self._scoped(tenant, filters)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        if scoped is None:
            yield buffer.getvalue().encode()
            return
        selected = replace(scoped, after=after)
        left = limit
        while True:
            wanted = EXPORT_PAGE_ROWS if left is None else min(left, EXPORT_PAGE_ROWS)
            rows = await self._store.audit_entries(selected, limit=wanted) if wanted else []
            for row in rows:
                body = orjson.loads(row.raw)["body"]
                payload = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
                writer.writerow((row.run_id, row.seq, row.id, row.kind, row.created_at, payload))
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            if left is not None:
                left -= len(rows)
            if len(rows) < wanted or not rows:
                return
            last = rows[-1]
            selected = replace(selected, after=(last.created_at, last.run_id, last.seq))
