"""The ledger envelope and its hash chain: sealing, parsing, verification and golden ledgers.

An entry's id is BLAKE3 of its exact canonical bytes; verification hashes the stored bytes and
checks seq continuity and parent links, and must name the first seq at which a chain was
tampered with (a flipped byte, a deleted or reordered entry, an edited stored id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blake3
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thymos.core import (
    ChainVerifier,
    CorruptEntry,
    Entry,
    EntryKind,
    StoredRow,
    World,
    deltas_of,
    parse_envelope,
    reference_canonical_bytes,
    seal,
    verify_rows,
)

from ._golden import GOLDEN_EXPECTED, GOLDEN_LEDGER, GOLDEN_TAMPERED, TAMPERED_SEQ
from ._strategies import json_values, text

RUN_ID = "019b76da-a801-7000-8203-040506070809"
OTHER_RUN_ID = "019b76da-a801-7000-8203-0405060708ff"
TIME = "2026-01-01T00:00:00.000000Z"

bodies = st.dictionaries(text, json_values(), max_size=4)
kinds = st.sampled_from(list(EntryKind))


def make_chain(run_id: str, items: list[tuple[EntryKind, dict[str, Any]]]) -> list[Entry]:
    """Seal items as consecutive entries of one run, each linked to the one before."""
    chain: list[Entry] = []
    parent: str | None = None
    for seq, (kind, body) in enumerate(items):
        entry = seal(run_id=run_id, seq=seq, parent=parent, kind=kind, time=TIME, body=body)
        chain.append(entry)
        parent = entry.id
    return chain


def rows_of(chain: list[Entry]) -> list[StoredRow]:
    return [StoredRow(entry.seq, entry.id, entry.raw) for entry in chain]


# Chains for the tampering properties: the bodies matter less than the positions, so they stay small.
small_bodies = st.dictionaries(st.text(max_size=3), json_values(max_leaves=3), max_size=2)
chains = st.lists(st.tuples(kinds, small_bodies), min_size=3, max_size=8).map(
    lambda items: rows_of(make_chain(RUN_ID, items))
)


def first_failure_seq(rows: list[StoredRow]) -> int | None:
    failures = verify_rows(RUN_ID, rows)
    return failures[0].seq if failures else None


@given(kind=kinds, body=bodies, seq=st.integers(min_value=0, max_value=10**6))
def test_seal_and_parse_round_trip(kind: EntryKind, body: dict[str, Any], seq: int) -> None:
    """A sealed entry's bytes parse back to the same fields, and its id is BLAKE3 of exactly
    those bytes, which are the RFC 8785 encoding of the envelope."""
    parent = None if seq == 0 else "ab" * 32
    entry = seal(run_id=RUN_ID, seq=seq, parent=parent, kind=kind, time=TIME, body=body)
    envelope = {
        "v": 1,
        "run": RUN_ID,
        "seq": seq,
        "parent": parent,
        "kind": kind.value,
        "time": TIME,
        "body": body,
    }
    assert entry.raw == reference_canonical_bytes(envelope)
    assert entry.id == blake3.blake3(entry.raw).hexdigest()
    parsed = parse_envelope(entry.raw, run_id=RUN_ID, seq=seq)
    assert parsed == entry
    assert parsed.as_public()["payload"] == body


def test_seal_refuses_a_parent_on_seq_zero_and_none_elsewhere() -> None:
    """Only seq 0 has no parent: sealing anything else is a bug and asserts."""
    with pytest.raises(AssertionError):
        seal(run_id=RUN_ID, seq=0, parent="ab" * 32, kind=EntryKind.TURN, time=TIME, body={})
    with pytest.raises(AssertionError):
        seal(run_id=RUN_ID, seq=1, parent=None, kind=EntryKind.TURN, time=TIME, body={})


@given(rows=chains)
def test_verifier_passes_an_untouched_chain(rows: list[StoredRow]) -> None:
    """A chain of sealed entries verifies, and the verifier returns every entry parsed."""
    verifier = ChainVerifier(RUN_ID)
    parsed = [verifier.check(row) for row in rows]
    assert verifier.verified
    assert verifier.count == len(rows)
    assert [e.id if e else None for e in parsed] == [row.id for row in rows]


@given(rows=chains, data=st.data())
def test_flipping_any_byte_fails_at_that_entry(rows: list[StoredRow], data: st.DataObject) -> None:
    """Changing any bit of any entry's stored bytes makes verification fail naming that seq."""
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 1), label="entry")
    row = rows[index]
    position = data.draw(st.integers(min_value=0, max_value=len(row.raw) - 1), label="byte")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    raw = bytearray(row.raw)
    raw[position] ^= mask
    tampered = [*rows[:index], StoredRow(row.seq, row.id, bytes(raw)), *rows[index + 1 :]]
    assert first_failure_seq(tampered) == index


