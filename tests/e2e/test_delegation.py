"""Delegation on the real server: the `delegate` tool starts a child run under authority carved
out of its parent's; asking for more is refused in the parent's ledger, a child's calls beyond
its narrowed scope or budget are refused in the child's, the parent's observation is the
child's end and its usage grows by what the child spent; `/delegations`, `parent_run_id`,
cancellation of a parent, the depth bound, the active-run capacity, tenants, and replay of both
ledgers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind
from tests.e2e._harness import (
    ServerProcess,
    assert_error,
    create_run,
    wait_for,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

PARENT_SCOPES = ["kv_*", "fs_read", "delegate"]


def _delegate(task: str, scopes: list[str], **more: Any) -> dict[str, Any]:
    return {"tool": "delegate", "args": {"task": task, "tool_scopes": scopes, **more}}


def _verified(client: Any, run_id: str) -> dict[str, Any]:
    report: dict[str, Any] = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    return report


@pytest.fixture(scope="module")
def shared(module_server_factory: ServerFactory) -> ServerProcess:
    """One keyed server (tenants A and B) whose runs may delegate one level deep."""
    return module_server_factory({"THYMOS_MAX_DELEGATION_DEPTH": "1", "THYMOS_API_KEYS": KEYS_ENV})


def test_a_child_runs_within_authority_carved_from_its_parent_and_its_parent_pays_its_spend(
    shared: ServerProcess,
) -> None:
    """A parent with scopes kv_*, fs_read, delegate and a budget: asking a child for `shell` or
    for more tool calls than it has left is rejected `delegation_exceeds_authority` in the
    parent's ledger; a child given only kv_set and one tool call commits once, has its second
    kv_set rejected `budget_exhausted` and its fs_read `out_of_scope` in its own ledger, and
    ends with a final answer; the parent's commit observes that end, its usage grows by the
    child's spend; the child's record, `/delegations` and `?parent_run_id=` show the link and
    the narrowed authority; the child's writ is the parent's attenuated; both replays verify."""
    client = as_key(shared, "a1")
    child_script = [
        {
            "tool": "kv_set",
            "args": {"key": "a", "value": 1},
            "usage": {"input_tokens": 100, "output_tokens": 20},
        },
        {"tool": "kv_set", "args": {"key": "b", "value": 2}},
        {"tool": "fs_read", "args": {"path": "README.md"}},
        {"final": "child done", "usage": {"input_tokens": 5, "output_tokens": 5}},
    ]
    parent = create_run(
        client,
        {
            "task": "delegate some work",
            "tool_scopes": PARENT_SCOPES,
            "budget": {"tool_calls": 10, "tokens": 10_000},
            "cognition": {
                "script": [
                    _delegate("grab a shell", ["shell"]),
                    _delegate("spend a lot", ["kv_get"], budget={"tool_calls": 50}),
                    _delegate(
                        "set a key",
                        ["kv_set"],
                        budget={"tool_calls": 1},
                        cognition={"script": child_script},
                    ),
                    {"final": "parent done"},
                ]
            },
        },
    )
    record = wait_terminal(client, parent, timeout_s=30)
    assert (record["status"], record["summary"]["final_answer"]) == ("completed", "parent done")

    items = entries(client, parent)
    refused = of_kind(items, "rejection")
    assert [r["payload"]["reason"] for r in refused] == ["delegation_exceeds_authority"] * 2
    assert refused[0]["payload"]["details"]["tools"] == ["shell"]
    assert refused[1]["payload"]["details"] == {"budget": "tool_calls", "asked": 50, "left": 9}
    [delegation] = of_kind(items, "delegation")
    child = delegation["payload"]["child_run_id"]
    assert delegation["payload"]["tools"] == ["kv_set"]
    assert delegation["payload"]["effect_ceiling"] == "write"
    assert delegation["payload"]["depth"] == 1
    [commit] = of_kind(items, "commit")
    body = commit["payload"]
    assert body["tool"] == "delegate" and body["intent"] == delegation["payload"]["intent"]
    output = body["output"]
    assert {k: output[k] for k in ("run_id", "status", "terminated_by", "final_answer")} == {
        "run_id": child,
        "status": "completed",
        "terminated_by": "final_answer",
        "final_answer": "child done",
    }
    assert output["usage"] == body["delegated_usage"]
    assert output["usage"] == {
        "input_tokens": 105,
        "output_tokens": 25,
        "tool_calls": 1,
        "usd_millicents": 0,
    }
    # The parent's usage: its own delegating call plus everything the child spent.
    assert record["usage"]["tool_calls"] == 2
    assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (105, 25)

    child_items = entries(client, child)
    started = child_items[0]["payload"]
    assert started["parent"] == {
        "run_id": parent,
        "intent": delegation["payload"]["intent"],
        "depth": 1,
        "seq": delegation["seq"],
    }
    assert started["writ"]["lineage"][:-1] == items[0]["payload"]["writ"]["lineage"]
    assert started["writ"]["id"] == delegation["payload"]["writ_id"]
    child_refused = {
        r["payload"]["tool"]: r["payload"]["reason"] for r in of_kind(child_items, "rejection")
    }
    assert child_refused == {"kv_set": "budget_exhausted", "fs_read": "out_of_scope"}
    assert len(of_kind(child_items, "commit")) == 1

    child_record = client.get(f"/runs/{child}").json()
    assert child_record["parent_run_id"] == parent
    assert record["parent_run_id"] is None
    assert child_record["tools"] == ["kv_set"]
    assert child_record["effect_ceiling"] == "write"
    assert child_record["budget"]["tool_calls"] == 1
    assert child_record["budget"]["tokens"] == 10_000, "all the parent had left"
    assert child_record["cognition"]["provider"] == "mock"

    listing = client.get(f"/runs/{parent}/delegations").json()
    assert listing["next_cursor"] is None
    [shown] = listing["delegations"]
    assert shown["child_run_id"] == child and shown["seq"] == delegation["seq"]
    assert (shown["status"], shown["final_answer"]) == ("completed", "child done")
    assert shown["tools"] == ["kv_set"] and shown["effect_ceiling"] == "write"
    assert shown["budget"] == child_record["budget"]
    assert shown["writ"]["id"] == delegation["payload"]["writ_id"]
    assert shown["writ"]["expires"] == delegation["payload"]["expires"]
    assert client.get(f"/runs/{child}/delegations").json()["delegations"] == []

    children = client.get("/runs", params={"parent_run_id": parent}).json()["runs"]
    assert [r["run_id"] for r in children] == [child]
    assert_error(client.get("/runs", params={"parent_run_id": "nope"}), 400, "invalid_query")
    assert_error(
        client.get("/runs/00000000-0000-7000-8000-000000000000/delegations"), 404, "run_not_found"
    )

    for run_id in (parent, child):
        _verified(client, run_id)


def test_cancelling_a_parent_cancels_its_child_promptly(shared: ServerProcess) -> None:
    """A parent waiting on a child that thinks for ten minutes is cancelled: both end
    `cancelled` within seconds, the child's cancellation names the parent, the parent records
    its `delegate` call as `stopped`, and both ledgers verify."""
    client = as_key(shared, "a1")
    parent = create_run(
        client,
        {
            "task": "wait on a slow child",
            "tool_scopes": PARENT_SCOPES,
            "cognition": {
                "script": [
                    _delegate(
                        "think for long",
                        ["kv_get"],
                        cognition={"script": [{"sleep_ms": 600_000, "final": "never"}]},
                    ),
                    {"final": "never either"},
                ]
            },
        },
    )

    def running_child() -> str | None:
        listing = client.get(f"/runs/{parent}/delegations").json()["delegations"]
        return listing[0]["child_run_id"] if listing else None

    child = wait_for(running_child, timeout_s=15, what="the child run")
    assert client.get(f"/runs/{child}").json()["status"] == "running"
    response = client.post(f"/runs/{parent}/cancel", json={"reason": "enough"})
    assert response.status_code == 202, response.text
    for run_id in (parent, child):
        ended = wait_terminal(client, run_id, timeout_s=10)
        assert (ended["status"], ended["summary"]["terminated_by"]) == ("cancelled", "cancelled")
    [cancellation] = of_kind(entries(client, child), "cancellation")
    assert cancellation["payload"]["requested_by"] == f"parent run {parent}"
    assert of_kind(entries(client, parent), "cancellation")[0]["payload"]["requested_by"] == "a1"
    parent_items = entries(client, parent)
    [failure] = of_kind(parent_items, "tool_failure")
    assert (failure["payload"]["tool"], failure["payload"]["error"]["code"]) == (
        "delegate",
        "stopped",
    )
    assert of_kind(parent_items, "cancellation")[0]["payload"]["reason"] == "enough"
    for run_id in (parent, child):
        _verified(client, run_id)


def test_delegation_deeper_than_the_bound_is_refused(shared: ServerProcess) -> None:
    """With THYMOS_MAX_DELEGATION_DEPTH=1 a parent's child may be started (depth 1) but the
    child's own `delegate` call is rejected `delegation_too_deep` in the child's ledger; the
    parent observes the child's final answer; every run records the bound and replays."""
    client = as_key(shared, "a1")
    parent = create_run(
        client,
        {
            "task": "nest",
            "tool_scopes": PARENT_SCOPES,
            "cognition": {
                "script": [
                    _delegate(
                        "nest again",
                        ["kv_get", "delegate"],
                        cognition={
                            "script": [
                                _delegate("deeper", ["kv_get"]),
                                {"final": "stopped at one level"},
                            ]
                        },
                    ),
                    {"final": "done"},
                ]
            },
        },
    )
    assert wait_terminal(client, parent, timeout_s=30)["status"] == "completed"
    items = entries(client, parent)
    assert items[0]["payload"]["max_delegation_depth"] == 1
    [commit] = of_kind(items, "commit")
    assert commit["payload"]["output"]["final_answer"] == "stopped at one level"
    child = commit["payload"]["output"]["run_id"]
    [refused] = of_kind(entries(client, child), "rejection")
    assert refused["payload"]["reason"] == "delegation_too_deep"
    assert refused["payload"]["details"] == {"depth": 2, "max_depth": 1}
    for run_id in (parent, child):
        _verified(client, run_id)


