"""Audit queries over real HTTP: `/audit/entries` and `/audit/entries/count`.

One keyed server per module holds runs of tenants A and B. What each test expects is computed
from the runs' own ledger exports (each envelope's run, seq, kind, time and body; its id is
BLAKE3 of its line), never from the audit endpoints themselves: filters combine as a table of
cases says, paging yields each entry exactly once, the count equals what the listing pages
through, CSV parses back (with Python's `csv` module) to the JSON listing, a tenant sees nothing
of another's, and a bad filter is 400 naming its parameter.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import blake3
import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key
from tests.e2e._harness import ServerProcess, assert_error, create_run, ledger_lines, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

Entry = dict[str, Any]
AWKWARD = 'a,b "quoted"\nsecond line, and a tab\t'


@pytest.fixture(scope="module")
def audited(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV})


def _run(client: httpx.Client, values: list[Any]) -> str:
    script: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": f"k{i}", "value": value}}
        for i, value in enumerate(values)
    ]
    script.append({"tool": "kv_set", "args": {"key": "bad"}})  # rejected: no value
    script.append({"final": "done"})
    run_id = create_run(
        client, {"task": "audit me", "tool_scopes": ["kv_*"], "cognition": {"script": script}}
    )
    assert wait_terminal(client, run_id)["status"] == "completed"
    return run_id


def _ledger(client: httpx.Client, run_id: str) -> list[Entry]:
    out = []
    for line in ledger_lines(client, run_id):
        envelope = json.loads(line)
        out.append(
            {
                "run_id": envelope["run"],
                "seq": envelope["seq"],
                "id": blake3.blake3(line).hexdigest(),
                "kind": envelope["kind"],
                "created_at": envelope["time"],
                "payload": envelope["body"],
            }
        )
    return out


def _ordered(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e["created_at"], e["run_id"], e["seq"]))


@pytest.fixture(scope="module")
def tenants(audited: ServerProcess) -> dict[str, Any]:
    """Three runs of tenant A and two of B, and every entry each tenant's runs recorded."""
    a1, b1 = as_key(audited, "a1"), as_key(audited, "b1")
    a_runs = [_run(a1, [1, AWKWARD]), _run(a1, [{"nested": [1, 2.5, None]}]), _run(a1, [True])]
    b_runs = [_run(b1, ["b"]), _run(b1, ["bb", 2])]
    return {
        "a": a1,
        "b": b1,
        "a_runs": a_runs,
        "b_runs": b_runs,
        "a_entries": _ordered([e for r in a_runs for e in _ledger(a1, r)]),
        "b_entries": _ordered([e for r in b_runs for e in _ledger(b1, r)]),
    }