@given(rows=chains, data=st.data())
def test_changing_a_stored_id_fails_at_that_entry(
    rows: list[StoredRow], data: st.DataObject
) -> None:
    """A stored id that is not the hash of the stored bytes fails verification at its seq."""
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 1), label="entry")
    other = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64), label="id")
    row = rows[index]
    if other == row.id:
        return
    tampered = [*rows[:index], StoredRow(row.seq, other, row.raw), *rows[index + 1 :]]
    failures = verify_rows(RUN_ID, tampered)
    assert failures[0].seq == index
    assert failures[0].code == "hash_mismatch"


@given(rows=chains, data=st.data())
def test_deleting_an_entry_fails_at_its_seq(rows: list[StoredRow], data: st.DataObject) -> None:
    """Dropping any entry but the last leaves a gap that verification names by the missing seq.
    (Dropping the head is caught against the run record's head by replay, not by the chain.)"""
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 2), label="entry")
    tampered = [*rows[:index], *rows[index + 1 :]]
    failures = verify_rows(RUN_ID, tampered)
    assert failures[0].seq == index
    assert failures[0].code == "seq_gap"


@given(rows=chains, data=st.data())
def test_swapping_two_entries_fails_at_the_first_swapped_seq(
    rows: list[StoredRow], data: st.DataObject
) -> None:
    """Reordering two entries fails at the earlier position, whether the rows keep their own seq
    column or are renumbered to hide the swap."""
    i = data.draw(st.integers(min_value=0, max_value=len(rows) - 2), label="first")
    j = data.draw(st.integers(min_value=i + 1, max_value=len(rows) - 1), label="second")
    swapped = list(rows)
    swapped[i], swapped[j] = rows[j], rows[i]
    assert first_failure_seq(swapped) == i
    renumbered = list(rows)
    renumbered[i] = StoredRow(i, rows[j].id, rows[j].raw)
    renumbered[j] = StoredRow(j, rows[i].id, rows[i].raw)
    assert first_failure_seq(renumbered) == i


@given(rows=chains, data=st.data())
def test_resealing_an_edited_entry_breaks_the_next_link(
    rows: list[StoredRow], data: st.DataObject
) -> None:
    """An attacker who edits an entry and recomputes its id still breaks the chain: the next
    entry's parent no longer matches, and verification names that next seq."""
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 2), label="entry")
    original = parse_envelope(rows[index].raw, run_id=RUN_ID, seq=index)
    forged = seal(
        run_id=RUN_ID,
        seq=index,
        parent=original.parent,
        kind=EntryKind(original.kind),
        time=TIME,
        body={**original.body, "forged": True},
    )
    tampered = [*rows[:index], StoredRow(index, forged.id, forged.raw), *rows[index + 1 :]]
    failures = verify_rows(RUN_ID, tampered)
    assert failures[0].seq == index + 1
    assert failures[0].code == "parent_mismatch"


def test_rows_of_another_run_fail_verification() -> None:
    """A chain sealed for one run does not verify as another run's ledger."""
    rows = rows_of(make_chain(OTHER_RUN_ID, [(EntryKind.TURN, {})] * 3))
    failures = verify_rows(RUN_ID, rows)
    assert failures[0].seq == 0
    assert failures[0].code == "run_mismatch"


