"""The msgspec envelope decoder and the lean chain-and-usage loop refuse exactly what the orjson
parser always refused, with the same names.

`_parse_with_orjson` is the parser replay always used, kept verbatim as the reference (and as the
fallback for whatever msgspec does not plainly take). `parse_envelope` now tries `decode_envelope`
(msgspec, body left raw) first; on every valid and mutated envelope the two must agree: the same
entry, or the same failure code and message.
"""

from __future__ import annotations

import sys
from typing import Any

import blake3
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thymos.core import (
    ChainFold,
    CorruptEntry,
    Entry,
    EntryKind,
    Envelope,
    RunSummary,
    StoredRow,
    decode_envelope,
    parse_body,
    parse_envelope,
    seal,
    verify_rows,
)
from thymos.core._chainfold import USAGE_COUNTS, USAGE_IGNORES
from thymos.core._ledger import _parse_with_orjson

from ._golden import GOLDEN_EXPECTED, GOLDEN_LEDGER, GOLDEN_TAMPERED, GOVERNED_LEDGER
from ._strategies import json_values, text
from .test_ledger import RUN_ID, TIME, make_chain, rows_of, small_bodies

PARENT = "ab" * 32

# Pieces that trip one parser and not the other, or sit at the edge of what JSON allows.
HOSTILE = [
    b"1e400",
    b"-1e400",
    b"1E+400",
    b"1.7976931348623159e308",
    b"9" * 320,
    b"1e-400",
    b'"\xff"',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\xe2\x82"',
    b'"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"',
    b'"\\ud800"',
    b'"\\u0000"',
    b'"\\ud83d\\ude00"',
    b"[" * 1010 + b"]" * 1010,
    b"[" * 1030 + b"]" * 1030,
    b"NaN",
    b"tru",
    b"01",
    b"1.",
    b"-0",
    b"123456789012345678901234567890",
    b'"\t"',
    b"{}",
    b"[]",
    b"true",
    b"null",
    b'"x"',
    b"1.5",
]


def _outcome(parse: Any, raw: bytes, seq: int) -> tuple[str, Any]:
    try:
        entry: Entry = parse(raw, run_id=RUN_ID, seq=seq, entry_id="00" * 32)
    except CorruptEntry as exc:
        return ("refused", (exc.seq, exc.code, exc.message))
    return ("entry", (entry.seq, entry.parent, entry.kind, entry.time, entry.body))


def _body_outcome(envelope: Envelope, seq: int) -> tuple[str, Any]:
    try:
        return ("body", parse_body(envelope, seq))
    except CorruptEntry as exc:
        return ("refused", (exc.seq, exc.code, exc.message))


def _same_as_reference(raw: bytes, seq: int) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))  # comparing bodies nested a thousand deep
    try:
        reference = _outcome(_parse_with_orjson, raw, seq)
        assert _outcome(parse_envelope, raw, seq) == reference
        envelope = decode_envelope(raw, run_id=RUN_ID, seq=seq)
        if envelope is not None:
            # What the fast path takes, the reference takes too (or refuses only for the body's
            # numbers, which `parse_body` refuses under the same name).
            kind, value = _body_outcome(envelope, seq)
            if kind == "refused":
                assert reference == ("refused", value)
            else:
                assert reference[0] == "entry"
                assert reference[1][4] == value
    finally:
        sys.setrecursionlimit(limit)


