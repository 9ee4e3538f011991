"""Chain verification and the usage fold in one lean loop over stored rows.

`ChainFold.feed` takes rows as tuples `(seq, id, raw)`. A row that is plainly sound (the expected
seq, its bytes hash to its id, `decode_envelope` takes it, it names the entry before it) costs a
BLAKE3, a msgspec decode of the envelope with the body left raw, and a few comparisons; only the
bodies the usage fold reads are decoded (a turn's usage, a commit's delegated usage, a run's
start, end and resumption). Any other row goes through `ChainVerifier.check`, so every failure is
found and named exactly as chain verification names it.

The usage fold (`UsageFold`) is the part of the run summary that needs no pending approvals:
the counters, the usage a writ's budget is checked against, the terminal status and the head.
`tests/unit/test_chainfold.py` holds it equal to `RunSummary`'s fold on the same ledgers.

What this loop does not do, by design: decode bodies the fold does not read. Their syntax is
validated (msgspec checks the whole document) and their bytes UTF-8, so the one thing left
unchecked in them is a number out of a double's range (`1e400`), which `parse_envelope` refuses
as `malformed_entry`. Replay (`runtime._replay`) decodes every body and so refuses it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3
from msgspec import DecodeError

from ._canonical import CANONICAL_VERSION
from ._ledger import (
    DECODE_ENVELOPE,
    ChainFailure,
    ChainVerifier,
    CorruptEntry,
    EntryKind,
    Envelope,
    StoredRow,
    is_utf8,
    parse_body,
)
from ._model import RunStatus, Usage
from ._summary import delegated_usage

USAGE_COUNTS = frozenset(
    {
        EntryKind.RUN_STARTED,
        EntryKind.TURN,
        EntryKind.INTENT,
        EntryKind.REJECTION,
        EntryKind.COMMIT,
        EntryKind.TOOL_FAILURE,
        EntryKind.RUN_ENDED,
        EntryKind.RESUMPTION,
    }
)
"""The kinds `UsageFold` accounts for."""
USAGE_IGNORES = frozenset(
    {
        EntryKind.SUSPENSION,
        EntryKind.APPROVAL,
        EntryKind.EXECUTION_STARTED,
        EntryKind.CANCELLATION,
        EntryKind.DELEGATION,
    }
)
"""The kinds it has nothing to count for (pending approvals are the run summary's). The two sets
name every kind (`tests/unit/test_envelope_decoder.py`), as a `KindTable` would."""

_DELEGATED = b'"delegated_usage"'
_ESCAPE = b"\\u"


@dataclass(slots=True)
class UsageFold:
    """Counters, usage, terminal status and head of a run, folded in seq order."""

    status: RunStatus = RunStatus.RUNNING
    terminated_by: str | None = None
    steps_executed: int = 0
    intents_submitted: int = 0
    commits: int = 0
    rejections: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    usd_millicents: int = 0
    max_steps: int | None = None
    head_seq: int = -1
    head_id: str | None = None

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.tool_calls, self.usd_millicents)

    def fold(
        self, seq: int, ident: str, kind: str, body: Envelope | Mapping[str, Any], raw: bytes
    ) -> None:
        """Account for one entry (`raw`: its stored bytes), given its envelope (whose body is
        decoded only if this fold reads it) or its body already decoded. `CorruptEntry` when a
        body it reads does not decode."""
        self.head_seq, self.head_id = seq, ident
        if kind == EntryKind.INTENT:
            self.intents_submitted += 1
        elif kind == EntryKind.COMMIT:
            self.commits += 1
            self.tool_calls += 1
            # The key can only be spelled literally or with \u escapes; either way its bytes show.
            if not isinstance(body, Envelope) or _DELEGATED in raw or _ESCAPE in raw:
                delegated = delegated_usage(_decoded(body, seq))
                if delegated is not None:
                    self._add(delegated)
        elif kind == EntryKind.TOOL_FAILURE:
            self.failures += 1
            self.tool_calls += 1
        elif kind == EntryKind.REJECTION:
            self.rejections += 1
        elif kind == EntryKind.TURN:
            self.steps_executed += 1
            usage = _decoded(body, seq).get("usage") or {}
            self.input_tokens += int(usage.get("input_tokens", 0))
            self.output_tokens += int(usage.get("output_tokens", 0))
            self.usd_millicents += int(usage.get("usd_millicents", 0))
        elif kind == EntryKind.RUN_STARTED:
            self.max_steps = _decoded(body, seq).get("max_steps")
        elif kind == EntryKind.RUN_ENDED:
            decoded = _decoded(body, seq)
            self.status = RunStatus(decoded["status"])
            self.terminated_by = decoded.get("terminated_by")
        elif kind == EntryKind.RESUMPTION:
            decoded = _decoded(body, seq)
            self.status = RunStatus.RUNNING
            self.terminated_by = None
            self.max_steps = decoded.get("max_steps", self.max_steps)
        # suspension, approval, execution_started, cancellation, delegation: nothing counted.

    def _add(self, usage: Usage) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.tool_calls += usage.tool_calls
        self.usd_millicents += usage.usd_millicents

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "terminated_by": self.terminated_by,
            "steps_executed": self.steps_executed,
            "intents_submitted": self.intents_submitted,
            "commits": self.commits,
            "rejections": self.rejections,
            "failures": self.failures,
            "usage": self.usage.as_dict(),
            "max_steps": self.max_steps,
            "head_seq": self.head_seq,
            "head_id": self.head_id,
        }


def _decoded(body: Envelope | Mapping[str, Any], seq: int) -> Mapping[str, Any]:
    return parse_body(body, seq) if isinstance(body, Envelope) else body


@dataclass(slots=True)
class ChainFold:
    """Verifies a run's chain and folds its usage, page by page, in constant memory."""

    run_id: str
    verifier: ChainVerifier = field(init=False)
    usage: UsageFold = field(default_factory=UsageFold)

    def __post_init__(self) -> None:
        self.verifier = ChainVerifier(self.run_id)

    def feed(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        verifier, usage, run_id = self.verifier, self.usage, self.run_id
        hasher, decode, version = blake3.blake3, DECODE_ENVELOPE, CANONICAL_VERSION
        intent, commit = EntryKind.INTENT.value, EntryKind.COMMIT.value
        for row in rows:
            seq, ident, raw = row
            previous = verifier.previous_id
            # The fast path takes only what `decode_envelope` takes (the same checks, inlined; a
            # parent equal to the previous id, which is a BLAKE3 hex, is a well-formed parent).
            try:
                envelope = (
                    decode(raw)
                    if seq == verifier.expected_seq and hasher(raw).hexdigest() == ident
                    else None
                )
            except (DecodeError, RecursionError):
                envelope = None
            if (
                envelope is None
                or envelope.parent != previous
                or envelope.seq != seq
                or envelope.run != run_id
                or envelope.v != version
                or type(envelope.kind) is not str
                or type(envelope.time) is not str
                or memoryview(envelope.body)[0] != 0x7B
                or not (raw.isascii() or is_utf8(raw))
            ):
                # Anything not plainly sound: chain verification finds and names it.
                entry = verifier.check(StoredRow(seq, ident, raw))
                if entry is not None and seq == usage.head_seq + 1:
                    usage.fold(seq, entry.id, entry.kind, entry.body, raw)
                continue
            verifier.count += 1
            verifier.expected_seq = seq + 1
            verifier.previous_id = ident
            if seq != usage.head_seq + 1:
                continue
            kind = envelope.kind
            if kind == intent:  # the bulk of a ledger, counted inline
                usage.intents_submitted += 1
                usage.head_seq, usage.head_id = seq, ident
            elif kind == commit and _DELEGATED not in raw and _ESCAPE not in raw:
                usage.commits += 1
                usage.tool_calls += 1
                usage.head_seq, usage.head_id = seq, ident
            else:
                try:
                    usage.fold(seq, ident, kind, envelope, raw)
                except CorruptEntry as exc:
                    verifier.fail(exc.seq, exc.code, exc.message)

    @property
    def failures(self) -> list[ChainFailure]:
        return self.verifier.failures

    @property
    def verified(self) -> bool:
        return self.verifier.verified