def _page_through(client: httpx.Client, params: dict[str, Any], limit: int) -> list[Entry]:
    seen: list[Entry] = []
    cursor = None
    for _ in range(1000):
        response = client.get(
            "/audit/entries",
            params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["entries"]) <= limit
        seen.extend(body["entries"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the listing never ended")


def _count(client: httpx.Client, params: dict[str, Any]) -> int:
    response = client.get("/audit/entries/count", params=params)
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


Case = tuple[
    str, Callable[[dict[str, Any]], dict[str, Any]], Callable[[Entry, dict[str, Any]], bool]
]

CASES: list[Case] = [
    ("everything", lambda t: {}, lambda e, t: True),
    ("one run", lambda t: {"run_id": t["a_runs"][1]}, lambda e, t: e["run_id"] == t["a_runs"][1]),
    ("another tenant's run", lambda t: {"run_id": t["b_runs"][0]}, lambda e, t: False),
    ("one kind", lambda t: {"kind": "commit"}, lambda e, t: e["kind"] == "commit"),
    (
        "two kinds",
        lambda t: {"kind": "run_started,rejection"},
        lambda e, t: e["kind"] in ("run_started", "rejection"),
    ),
    (
        "from an entry's time (inclusive)",
        lambda t: {"from": t["edge"]},
        lambda e, t: e["created_at"] >= t["edge"],
    ),
    (
        "to an entry's time (exclusive)",
        lambda t: {"to": t["edge"]},
        lambda e, t: e["created_at"] < t["edge"],
    ),
    (
        "from and to the same time",
        lambda t: {"from": t["edge"], "to": t["edge"]},
        lambda e, t: False,
    ),
    (
        "a window, with an offset instead of Z",
        lambda t: {"from": t["edge"], "to": t["later_offset"]},
        lambda e, t: t["edge"] <= e["created_at"] < t["later"],
    ),
    (
        "run, kind and from together",
        lambda t: {"run_id": t["a_runs"][0], "kind": "commit,intent", "from": t["edge"]},
        lambda e, t: (
            e["run_id"] == t["a_runs"][0]
            and e["kind"] in ("commit", "intent")
            and e["created_at"] >= t["edge"]
        ),
    ),
]


def _with_edges(tenants: dict[str, Any]) -> dict[str, Any]:
    """Time bounds lying exactly on entries' times (the middle one, and one later)."""
    entries = tenants["a_entries"]
    edge = entries[len(entries) // 2]["created_at"]
    later = entries[(3 * len(entries)) // 4]["created_at"]
    # The same instant written with an offset: 2026-...T10:00:00.123456Z -> 12:00 at +02:00.
    hour = int(later[11:13])
    shifted = f"{later[:11]}{(hour + 2) % 24:02d}{later[13:-1]}+02:00"
    if hour + 2 >= 24:  # crossing midnight: keep the Z form rather than compute the date
        shifted = later
    return {**tenants, "edge": edge, "later": later, "later_offset": shifted}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_filters_combine_paging_yields_each_entry_once_and_count_agrees(
    tenants: dict[str, Any], case: Case
) -> None:
    """For each case, the pages (three entries each) hold exactly the tenant's entries the
    filters select, in time order, each once; the count is their number."""
    _, params_of, keep = case
    context = _with_edges(tenants)
    params = params_of(context)
    expected = [e for e in context["a_entries"] if keep(e, context)]
    listed = _page_through(tenants["a"], params, limit=3)
    assert [(e["run_id"], e["seq"]) for e in listed] == [(e["run_id"], e["seq"]) for e in expected]
    assert listed == expected
    assert len({(e["run_id"], e["seq"]) for e in listed}) == len(listed)
    assert _count(tenants["a"], params) == len(expected)


def test_a_tenant_sees_nothing_of_another(tenants: dict[str, Any]) -> None:
    """B's listing and count hold only B's entries, and the CSV export too; A's runs are not
    there even by name."""
    b = tenants["b"]
    listed = _page_through(b, {}, limit=50)
    assert listed == tenants["b_entries"]
    assert _count(b, {}) == len(tenants["b_entries"])
    assert _count(b, {"run_id": tenants["a_runs"][0]}) == 0
    exported = b.get("/audit/entries", params={"format": "csv"})
    a_runs = set(tenants["a_runs"])
    assert not any(row["run_id"] in a_runs for row in csv.DictReader(io.StringIO(exported.text)))


def test_csv_round_trips_through_a_csv_parser_to_the_json_listing(tenants: dict[str, Any]) -> None:
    """The export is an attachment with a header row; parsed back with Python's csv module,
    every row equals the JSON listing's entry (the payload is JSON text, with commas, quotes
    and line breaks quoted correctly); `limit` bounds it and a cursor starts it."""
    a = tenants["a"]
    response = a.get("/audit/entries", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment")
    reader = csv.DictReader(io.StringIO(response.text, newline=""))
    assert reader.fieldnames == ["run_id", "seq", "id", "kind", "created_at", "payload"]
    rows = [
        {**row, "seq": int(row["seq"]), "payload": json.loads(row["payload"])} for row in reader
    ]
    assert rows == tenants["a_entries"]
    assert any(json.dumps(AWKWARD)[1:-1] in json.dumps(row["payload"]) for row in rows)
    first_page = a.get("/audit/entries", params={"limit": 4}).json()
    rest = a.get(
        "/audit/entries", params={"format": "csv", "cursor": first_page["next_cursor"], "limit": 5}
    )
    rest_rows = list(csv.DictReader(io.StringIO(rest.text, newline="")))
    assert [(r["run_id"], int(r["seq"])) for r in rest_rows] == [
        (e["run_id"], e["seq"]) for e in tenants["a_entries"][4:9]
    ]


@pytest.mark.parametrize(
    ("params", "parameter", "code"),
    [
        ({"run_id": "not-a-run"}, "run_id", "invalid_query"),
        ({"kind": "commit,nonsense"}, "kind", "invalid_query"),
        ({"from": "yesterday"}, "from", "invalid_query"),
        ({"to": "2026-13-01T00:00:00Z"}, "to", "invalid_query"),
        ({"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"}, "to", "invalid_query"),
        ({"from": "2026-12-01T00:00:00"}, "from", "invalid_query"),
        ({"limit": 0}, "limit", "invalid_query"),
        ({"format": "xml"}, "format", "invalid_query"),
        ({"cursor": "not-a-cursor"}, None, "invalid_cursor"),
    ],
)
def test_a_bad_filter_is_400_naming_the_parameter(
    tenants: dict[str, Any], params: dict[str, Any], parameter: str | None, code: str
) -> None:
    for path, extra in (
        ("/audit/entries", {}),
        ("/audit/entries", {"format": "csv"}),
        ("/audit/entries/count", {}),
    ):
        if path.endswith("count") and (
            "limit" in params or "cursor" in params or "format" in params
        ):
            continue
        error = assert_error(tenants["a"].get(path, params={**extra, **params}), 400, code)
        if parameter is not None:
            assert parameter in json.dumps(error), error


def test_the_audit_needs_a_key(audited: ServerProcess) -> None:
    assert_error(audited.client().get("/audit/entries"), 401, "unauthenticated")
    assert_error(audited.client().get("/audit/entries/count"), 401, "unauthenticated")
