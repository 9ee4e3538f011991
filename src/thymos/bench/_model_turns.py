"""The runtime's own cost per model turn: a run thinking through the real OpenAI adapter (the
official SDK, the context rebuilt from the ledger each turn, the stream parsed) against a stand-in
that answers instantly from memory, next to the same turns handed over directly.

Every turn proposes one `kv_set`, so both loops do the same governance; the difference is what
a real provider adds (context building, request encoding, response and stream parsing). The
runs are long enough for the history to reach its bound, so the figure holds for long runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2

from thymos.cognition import CognitionContext, Emit, OpenAICognition, Turn
from thymos.core import Intent, RunSpec, Usage
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

TURNS = 300
USAGE = {"prompt_tokens": 1200, "completion_tokens": 20, "total_tokens": 1220}


def _call(arguments: str) -> dict[str, Any]:
    return {
        "id": "call_0",
        "type": "function",
        "function": {"name": "kv_set", "arguments": arguments},
    }


ARGUMENTS = json.dumps({"key": "k", "value": 1})
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [_call(ARGUMENTS)]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": USAGE,
    }
).encode()


def _chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "bench",
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n".encode()


STREAM = b"".join(
    [
        _chunk([{"index": 0, "delta": {"role": "assistant", "content": "Setting k."}}]),
        _chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, **_call("")}]},
                    "finish_reason": None,
                }
            ]
        ),
        _chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENTS}}]},
                    "finish_reason": None,
                }
            ]
        ),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
        _chunk([], USAGE),
        b"data: [DONE]\n\n",
    ]
)


def _answer(request: httpx2.Request) -> httpx2.Response:
    """The instant stand-in: a whole completion, or the stream when asked for one."""
    if b'"stream":true' in request.content.replace(b" ", b""):
        return httpx2.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, content=COMPLETION, headers={"content-type": "application/json"})


class _Direct:
    """The same turns, handed over without a provider."""

    live = False

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        intent = Intent("kv_set", {"key": "k", "value": 1}, f"call_{context.step}")
        return Turn(intents=(intent,), usage=Usage(1200, 20))


async def model_turn_costs(data_dir: Path, rounds: int = 3) -> dict[str, Any]:
    store = SqliteLedgerStore(data_dir / "model-turns.sqlite3")
    await store.open()
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(_answer))
    kinds = ("direct", "streamed", "whole")

    def provider(spec: RunSpec) -> Any:
        if spec.task == "direct":
            return _Direct()
        return OpenAICognition(
            provider="openai",
            model="bench",
            base_url="http://stand-in.invalid/v1",
            api_key="bench",
            window_tokens=128_000,
            stream=spec.task == "streamed",
            http_client=client,
        )

    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir),
        provider_factory=provider,
    )
    per_turn: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for _ in range(rounds):
            for kind in kinds:
                started = time.perf_counter()
                record, _ = await runtime.start_run(
                    StartRun(task=kind, max_steps=TURNS, tool_scopes=["kv_set"]), tenant="bench"
                )
                active = runtime.active(record.run_id)
                assert active is not None and active.task is not None
                await active.task
                per_turn[kind].append((time.perf_counter() - started) / TURNS * 1e6)
                summary = (await runtime.get_run(record.run_id, None))["summary"]
                assert summary["commits"] == TURNS, summary
    finally:
        await runtime.shutdown(1.0)
        await client.aclose()
        await store.close()
    best = {kind: min(samples) for kind, samples in per_turn.items()}
    return {
        "model_turn_us_direct": round(best["direct"]),
        "model_turn_us_streamed": round(best["streamed"]),
        "model_turn_us_whole": round(best["whole"]),
        "model_turn_overhead_us_streamed": round(best["streamed"] - best["direct"]),
        "model_turn_overhead_us_whole": round(best["whole"] - best["direct"]),
    }