def _envelope(**changes: Any) -> bytes:
    envelope: dict[str, Any] = {
        "v": 1,
        "run": RUN_ID,
        "seq": 0,
        "parent": None,
        "kind": "turn",
        "time": TIME,
        "body": {},
    }
    envelope.update(changes)
    return orjson.dumps({k: v for k, v in envelope.items() if v != "<drop>"})


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "malformed_entry"),
        (b"[]", "malformed_entry"),
        (_envelope(time="<drop>"), "malformed_entry"),
        (_envelope(extra=1), "malformed_entry"),
        (_envelope(v=2), "unknown_version"),
        (_envelope(run=OTHER_RUN_ID), "run_mismatch"),
        (_envelope(seq=1), "seq_mismatch"),
        (_envelope(parent="not-a-hash"), "malformed_entry"),
        (_envelope(kind=3), "malformed_entry"),
        (_envelope(body=[]), "malformed_entry"),
    ],
)
def test_parse_envelope_rejects_malformed_envelopes_with_a_code(raw: bytes, code: str) -> None:
    """Bytes that are not an envelope of the expected run and seq raise CorruptEntry with the
    stored seq and a stable code."""
    with pytest.raises(CorruptEntry) as caught:
        parse_envelope(raw, run_id=RUN_ID, seq=0)
    assert caught.value.seq == 0
    assert caught.value.code == code


# -- golden ledgers ------------------------------------------------------------------------------


def _golden_rows(path: Path, ids: list[str]) -> list[StoredRow]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "a JSON Lines file ends with a newline"
    return [StoredRow(seq, ids[seq], raw) for seq, raw in enumerate(lines[:-1])]


def _expected() -> dict[str, Any]:
    expected: dict[str, Any] = orjson.loads(GOLDEN_EXPECTED.read_bytes())
    return expected


def test_golden_ledger_verifies_and_folds_to_its_recorded_world() -> None:
    """The committed golden ledger (made by the runtime with a fixed clock) still verifies with
    today's code, ends at its recorded head, and folds to its recorded world and hash: a change to
    the envelope, the encoding or the world hash that breaks old ledgers fails here."""
    expected = _expected()
    rows = _golden_rows(GOLDEN_LEDGER, expected["ids"])
    verifier = ChainVerifier(expected["run_id"])
    world = World()
    kinds: list[str] = []
    for row in rows:
        entry = verifier.check(row)
        assert entry is not None, verifier.failures
        assert entry.id == blake3.blake3(row.raw).hexdigest()
        kinds.append(entry.kind)
        if entry.kind == EntryKind.COMMIT:
            world.apply_all(deltas_of(entry.body))
    assert verifier.verified, verifier.failures
    assert kinds == expected["kinds"]
    assert rows[-1].id == expected["head_id"]
    assert world.hash == expected["world_hash"]
    assert [r.as_dict() for r in world.resources()] == expected["resources"]
    assert World.from_resources(world.resources()).hash == expected["world_hash"]


def test_golden_envelopes_are_canonical() -> None:
    """Every stored golden envelope is byte-identical to its RFC 8785 re-encoding, so any JCS
    serializer and BLAKE3 can verify the ledger independently."""
    expected = _expected()
    for row in _golden_rows(GOLDEN_LEDGER, expected["ids"]):
        assert reference_canonical_bytes(orjson.loads(row.raw)) == row.raw


def test_tampered_golden_ledger_fails_naming_its_seq() -> None:
    """The tampered copy (one commit's bytes edited) fails verification at exactly that seq when
    checked against the stored ids, and at the next seq's parent link when only the bytes are
    available (as with an export)."""
    expected = _expected()
    rows = _golden_rows(GOLDEN_TAMPERED, expected["ids"])
    failures = verify_rows(expected["run_id"], rows)
    assert failures, "the tampered ledger must not verify"
    assert failures[0].seq == TAMPERED_SEQ
    assert failures[0].code == "hash_mismatch"

    bytes_only = [StoredRow(r.seq, blake3.blake3(r.raw).hexdigest(), r.raw) for r in rows]
    failures = verify_rows(expected["run_id"], bytes_only)
    assert failures[0].seq == TAMPERED_SEQ + 1
    assert failures[0].code == "parent_mismatch"
