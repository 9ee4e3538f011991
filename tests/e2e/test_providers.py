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


def _tool_run(
    server: ServerProcess, provider: str, task: str = "set a to 1", **cognition: Any
) -> tuple[str, dict[str, Any]]:
    client = server.client()
    run_id = create_run(
        client,
        {"task": task, "tool_scopes": ["kv_*"], "cognition": {"provider": provider, **cognition}},
    )
    return run_id, wait_terminal(client, run_id, timeout_s=60)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("provider", "key_variable", "url_variable"),
    [
        ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        ("groq", "GROQ_API_KEY", "GROQ_BASE_URL"),
    ],
)
def test_a_tool_using_run_completes_through_an_openai_compatible_provider(
    server_factory: ServerFactory, provider: str, key_variable: str, url_variable: str, stream: bool
) -> None:
    with OpenAIStandIn(TURNS) as standin:
        server = server_factory({key_variable: KEY, url_variable: standin.base_url})
        run_id, record = _tool_run(server, provider, stream=stream)
        assert record["status"] == "completed", record
        assert record["summary"]["final_answer"] == "All done: a is 1."
        assert record["summary"]["commits"] == 1
        usage = record["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (22, 14)
        first, second = standin.requests
        assert first["headers"]["authorization"] == f"Bearer {KEY}"
        assert first["body"].get("stream", False) is stream
        assert first["body"]["model"] == record["cognition"]["model"]
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
    for url in [
        "\fhttp://h/v1",
        "http://h /v1",
        "ftp://host/v1",
        "http://",
        "http://u:p@host/v1",
        "http://h:x/v1",
    ]:
        refused = client.post(
            "/runs", json={"task": "t", "cognition": {"provider": "gemini", "base_url": url}}
        )
        assert_error(refused, 422, "invalid_request")


@pytest.mark.parametrize("stream", [True, False])
def test_a_tool_using_run_completes_through_anthropic_messages(
    server_factory: ServerFactory, stream: bool
) -> None:
    with AnthropicStandIn(TURNS) as standin:
        server = server_factory({"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": standin.base_url})
        run_id, record = _tool_run(server, "anthropic", stream=stream)
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
        assert first["body"].get("stream", False) is stream
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


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_rate_limits_errors_dropped_streams_and_malformed_calls_are_survived(
    server_factory: ServerFactory, vendor: str
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
    standins = {"openai": OpenAIStandIn, "anthropic": AnthropicStandIn}
    with standins[vendor](turns) as standin:
        upper = vendor.upper()
        server = server_factory({f"{upper}_API_KEY": KEY, f"{upper}_BASE_URL": standin.base_url})
        run_id, record = _tool_run(server, vendor)
        assert record["status"] == "completed", record
        assert record["summary"]["final_answer"] == "Done."
        assert len(standin.requests) == 6
        items = entries(server.client(), run_id)
        rejection = next(e for e in items if e["kind"] == "rejection")
        assert rejection["payload"]["reason"] == "invalid_arguments"
        shown = json.dumps(standin.requests[4]["body"]["messages"][-1])
        assert "invalid_arguments" in shown, shown
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


def test_a_small_context_window_leaves_old_exchanges_out_and_says_so(
    server_factory: ServerFactory,
) -> None:
    """`cognition.context_tokens` is recorded with the run and fits what the model is sent: with
    exchanges of about 1,000 tokens each and a 2,048-token window, the third request carries only
    the latest exchange, whole, after a note saying how many items were left out."""
    big = "v" * 3000
    turns: list[dict[str, Any]] = [
        {"content": "One.", "tool_calls": [("kv_set", json.dumps({"key": "a", "value": big}))]},
        {"content": "Two.", "tool_calls": [("kv_set", json.dumps({"key": "b", "value": big}))]},
        {"content": "Done."},
    ]
    with OpenAIStandIn(turns) as standin:
        server = server_factory({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": standin.base_url})
        run_id, record = _tool_run(server, "openai", context_tokens=2048)
        assert record["status"] == "completed", record
        started = entries(server.client(), run_id)[0]["payload"]
        assert started["cognition"]["context_tokens"] == 2048
        second, third = standin.requests[1:]
        assert len(second["body"]["messages"]) == 4  # system, task, one exchange
        _system, task, note, assistant, tool = third["body"]["messages"]
        assert task == {"role": "user", "content": "set a to 1"}
        assert note["content"].startswith("[2 earlier history items of this run were left out")
        assert assistant["content"] == "Two." and tool["tool_call_id"] == "call_0"
        refused = server.client().post(
            "/runs", json={"task": "t", "cognition": {"provider": "openai", "context_tokens": 10}}
        )
        assert_error(refused, 422, "invalid_request")


def test_spend_is_priced_recorded_per_turn_and_counted_in_usage(
    server_factory: ServerFactory,
) -> None:
    """With `THYMOS_PRICES` pricing the default Anthropic model at 1,000 / 2,000 USD per million
    tokens in / out, each stand-in turn (13 in, 5 out) costs 2,300 millicents: recorded in the
    turn, summed on the run and counted for the key that created it in `/usage`."""
    secret = "ops-secret-0123456789abcdef"
    with AnthropicStandIn(TURNS) as standin:
        server = server_factory(
            {
                "ANTHROPIC_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": standin.base_url,
                "THYMOS_API_KEYS": f"ops:T:admin:{secret}",
                "THYMOS_PRICES": json.dumps(
                    {"anthropic/claude-sonnet-4-5": {"input": 1000, "output": 2000}}
                ),
            }
        )
        client = server.client()
        client.headers["Authorization"] = f"Bearer {secret}"
        run_id = create_run(
            client,
            {"task": "set a to 1", "tool_scopes": ["kv_*"], "cognition": {"provider": "anthropic"}},
        )
        record = wait_terminal(client, run_id, timeout_s=60)
        assert record["status"] == "completed", record
        assert record["cognition"]["model"] == "claude-sonnet-4-5"
        turns = [e for e in entries(client, run_id) if e["kind"] == "turn"]
        assert [t["payload"]["usage"]["usd_millicents"] for t in turns] == [2300, 2300]
        assert record["usage"]["usd_millicents"] == 4600
        (row,) = client.get("/usage").json()["keys"]
        assert (row["input_tokens"], row["output_tokens"], row["usd_millicents"]) == (26, 10, 4600)
        assert KEY not in json.dumps(entries(client, run_id)) + client.get("/usage").text