envelopes = st.builds(
    lambda kind, body, seq: (
        seal(
            run_id=RUN_ID,
            seq=seq,
            parent=None if seq == 0 else PARENT,
            kind=kind,
            time=TIME,
            body=body,
        ).raw
    ),
    st.sampled_from(list(EntryKind)),
    st.dictionaries(text, json_values(max_leaves=6), max_size=4),
    st.integers(min_value=0, max_value=3),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, int]:
    raw = bytearray(draw(envelopes))
    seq = draw(st.integers(min_value=0, max_value=3))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut", "splice", "replace"]))
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        if how == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif how == "insert":
            raw[at:at] = draw(st.sampled_from([b",", b'"', b"{", b"}", b" ", b"\\", b"\xff"]))
        elif how == "delete" and at < len(raw):
            del raw[at]
        elif how == "cut":
            del raw[at:]
        elif how == "splice":
            raw[at:at] = draw(st.sampled_from(HOSTILE))
        elif how == "replace":
            old, new = draw(
                st.sampled_from(
                    [
                        (b'"v":1', b'"v":2'),
                        (b'"v":1', b'"v":1.0'),
                        (b'"v":1', b'"v":true'),
                        (b'"body":{', b'"body":[{'),
                        (b'"body":{', b'"body" : {'),
                        (b'{"body"', b'{"x":1,"body"'),
                        (b',"v":1}', b"}"),
                        (b'"kind":"', b'"kind":"x","kind":"'),
                        (b'"parent":"', b'"parent":"A'),
                        (b'"parent":null', b'"parent":"' + PARENT.encode() + b'"'),
                        (b'"seq":', b'"seq":1'),
                        (b'"run":"', b'"run":"0'),
                        (b'"time":"', b'"time":1,"t":"'),
                        (b'"body":{', b'"body":{"n":1e400,'),
                        (b'"body":{', b'"body":{"s":"\xc3\xa9",'),
                        (b'"body":{', b'"body":{"s":"\xed\xa0\x80",'),
                    ]
                )
            )
            raw = bytearray(bytes(raw).replace(old, new, 1))
    return bytes(raw), seq


@settings(max_examples=400, deadline=None)
@given(case=st.tuples(envelopes, st.integers(min_value=0, max_value=3)))
def test_the_decoder_agrees_with_the_reference_on_valid_envelopes(case: tuple[bytes, int]) -> None:
    _same_as_reference(*case)


@settings(max_examples=1500, deadline=None)
@given(case=mutated())
def test_the_decoder_agrees_with_the_reference_on_mutated_envelopes(
    case: tuple[bytes, int],
) -> None:
    """Byte flips, insertions, cuts, hostile values spliced in, fields duplicated, reordered,
    retyped: the same entry or the same refusal, named the same."""
    _same_as_reference(*case)


