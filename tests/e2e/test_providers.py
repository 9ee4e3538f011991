"""Real providers against local stand-ins that speak the vendors' wire formats: a tool-using
run completes through OpenAI Chat Completions (streamed) and an OpenAI-compatible preset; the
tools sent are exactly the run's; `/providers` lists every provider without a key; a provider
without its key is 422."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e._authority import entries
from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory
from tests.e2e.vendor_standins import AnthropicStandIn, OpenAIStandIn

pytestmark = pytest.mark.blackbox

KEY = "sk-test-standin-0123456789abcdefghij"
TURNS: list[dict[str, Any]] = [
    {"content": "Setting it.", "tool_calls": [("kv_set", json.dumps({"key": "a", "value": 1}))]},
    {"content": "All done: a is 1."},
]


def _tool_run(server: ServerProcess, provider: str) -> tuple[str, dict[str, Any]]:
    client = server.client()
    run_id = create_run(
        client,
        {"task": "set a to 1", "tool_scopes": ["kv_*"], "cognition": {"provider": provider}},
    )
    return run_id, wait_terminal(client, run_id, timeout_s=60)


@pytest.mark.parametrize(
    ("provider", "key_variable", "url_variable"),
    [
        ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        ("groq", "GROQ_API_KEY", "GROQ_BASE_URL"),
    ],
)
def test_a_tool_using_run_completes_through_an_openai_compatible_provider(
    server_factory: ServerFactory, provider: str, key_variable: str, url_variable: str
) -> None:
    with OpenAIStandIn(TURNS) as standin:
        server = server_factory({key_variable: KEY, url_variable: standin.base_url})
        run_id, record = _tool_run(server, provider)
        assert record["status"] == "completed", record
        assert record["summary"]["final_answer"] == "All done: a is 1."
        assert record["summary"]["commits"] == 1
        usage = record["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (22, 14)
        first, second = standin.requests
        assert first["headers"]["authorization"] == f"Bearer {KEY}"
        assert first["body"]["stream"] is True
        assert [t["function"]["name"] for t in first["body"]["tools"]] == ["kv_get", "kv_set"]
        assert first["body"]["messages"][1] == {"role": "user", "content": "set a to 1"}
        assistant, tool = second["body"]["messages"][2:4]
        assert assistant["tool_calls"][0]["function"]["name"] == "kv_set"
        assert tool["role"] == "tool" and tool["tool_call_id"] == "call_0"
        assert json.loads(tool["content"])["outcome"] == "committed"
        kinds = [e["kind"] for e in entries(server.client(), run_id)]
        assert kinds.count("commit") == 1


def test_providers_are_listed_without_keys_and_a_missing_key_is_422(
    server_factory: ServerFactory,
) -> None:
    server = server_factory({"OPENAI_API_KEY": KEY})
    client = server.client()
    listing = client.get("/providers")
    assert listing.status_code == 200
    body = listing.json()
    assert KEY not in listing.text
    by_name = {p["name"]: p for p in body["providers"]}
    assert by_name["openai"]["usable"] is True and by_name["openrouter"]["usable"] is False
    assert by_name["mock"]["usable"] is True
    assert body["default_provider"] == "openai"
    assert client.get("/health").json()["cognition_live"] is True
    refused = client.post("/runs", json={"task": "t", "cognition": {"provider": "openrouter"}})
    assert_error(refused, 422, "provider_unavailable")


def test_a_tool_using_run_completes_through_anthropic_messages(
    server_factory: ServerFactory,
) -> None:
    with AnthropicStandIn(TURNS) as standin:
        server = server_factory({"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": standin.base_url})
        run_id, record = _tool_run(server, "anthropic")
        assert record["status"] == "completed", record
        assert record["summary"]["final_answer"] == "All done: a is 1."
        assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (26, 10)
        first, second = standin.requests
        assert first["path"] == "/v1/messages"
        # The official SDK sends the key (as `x-api-key`, or as a bearer token in its newer
        # releases); either way the key reaches the vendor and nothing else.
        headers = first["headers"]
        assert KEY in (
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        )
        assert "anthropic-version" in first["headers"]
        assert first["body"]["stream"] is True
        assert [t["name"] for t in first["body"]["tools"]] == ["kv_get", "kv_set"]
        assert first["body"]["messages"] == [{"role": "user", "content": "set a to 1"}]
        assistant, results = second["body"]["messages"][1:3]
        assert assistant["content"][1]["type"] == "tool_use"
        result = results["content"][0]
        assert (result["type"], result["tool_use_id"], result["is_error"]) == (
            "tool_result",
            "toolu_0",
            False,
        )
        kinds = [e["kind"] for e in entries(server.client(), run_id)]
        assert kinds.count("commit") == 1


def test_rate_limits_errors_dropped_streams_and_malformed_calls_are_survived(
    server_factory: ServerFactory,
) -> None:
    """The stand-in answers 429 with `Retry-After`, then 500, then a stream cut short: each turn
    is tried again. Then a tool call whose arguments are not JSON: a recorded rejection the model
    is shown next turn. The run completes."""
    turns: list[dict[str, Any]] = [
        {"status": 429, "retry_after": "0"},
        {"status": 500},
        {"truncate": True},
        {"content": "Trying.", "tool_calls": [("kv_set", '{"key": "a", "value": ')]},
        {"content": "Again.", "tool_calls": [("kv_set", json.dumps({"key": "a", "value": 1}))]},
        {"content": "Done."},
    ]
    with OpenAIStandIn(turns) as standin:
        server = server_factory({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": standin.base_url})
        run_id, record = _tool_run(server, "openai")
        assert record["status"] == "completed", record
        assert record["summary"]["final_answer"] == "Done."
        assert len(standin.requests) == 6
        items = entries(server.client(), run_id)
        rejection = next(e for e in items if e["kind"] == "rejection")
        assert rejection["payload"]["reason"] == "invalid_arguments"
        shown = standin.requests[4]["body"]["messages"][-1]
        assert shown["role"] == "tool" and "invalid_arguments" in shown["content"]
        assert [e["kind"] for e in items].count("commit") == 1


def test_a_provider_that_keeps_failing_ends_the_run_with_a_message(
    server_factory: ServerFactory,
) -> None:
    with OpenAIStandIn([{"status": 503, "retry_after": "0"}] * 4) as standin:
        server = server_factory({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": standin.base_url})
        _, record = _tool_run(server, "openai")
        assert record["status"] == "failed"
        assert record["summary"]["terminated_by"] == "error"
        assert len(standin.requests) == 4
        message = record["summary"]["error"]
        assert "openai failed 4 times" in message and "503" in message, message
