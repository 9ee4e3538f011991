"""Ledger entries: kinds, the canonical envelope, sealing and chain verification.

An envelope is the whole canonical record of one entry:

    {"v": 1, "run": RUN_ID, "seq": N, "parent": ID_OF_SEQ_N-1 | null,
     "kind": KIND, "time": RFC3339, "body": {...}}

Its id is BLAKE3 of its RFC 8785 bytes, which are stored verbatim. Verification hashes the stored
bytes (it never re-serialises), checks seq continuity, the parent link and that the envelope names
its run and seq, and reports the first failure by seq.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import blake3
import msgspec
import orjson

from ._canonical import CANONICAL_VERSION, canonical_bytes
from ._ids import blake3_hex, is_hex64

ENVELOPE_FIELDS = ("v", "run", "seq", "parent", "kind", "time", "body")
_ENVELOPE_FIELD_SET = frozenset(ENVELOPE_FIELDS)


class EntryKind(StrEnum):
    """Every kind of decision the ledger records (invariant 3). Never renamed once written."""

    RUN_STARTED = "run_started"
    TURN = "turn"
    INTENT = "intent"
    REJECTION = "rejection"
    SUSPENSION = "suspension"
    APPROVAL = "approval"
    EXECUTION_STARTED = "execution_started"
    COMMIT = "commit"
    TOOL_FAILURE = "tool_failure"
    CANCELLATION = "cancellation"
    RESUMPTION = "resumption"
    DELEGATION = "delegation"
    RUN_ENDED = "run_ended"


class RegistryKind(StrEnum):
    """What a tenant's registry ledger records: the marketplace actions of its keys, each with
    the key that did it (never in a run's ledger; a run's folds refuse these kinds). Never
    renamed once written."""

    PUBLISHER_TRUSTED = "publisher_trusted"
    PACKAGE_PUBLISHED = "package_published"
    PACKAGE_INSTALLED = "package_installed"
    PACKAGE_UNINSTALLED = "package_uninstalled"
    POLICY_ACTIVATED = "policy_activated"
    POLICY_DEACTIVATED = "policy_deactivated"


@dataclass(frozen=True, slots=True)
class Entry:
    """One sealed ledger entry: its canonical bytes and the fields parsed from them."""

    run_id: str
    seq: int
    id: str
    parent: str | None
    kind: str
    time: str
    body: Mapping[str, Any]
    raw: bytes = field(repr=False)

    def as_public(self) -> dict[str, Any]:
        """The entry as streams and listings show it."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "id": self.id,
            "parent": self.parent,
            "kind": self.kind,
            "created_at": self.time,
            "payload": self.body,
        }


def seal(
    *,
    run_id: str,
    seq: int,
    parent: str | None,
    kind: EntryKind | RegistryKind,
    time: str,
    body: Mapping[str, Any],
) -> Entry:
    """Build the canonical envelope for a new entry and compute its id."""
    assert seq >= 0, "seq is never negative"
    assert (seq == 0) == (parent is None), "only seq 0 has no parent"
    raw = envelope_bytes(
        run_id=run_id,
        seq=seq,
        parent=parent,
        kind=kind.value,
        time=time,
        body=canonical_bytes(body),
    )
    return Entry(
        run_id=run_id,
        seq=seq,
        id=blake3_hex(raw),
        parent=parent,
        kind=kind.value,
        time=time,
        body=body,
        raw=raw,
    )


def envelope_bytes(
    *, run_id: str, seq: int, parent: str | None, kind: str, time: str, body: bytes
) -> bytes:
    """The canonical envelope around an already canonical body.

    The envelope's keys are fixed and ASCII, so JCS orders them `body, kind, parent, run, seq,
    time, v`; its other values are an integer and ASCII strings this module controls, which encode
    the same under any JCS serializer. Encoding the body once and splicing it in keeps the
    canonicality check to the body, where the variable content is."""
    assert run_id.isascii() and kind.isascii() and time.isascii(), "envelope strings are ASCII"
    return b'{"body":%s,"kind":%s,"parent":%s,"run":%s,"seq":%d,"time":%s,"v":%d}' % (
        body,
        orjson.dumps(kind),
        orjson.dumps(parent),
        orjson.dumps(run_id),
        seq,
        orjson.dumps(time),
        CANONICAL_VERSION,
    )