def _envelope(body: bytes) -> bytes:
    return b'{"body":%s,"kind":"turn","parent":null,"run":"%s","seq":0,"time":"%s","v":1}' % (
        body,
        RUN_ID.encode(),
        TIME.encode(),
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_the_decoder_agrees_on_every_hostile_value_in_a_body(value: bytes) -> None:
    """Each value msgspec and orjson might judge differently (a number out of a double's range,
    bytes that are not UTF-8, an escaped lone surrogate, nesting between their two limits)."""
    _same_as_reference(_envelope(b'{"a":' + value + b"}"), 0)
    _same_as_reference(_envelope(value), 0)


def test_nesting_only_orjson_reads_is_still_an_entry() -> None:
    """msgspec refuses nesting a little shallower than orjson; such an envelope is still parsed
    (by the reference), as it always was."""
    raw = _envelope(b'{"a":' + b"[" * 1010 + b"]" * 1010 + b"}")
    assert decode_envelope(raw, run_id=RUN_ID, seq=0) is None
    assert parse_envelope(raw, run_id=RUN_ID, seq=0).kind == "turn"


def test_a_number_out_of_range_is_refused_when_the_body_is_read() -> None:
    raw = _envelope(b'{"a":1e400}')
    envelope = decode_envelope(raw, run_id=RUN_ID, seq=0)
    assert envelope is not None, "msgspec skips the body's numbers"
    with pytest.raises(CorruptEntry) as caught:
        parse_body(envelope, 0)
    assert caught.value.code == "malformed_entry"
    with pytest.raises(CorruptEntry):
        parse_envelope(raw, run_id=RUN_ID, seq=0)


# -- the lean loop ---------------------------------------------------------------------------------


def _chain_fold(run_id: str, rows: list[StoredRow], page: int = 3) -> ChainFold:
    fold = ChainFold(run_id)
    for start in range(0, len(rows), page):
        fold.feed(rows[start : start + page])
    return fold


def _failures(fold: ChainFold) -> list[tuple[int, str]]:
    return [(f.seq, f.code) for f in fold.failures]


# Random bodies, so only kinds whose bodies the usage fold does not read as a structure (it reads
# a run's end, a turn's usage and a start as the run summary does, and fails on nonsense alike).
counted_chains = st.lists(
    st.tuples(
        st.sampled_from(
            [
                EntryKind.INTENT,
                EntryKind.COMMIT,
                EntryKind.REJECTION,
                EntryKind.TOOL_FAILURE,
                EntryKind.APPROVAL,
                EntryKind.DELEGATION,
            ]
        ),
        small_bodies,
    ),
    min_size=3,
    max_size=8,
).map(lambda items: rows_of(make_chain(RUN_ID, items)))


@given(rows=counted_chains, data=st.data())
def test_the_lean_loop_names_every_tampering_as_chain_verification_does(
    rows: list[StoredRow], data: st.DataObject
) -> None:
    """Untouched, a byte flipped, a stored id changed, an entry dropped or two swapped: the lean
    loop reports the very failures `verify_rows` reports."""
    how = data.draw(st.sampled_from(["none", "flip", "id", "drop", "swap", "other_run"]))
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    row = rows[index]
    if how == "flip":
        raw = bytearray(row.raw)
        raw[data.draw(st.integers(min_value=0, max_value=len(raw) - 1))] ^= 0x20
        rows[index] = StoredRow(row.seq, row.id, bytes(raw))
    elif how == "id":
        rows[index] = StoredRow(row.seq, "cd" * 32, row.raw)
    elif how == "drop":
        del rows[index]
    elif how == "swap":
        other = (index + 1) % len(rows)
        rows[index], rows[other] = rows[other], rows[index]
    run_id = RUN_ID if how != "other_run" else "019b76da-a801-7000-8203-0405060708ff"
    expected = [(f.seq, f.code) for f in verify_rows(run_id, rows)]
    assert _failures(_chain_fold(run_id, rows)) == expected


def _summary_of(run_id: str, rows: list[StoredRow]) -> dict[str, Any]:
    summary = RunSummary()
    for row in rows:
        summary.fold(parse_envelope(row.raw, run_id=run_id, seq=row.seq))
    shown = summary.as_dict()
    keep = {
        "status",
        "terminated_by",
        "steps_executed",
        "intents_submitted",
        "commits",
        "rejections",
        "failures",
        "usage",
        "max_steps",
        "head_seq",
        "head_id",
    }
    return {name: value for name, value in shown.items() if name in keep}


def _jsonl_rows(path: Any) -> tuple[str, list[StoredRow]]:
    lines = [line for line in path.read_bytes().split(b"\n") if line.startswith(b'{"body"')]
    run_id = orjson.loads(lines[0])["run"]
    return run_id, [
        StoredRow(seq, blake3.blake3(line).hexdigest(), line) for seq, line in enumerate(lines)
    ]


@pytest.mark.parametrize("path", [GOLDEN_LEDGER, GOVERNED_LEDGER])
def test_the_usage_fold_is_the_run_summary_on_golden_ledgers(path: Any) -> None:
    """Counters, usage, status and head folded by the lean loop are the run summary's."""
    run_id, rows = _jsonl_rows(path)
    fold = _chain_fold(run_id, rows)
    assert fold.verified, fold.failures
    assert fold.usage.as_dict() == _summary_of(run_id, rows)


def test_the_usage_fold_counts_what_only_some_bodies_say() -> None:
    """Turn usage, a delegation's spending on its commit (its key spelled with escapes too), a
    failed call, a rejection, an end and a resumption: the fold reads those bodies."""
    items: list[tuple[EntryKind, dict[str, Any]]] = [
        (EntryKind.RUN_STARTED, {"max_steps": 5, "task": "t"}),
        (EntryKind.TURN, {"usage": {"input_tokens": 3, "output_tokens": 4, "usd_millicents": 5}}),
        (EntryKind.INTENT, {"tool": "delegate"}),
        (
            EntryKind.COMMIT,
            {
                "tool": "delegate",
                "delegated_usage": {
                    "input_tokens": 10,
                    "output_tokens": 20,
                    "tool_calls": 2,
                    "usd_millicents": 30,
                },
            },
        ),
        (EntryKind.INTENT, {"tool": "kv_set"}),
        (EntryKind.TOOL_FAILURE, {"tool": "kv_set", "error": {"code": "x", "message": "m"}}),
        (EntryKind.INTENT, {"tool": "kv_set"}),
        (EntryKind.REJECTION, {"tool": "kv_set", "reason": "expired"}),
        (EntryKind.RUN_ENDED, {"status": "failed", "terminated_by": "error"}),
        (EntryKind.RESUMPTION, {"max_steps": 9}),
        (EntryKind.INTENT, {"tool": "kv_set"}),
        (EntryKind.COMMIT, {"tool": "kv_set"}),
    ]
    rows = rows_of(make_chain(RUN_ID, items))
    fold = _chain_fold(RUN_ID, rows)
    assert fold.verified
    assert fold.usage.as_dict() == _summary_of(RUN_ID, rows)
    assert fold.usage.tool_calls == 5 and fold.usage.input_tokens == 13

    # The same spending with its key written with \u escapes (not canonical, but JSON that
    # says the same): the fold still finds it.
    raw = rows[3].raw.replace(b'"delegated_usage"', b'"delegated\\u005fusage"')
    assert raw != rows[3].raw
    escaped = [*rows[:3], StoredRow(3, blake3.blake3(raw).hexdigest(), raw)]
    fold = _chain_fold(RUN_ID, escaped)
    assert fold.usage.tool_calls == 3 and fold.usage.output_tokens == 24


def test_the_lean_loop_fails_the_tampered_golden_ledger_at_its_seq() -> None:
    expected = orjson.loads(GOLDEN_EXPECTED.read_bytes())
    lines = GOLDEN_TAMPERED.read_bytes().split(b"\n")[:-1]
    rows = [StoredRow(seq, expected["ids"][seq], raw) for seq, raw in enumerate(lines)]
    fold = _chain_fold(expected["run_id"], rows)
    assert _failures(fold) == [(f.seq, f.code) for f in verify_rows(expected["run_id"], rows)]
    assert _failures(fold)[0][1] == "hash_mismatch"


OUT_OF_RANGE = {b"1e400", b"-1e400", b"1E+400", b"1.7976931348623159e308", b"9" * 320}


@pytest.mark.parametrize("value", [v for v in HOSTILE if v not in OUT_OF_RANGE])
def test_the_lean_loop_refuses_a_resealed_hostile_body_it_does_not_read(value: bytes) -> None:
    """An intent's body (which the usage fold never decodes) rewritten with a hostile value and
    its id recomputed, as someone writing the database could: whatever chain verification
    names, the lean loop names too (bytes that are not UTF-8 included). The one thing it leaves
    to replay is a number out of a double's range in a body it does not read (module doc)."""
    rows = rows_of(
        make_chain(
            RUN_ID,
            [(EntryKind.INTENT, {"a": 1}), (EntryKind.INTENT, {"b": 2})],
        )
    )
    raw = rows[1].raw.replace(b'{"b":2}', b'{"b":' + value + b"}")
    rows[1] = StoredRow(1, blake3.blake3(raw).hexdigest(), raw)
    expected = [(f.seq, f.code) for f in verify_rows(RUN_ID, rows)]
    assert _failures(_chain_fold(RUN_ID, rows)) == expected


def test_the_usage_fold_says_what_it_does_with_every_kind() -> None:
    """A new entry kind cannot land without the usage fold counting or ignoring it."""
    assert set(EntryKind) == USAGE_COUNTS | USAGE_IGNORES
    assert not USAGE_COUNTS & USAGE_IGNORES