def test_a_child_with_no_free_slot_is_a_recorded_tool_failure(
    server_factory: ServerFactory,
) -> None:
    """With one active-run slot (the parent's), `delegate` fails `no_capacity` at once, nothing
    is delegated, and the parent goes on to its final answer."""
    server = server_factory({"THYMOS_RUNS_ACTIVE_MAX": "1"})
    client = server.client()
    parent = create_run(
        client,
        {
            "task": "no room",
            "tool_scopes": PARENT_SCOPES,
            "cognition": {"script": [_delegate("help", ["kv_get"]), {"final": "alone"}]},
        },
    )
    assert wait_terminal(client, parent, timeout_s=30)["status"] == "completed"
    items = entries(client, parent)
    [failure] = of_kind(items, "tool_failure")
    assert failure["payload"]["error"]["code"] == "no_capacity"
    assert not of_kind(items, "delegation")
    assert client.get(f"/runs/{parent}/delegations").json()["delegations"] == []
    _verified(client, parent)


def test_delegations_are_visible_to_the_parents_tenant_only(shared: ServerProcess) -> None:
    """A child belongs to its parent's tenant: a viewer of that tenant reads `/delegations` and
    the child, another tenant gets 404 for both."""
    operator, viewer, other = as_key(shared, "a1"), as_key(shared, "a-viewer"), as_key(shared, "b1")
    parent = create_run(
        operator,
        {
            "task": "share",
            "tool_scopes": PARENT_SCOPES,
            "cognition": {
                "script": [
                    _delegate("echo", ["kv_get"], cognition={"script": [{"final": "hi"}]}),
                    {"final": "ok"},
                ]
            },
        },
    )
    assert wait_terminal(operator, parent, timeout_s=30)["status"] == "completed"
    [shown] = viewer.get(f"/runs/{parent}/delegations").json()["delegations"]
    child = shown["child_run_id"]
    assert viewer.get(f"/runs/{child}").json()["tenant"] == "A"
    assert_error(other.get(f"/runs/{parent}/delegations"), 404, "run_not_found")
    assert_error(other.get(f"/runs/{child}"), 404, "run_not_found")
    assert other.get("/runs", params={"parent_run_id": parent}).json()["runs"] == []