class CorruptEntry(ValueError):
    """Stored bytes that do not parse as an envelope of the expected run and seq."""

    def __init__(self, seq: int, code: str, message: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.code = code
        self.message = message


class Envelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The seven envelope fields as decoded, the body left as its raw JSON bytes (decoded only
    where a fold reads it). Every field but the body is `Any`: `decode_envelope` checks them with
    the comparisons `parse_envelope` makes, on the same decoded values."""

    body: msgspec.Raw
    kind: Any
    parent: Any
    run: Any
    seq: Any
    time: Any
    v: Any


DECODE_ENVELOPE = msgspec.json.Decoder(Envelope).decode
"""msgspec's decoder of `Envelope` (`msgspec.DecodeError` on anything else)."""


def decode_envelope(raw: bytes, *, run_id: str, seq: int) -> Envelope | None:
    """The envelope of `run_id` at `seq` with its body still raw, when `raw` is plainly one;
    None for anything else, which only `parse_envelope` judges (and names).

    Soundness: msgspec validates the whole document's syntax, the raw body's included, and the
    seven fields are checked with the same Python comparisons `parse_envelope` makes, on the same
    decoded values. What msgspec does not check of a value it skips is the UTF-8 of its strings
    (checked here, by Python's strict decoder) and the range of its numbers (`1e400`): `parse_body`,
    which every use of a body goes through, decodes it with orjson and refuses those exactly as
    `parse_envelope` always did. It refuses some nesting orjson accepts: that comes back None."""
    try:
        envelope = DECODE_ENVELOPE(raw)
    except (msgspec.DecodeError, RecursionError):  # msgspec's nesting limit is a RecursionError
        return None
    parent = envelope.parent
    if (
        envelope.v != CANONICAL_VERSION
        or envelope.run != run_id
        or envelope.seq != seq
        or not (parent is None or (isinstance(parent, str) and is_hex64(parent)))
        or not isinstance(envelope.kind, str)
        or not isinstance(envelope.time, str)
        or memoryview(envelope.body)[0] != 0x7B  # an object: `{`
        or not is_utf8(raw)
    ):
        return None
    return envelope


def plain_envelope(raw: bytes, *, run_id: str, seq: int, parent: str | None) -> Envelope | None:
    """`decode_envelope` for the entry after `parent` (None: the first), a BLAKE3 hex the caller
    computed: the parent's form needs no check of its own when it is that one."""
    try:
        envelope = DECODE_ENVELOPE(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    if (
        envelope.parent != parent
        or envelope.seq != seq
        or envelope.run != run_id
        or envelope.v != CANONICAL_VERSION
        or not isinstance(envelope.kind, str)
        or not isinstance(envelope.time, str)
        or memoryview(envelope.body)[0] != 0x7B  # an object: `{`
        or not is_utf8(raw)
    ):
        return None
    return envelope


def is_utf8(raw: bytes) -> bool:
    """Whether `raw` is UTF-8 (as orjson requires of a whole document); ASCII at once."""
    if raw.isascii():
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def parse_body(envelope: Envelope, seq: int) -> dict[str, Any]:
    """The envelope's body decoded, by orjson as always: `CorruptEntry` (`malformed_entry`, the
    name `parse_envelope` gives it) if it holds a number out of a double's range."""
    try:
        body = orjson.loads(memoryview(envelope.body))
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} is not valid JSON") from exc
    assert isinstance(body, dict), "decode_envelope checked the body is an object"
    return body


def parse_envelope(raw: bytes, *, run_id: str, seq: int, entry_id: str | None = None) -> Entry:
    """Parse stored bytes into an `Entry`, checking the envelope's shape (not the chain).
    `entry_id`, when the caller has just hashed `raw`, saves hashing it again."""
    envelope = decode_envelope(raw, run_id=run_id, seq=seq)
    if envelope is None:
        return _parse_with_orjson(raw, run_id=run_id, seq=seq, entry_id=entry_id)
    return Entry(
        run_id=run_id,
        seq=seq,
        id=entry_id if entry_id is not None else blake3_hex(raw),
        parent=envelope.parent,
        kind=envelope.kind,
        time=envelope.time,
        body=parse_body(envelope, seq),
        raw=raw,
    )


def _parse_with_orjson(raw: bytes, *, run_id: str, seq: int, entry_id: str | None) -> Entry:
    """The parser that decides every envelope `decode_envelope` does not take: it names what is
    wrong, in the order its checks have always run."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} is not valid JSON") from exc
    if not isinstance(envelope, dict) or envelope.keys() != _ENVELOPE_FIELD_SET:
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} does not have the envelope fields")
    if envelope["v"] != CANONICAL_VERSION:
        raise CorruptEntry(
            seq, "unknown_version", f"entry {seq} has format version {envelope['v']!r}"
        )
    if envelope["run"] != run_id:
        raise CorruptEntry(seq, "run_mismatch", f"entry {seq} names another run")
    if envelope["seq"] != seq:
        raise CorruptEntry(
            seq, "seq_mismatch", f"entry stored at seq {seq} names seq {envelope['seq']!r}"
        )
    parent = envelope["parent"]
    if not (parent is None or (isinstance(parent, str) and is_hex64(parent))):
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} has a malformed parent id")
    if not isinstance(envelope["kind"], str) or not isinstance(envelope["time"], str):
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} has a malformed kind or time")
    if not isinstance(envelope["body"], dict):
        raise CorruptEntry(seq, "malformed_entry", f"entry {seq} has a body that is not an object")
    return Entry(
        run_id=run_id,
        seq=seq,
        id=entry_id if entry_id is not None else blake3_hex(raw),
        parent=parent,
        kind=envelope["kind"],
        time=envelope["time"],
        body=envelope["body"],
        raw=raw,
    )


class StoredRow(NamedTuple):
    """A row as storage holds it: the seq and id columns beside the verbatim envelope bytes (a
    tuple: replay unpacks a hundred thousand of them a second)."""

    seq: int
    id: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChainFailure:
    seq: int
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "code": self.code, "message": self.message}


@dataclass(slots=True)
class ChainVerifier:
    """Verifies a run's rows in seq order, one at a time, in constant memory.

    Feed rows with `check`; it returns the parsed entry when the row is sound (so callers can fold
    it) and records a `ChainFailure` otherwise. After a failure the chain is broken: later rows are
    still parsed where possible, but only the first failure is authoritative.
    """

    run_id: str
    expected_seq: int = 0
    previous_id: str | None = None
    failures: list[ChainFailure] = field(default_factory=list)
    count: int = 0

    def check(self, row: StoredRow) -> Entry | None:
        seq, ident, raw = row
        if seq == self.expected_seq and blake3.blake3(raw).hexdigest() == ident:
            envelope = plain_envelope(raw, run_id=self.run_id, seq=seq, parent=self.previous_id)
            if envelope is not None:
                # Plainly sound (the checks below would all pass): only the body is left.
                self.count += 1
                self.expected_seq = seq + 1
                self.previous_id = ident
                try:
                    body = parse_body(envelope, seq)
                except CorruptEntry as exc:
                    self.fail(exc.seq, exc.code, exc.message)
                    return None
                return Entry(
                    self.run_id,
                    seq,
                    ident,
                    envelope.parent,
                    envelope.kind,
                    envelope.time,
                    body,
                    raw,
                )
        return self._check(row)

    def _check(self, row: StoredRow) -> Entry | None:
        """Every check in turn, each failure recorded with its name."""
        self.count += 1
        seq = self.expected_seq
        self.expected_seq = row.seq + 1
        if row.seq != seq:
            code = "seq_gap" if row.seq > seq else "seq_mismatch"
            self.fail(seq, code, f"expected seq {seq}, found seq {row.seq}")
        actual_id = blake3_hex(row.raw)
        if actual_id != row.id:
            self.fail(row.seq, "hash_mismatch", f"entry {row.seq} does not hash to its stored id")
        try:
            entry = parse_envelope(row.raw, run_id=self.run_id, seq=row.seq, entry_id=actual_id)
        except CorruptEntry as exc:
            self.fail(exc.seq, exc.code, exc.message)
            self.previous_id = actual_id
            return None
        if entry.parent != self.previous_id:
            self.fail(
                row.seq, "parent_mismatch", f"entry {row.seq} does not link to the entry before it"
            )
        self.previous_id = actual_id
        return entry

    def fail(self, seq: int, code: str, message: str) -> None:
        """Record a failure found by a check beyond the chain (replay's decision checks)."""
        self.failures.append(ChainFailure(seq, code, message))

    @property
    def verified(self) -> bool:
        return not self.failures


def verify_rows(run_id: str, rows: Iterable[StoredRow]) -> list[ChainFailure]:
    """Verify a whole chain; the empty list means every hash, link and seq is sound."""
    verifier = ChainVerifier(run_id)
    for row in rows:
        verifier.check(row)
    return verifier.failures
