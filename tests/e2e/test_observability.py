"""Seeing into the real `thymos serve`: `/metrics` agrees with the ledgers it wrote, only an
admin or the metrics token reads it, every request is one JSON log line carrying its run, and no
line holds a secret.

Metrics are parsed with `prometheus_client`'s own parser; every count a test compares comes from
the runs' ledgers and records fetched over HTTP, never from the server's internals.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e._authority import KEYS_ENV, SECRETS, as_key, entries, policy_dir, wait_pending
from tests.e2e._harness import ServerProcess, create_run, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

METRICS_TOKEN = "scrape-token-0123456789abcdef"
PROVIDER_KEY = "sk-obs-provider-key-0123456789abcdef"
POLICY = """\
@id("permit-all")
permit(principal, action, resource);

@id("forbid-kv-set")
forbid(principal, action, resource == Thymos::Tool::"kv_set");

@id("grep-needs-ops")
@approval("ops")
permit(principal, action, resource == Thymos::Tool::"grep");
"""
GREP = {"tool": "grep", "args": {"pattern": "alpha"}}
USAGE = {"input_tokens": 120, "output_tokens": 7}


@pytest.fixture
def observed(
    server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    """A keyed server with a metrics token, whose policy forbids kv_set and makes grep wait on
    channel `ops` (a fresh one per test: its counters start at zero)."""
    folder = policy_dir(tmp_path_factory.mktemp("obs-policy"), main=POLICY)
    return server_factory(
        {
            "THYMOS_POLICY_DIR": str(folder),
            "THYMOS_API_KEYS": KEYS_ENV,
            "THYMOS_METRICS_TOKEN": METRICS_TOKEN,
            "OPENAI_API_KEY": PROVIDER_KEY,
        }
    )


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics` (read with the metrics token), by name and sorted labels."""
    response = server.client().get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def by_label(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one series name, keyed by their labels, zeros left out."""
    return {labels: value for (n, labels), value in samples.items() if n == name and value}


def _vote(client: httpx.Client, run_id: str, approve: bool) -> None:
    response = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": approve})
    assert response.status_code == 200, response.text


def test_metrics_agree_with_the_ledgers_of_scripted_runs(observed: ServerProcess) -> None:
    """After two scripted mock runs (an unknown tool, a forbidden kv_set, a grep approved, a
    grep denied, a read, a read that fails, usage reported), every counter of `/metrics` equals
    what the runs' ledgers and records say: intents, decisions, rejections by reason, votes,
    tool executions by tool and outcome, entries by kind, runs by ending, tokens, turn and
    tool and approval-wait observations; the approvals-waiting gauge is 1 while a run waits and
    0 after, and no run is active at the end."""
    operator = as_key(observed, "a1")
    approved = create_run(
        operator,
        {
            "task": "observe me",
            "tool_scopes": ["*"],
            "cognition": {
                "script": [
                    {"tool": "nope", "args": {}, "usage": USAGE},
                    {"tool": "kv_set", "args": {"key": "a", "value": 1}},
                    GREP,
                    {
                        "intents": [
                            {"tool": "fs_read", "args": {"path": "README.md"}},
                            {"tool": "fs_read", "args": {"path": "no/such/file.txt"}},
                        ],
                        "usage": USAGE,
                    },
                    {"final": "seen", "usage": USAGE},
                ]
            },
        },
    )
    wait_pending(operator, approved)
    waiting = wait_for(
        lambda: (
            True if by_label(scrape(observed), "thymos_approvals_waiting") == {(): 1.0} else None
        ),
        timeout_s=15.0,
        what="thymos_approvals_waiting to be 1",
    )
    assert waiting
    _vote(operator, approved, True)
    denied = create_run(
        operator,
        {
            "task": "deny me",
            "tool_scopes": ["*"],
            "cognition": {"script": [GREP, {"final": "without grep"}]},
        },
    )
    wait_pending(operator, denied)
    _vote(as_key(observed, "a2"), denied, False)
    records = [wait_terminal(operator, run_id) for run_id in (approved, denied)]
    ledgers = [entries(operator, run_id) for run_id in (approved, denied)]
    items = [item for ledger in ledgers for item in ledger]

    # Every run's writer has finished (its end is durable) before the record says it ended,
    # and runs leave the active set right after: wait for that rather than assume it.
    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(observed)
        return None if by_label(samples, "thymos_runs_active") else samples

    samples = wait_for(settled, timeout_s=15.0, what="no active runs")
    kinds = Counter(item["kind"] for item in items)
    assert by_label(samples, "thymos_ledger_entries_total") == {
        (("kind", kind),): float(count) for kind, count in kinds.items()
    }
    assert by_label(samples, "thymos_runs_started_total") == {(): 2.0}
    assert by_label(samples, "thymos_intents_proposed_total") == {(): float(kinds["intent"])}
    # The runs' summaries say the same as their ledgers.
    assert sum(r["summary"]["intents_submitted"] for r in records) == kinds["intent"]
    assert sum(r["summary"]["rejections"] for r in records) == kinds["rejection"]
    assert sum(r["summary"]["commits"] for r in records) == kinds["commit"]
    reasons = Counter(i["payload"]["reason"] for i in items if i["kind"] == "rejection")
    assert reasons == {"unknown_tool": 1, "policy_denied": 1, "approval_denied": 1}
    assert by_label(samples, "thymos_rejections_total") == {
        (("reason", reason),): float(count) for reason, count in reasons.items()
    }
    executions = Counter(
        (
            i["payload"]["tool"],
            "committed" if i["kind"] == "commit" else i["payload"]["error"]["code"],
        )
        for i in items
        if i["kind"] in ("commit", "tool_failure")
    )
    assert sum(executions.values()) == 3 and ("grep", "committed") in executions
    assert by_label(samples, "thymos_tool_executions_total") == {
        (("outcome", outcome), ("tool", tool)): float(count)
        for (tool, outcome), count in executions.items()
    }
    assert by_label(samples, "thymos_decisions_total") == {
        (("outcome", "executed"),): float(sum(executions.values())),
        (("outcome", "rejected"),): float(sum(reasons.values())),
        (("outcome", "suspended"),): float(kinds["suspension"]),
    }
    votes = Counter(
        "approve" if i["payload"]["approve"] else "deny" for i in items if i["kind"] == "approval"
    )
    assert votes == {"approve": 1, "deny": 1}
    assert by_label(samples, "thymos_approval_votes_total") == {
        (("vote", vote),): float(count) for vote, count in votes.items()
    }
    assert samples[("thymos_approval_wait_seconds_count", ())] == 2.0
    endings = Counter((r["status"], r["summary"]["terminated_by"]) for r in records)
    assert by_label(samples, "thymos_runs_ended_total") == {
        (("status", status), ("terminated_by", ending)): float(count)
        for (status, ending), count in endings.items()
    }
    tools_run = Counter(tool for tool, _ in executions.elements())
    for tool, count in tools_run.items():
        assert samples[("thymos_tool_execution_seconds_count", (("tool", tool),))] == count
    usage = [r["usage"] for r in records]
    assert by_label(samples, "thymos_model_input_tokens_total") == {
        (("provider", "mock"),): float(sum(u["input_tokens"] for u in usage))
    }
    assert by_label(samples, "thymos_model_output_tokens_total") == {
        (("provider", "mock"),): float(sum(u["output_tokens"] for u in usage))
    }
    assert samples[("thymos_model_turn_seconds_count", (("provider", "mock"),))] == kinds["turn"]
    appends = samples[("thymos_ledger_append_seconds_count", ())]
    commits = samples[("thymos_ledger_commit_seconds_count", ())]
    # Each run's first entry is stored with its row (a commit, not staged by the trajectory).
    assert commits == appends + 2
    assert by_label(samples, "thymos_approvals_waiting") == {}
    assert by_label(samples, "thymos_sse_subscribers") == {}


def test_replays_and_stream_subscribers_are_counted(observed: ServerProcess) -> None:
    """A replay adds the entries it verified (as its report says) and one duration; an open
    SSE stream is one subscriber until it closes."""
    operator = as_key(observed, "a1")
    run_id = create_run(operator, {"task": "replay me", "tool_scopes": ["*"]})
    wait_terminal(operator, run_id)
    report = operator.get(f"/runs/{run_id}/replay")
    assert report.status_code == 200, report.text
    samples = scrape(observed)
    assert samples[("thymos_replay_entries_total", ())] == report.json()["entries"] > 0
    assert samples[("thymos_replay_seconds_count", ())] == 1.0

    waiting = create_run(
        operator, {"task": "stream me", "tool_scopes": ["*"], "cognition": {"script": [GREP]}}
    )
    wait_pending(operator, waiting)
    with operator.stream("GET", f"/runs/{waiting}/events") as stream:
        assert stream.status_code == 200
        wait_for(
            lambda: (
                True if by_label(scrape(observed), "thymos_sse_subscribers") == {(): 1.0} else None
            ),
            timeout_s=15.0,
            what="one SSE subscriber",
        )
    wait_for(
        lambda: True if not by_label(scrape(observed), "thymos_sse_subscribers") else None,
        timeout_s=15.0,
        what="no SSE subscriber once the stream closed",
    )
    cancel = operator.post(f"/runs/{waiting}/cancel", json={})
    assert cancel.status_code == 202, cancel.text
    wait_terminal(operator, waiting)


def test_only_an_admin_or_the_metrics_token_reads_metrics(observed: ServerProcess) -> None:
    """Per-tenant numbers are not for everyone: no key is 401, an operator's or a viewer's key
    is 403, an admin key and the metrics token are 200; the token reads nothing else (401 on
    /runs), and a wrong token is 401."""
    client = observed.client()
    assert client.get("/metrics").status_code == 401
    assert as_key(observed, "a1").get("/metrics").status_code == 403
    assert as_key(observed, "a-viewer").get("/metrics").status_code == 403
    admin = as_key(observed, "a-admin").get("/metrics")
    assert admin.status_code == 200 and "thymos_runs_active" in admin.text
    token = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=token).status_code == 200
    assert client.get("/runs", headers=token).status_code == 401
    wrong = {"Authorization": f"Bearer {METRICS_TOKEN}x"}
    assert client.get("/metrics", headers=wrong).status_code == 401


def test_an_open_server_serves_metrics_to_anyone(server: ServerProcess) -> None:
    """Without keys the server is open (loopback only): `/metrics` answers like every route."""
    response = server.client().get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"thymos_runs_active", "thymos_intents_proposed", "thymos_sse_subscribers"} <= names


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be one JSON object."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


def test_each_request_is_one_json_log_line_naming_its_run_and_key(
    observed: ServerProcess,
) -> None:
    """POST /runs and each GET /runs/:id are exactly one access-log line each, with the
    method, the route's template, the status, a duration, the key's id (never its secret), the
    tenant and the run's id (as many lines as the client sent requests); a 404 and a 401 are
    logged with their status; and no line anywhere in the log holds a key's secret, the metrics token or a provider key."""
    operator = as_key(observed, "a1")
    created = operator.post("/runs", json={"task": "log me", "tool_scopes": ["*"]})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]
    wait_terminal(operator, run_id)
    for _ in range(3):
        assert operator.get(f"/runs/{run_id}").status_code == 200
    assert operator.get("/runs/00000000-0000-7000-8000-000000000000").status_code == 404
    observed.client().get("/runs", headers={"Authorization": f"Bearer {SECRETS['a1']}x"})
    observed.client().get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    observed.stop()

    records = _log_lines(observed)
    access = [r for r in records if r.get("logger") == "thymos.access"]
    assert all(r["event"] == "request" and r["request_id"] for r in access)
    posts = [r for r in access if r["method"] == "POST" and r["path"] == "/runs"]
    assert len(posts) == 1
    post = posts[0]
    assert post["status"] == 202 and post["run_id"] == run_id
    assert post["tenant"] == "A" and post["key"] and post["key"] not in SECRETS.values()
    assert isinstance(post["duration_ms"], float)
    reads = [r for r in access if r["path"] == "/runs/{run_id}" and r["run_id"] == run_id]
    sent = [s for s in observed.statuses if s[:2] == ("GET", f"/runs/{run_id}")]
    assert len(sent) >= 4 and len(reads) == len(sent), (reads, sent)
    assert {r["status"] for r in reads} == {200}
    missing = [r for r in access if r["path"] == "/runs/{run_id}" and r["status"] == 404]
    assert len(missing) == 1
    refused = [r for r in access if r["path"] == "/runs" and r["status"] == 401]
    assert len(refused) == 1 and refused[0]["key"] is None
    # uvicorn's own access log is off: no other logger reports requests.
    assert not [r for r in records if r.get("logger") == "uvicorn.access"]
    log = observed.log_path.read_text(errors="replace")
    for secret in (*SECRETS.values(), METRICS_TOKEN, PROVIDER_KEY):
        assert secret not in log