def test_a_parent_resumed_after_a_crash_follows_its_child_instead_of_starting_another(
    server_factory: ServerFactory,
) -> None:
    """SIGKILL while a parent waits on its child: after the restart both are interrupted;
    resuming the parent resumes and follows the same child (named by its `delegation` entry),
    no second child is started, the parent observes that child's final answer, and both
    ledgers replay."""
    server = server_factory({"THYMOS_AUTO_RESUME": "false"})
    client = server.client()
    parent = create_run(
        client,
        {
            "task": "survive a crash",
            "tool_scopes": PARENT_SCOPES,
            "cognition": {
                "script": [
                    _delegate(
                        "take a while",
                        ["kv_get"],
                        cognition={"script": [{"sleep_ms": 5_000, "final": "slow child"}]},
                    ),
                    {"final": "parent done"},
                ]
            },
        },
    )

    def running_child() -> str | None:
        listing = client.get(f"/runs/{parent}/delegations").json()["delegations"]
        return listing[0]["child_run_id"] if listing else None

    child = wait_for(running_child, timeout_s=15, what="the child run")
    server.kill()
    server.start()
    client = server.client()
    for run_id in (parent, child):
        assert client.get(f"/runs/{run_id}").json()["summary"]["terminated_by"] == "interrupted"
    assert client.post(f"/runs/{parent}/resume").status_code == 202
    record = wait_terminal(client, parent, timeout_s=60)
    assert (record["status"], record["summary"]["final_answer"]) == ("completed", "parent done")
    items = entries(client, parent)
    assert len(of_kind(items, "delegation")) == 1
    [commit] = of_kind(items, "commit")
    assert commit["payload"]["output"]["run_id"] == child
    assert commit["payload"]["output"]["final_answer"] == "slow child"
    children = client.get("/runs", params={"parent_run_id": parent}).json()["runs"]
    assert [r["run_id"] for r in children] == [child]
    [resumption] = of_kind(entries(client, child), "resumption")
    assert resumption["payload"]["requested_by"] == f"parent run {parent}"
    for run_id in (parent, child):
        _verified(client, run_id)
