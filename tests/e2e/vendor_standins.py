"""Local stand-ins for vendor model APIs, speaking their documented wire formats.

`OpenAIStandIn` serves `POST /v1/chat/completions` as OpenAI documents it: a JSON
`chat.completion` object, or with `"stream": true` a `text/event-stream` of `chat.completion.chunk`
objects ending with `data: [DONE]` (tool calls streamed as indexed `tool_calls` deltas, usage in
a last chunk when `stream_options.include_usage`). It records every request (headers and body)
and answers from a script: each turn is `{"tool_calls": [(name, arguments_json), ...]}` or
`{"content": "..."}`, an HTTP error `{"status": 429, "retry_after": "0"}`, or a stream cut off
after its first words `{"truncate": true}`. `AnthropicStandIn` serves `POST /v1/messages` the
same way (a `message` object, or the documented event stream), from the same script.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

_S = TypeVar("_S", bound="_StandIn")


class _StandIn:
    """A local HTTP server that records each request (path, lowercased headers, JSON body) and
    answers it from the next scripted turn with `answer(handler, body, turn)`."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        self.turns = list(turns)
        self.requests: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                stand_in.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                turn = stand_in.turns.pop(0) if stand_in.turns else {"content": "done"}
                stand_in.answer(self, body, turn)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """What the vendor's `*_BASE_URL` variable is set to."""
        raise NotImplementedError

    def answer(
        self, handler: BaseHTTPRequestHandler, body: dict[str, Any], turn: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    @staticmethod
    def error(handler: BaseHTTPRequestHandler, turn: dict[str, Any], body: Any) -> bool:
        """Answers a scripted HTTP error (`{"status": 429, "retry_after": "0"}`) with the
        vendor's error body; False when the turn is not one."""
        if "status" not in turn:
            return False
        after = {"Retry-After": turn["retry_after"]} if "retry_after" in turn else {}
        _json(handler, int(turn["status"]), body, after)
        return True

    def __enter__(self: _S) -> _S:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(
    handler: BaseHTTPRequestHandler, status: int, data: Any, headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(data).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _sse(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()


class OpenAIStandIn(_StandIn):
    """`POST /v1/chat/completions`: a `chat.completion` object, or with `"stream": true` an event
    stream of `chat.completion.chunk` objects ending with `data: [DONE]`."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(
        self, handler: BaseHTTPRequestHandler, body: dict[str, Any], turn: dict[str, Any]
    ) -> None:
        if self.error(handler, turn, {"error": {"message": "slow down", "type": "rate"}}):
            return
        calls: list[dict[str, Any]] = [
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for index, (name, arguments) in enumerate(turn.get("tool_calls", []))
        ]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.get("content")}
            if calls:
                message["tool_calls"] = calls
            _json(
                handler,
                200,
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": 1767225600,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if calls else "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                },
            )
            return
        _sse(handler)

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> None:
            data: dict[str, Any] = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": 1767225600,
                "model": body["model"],
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                data["usage"] = usage
            handler.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        if turn.get("truncate"):
            chunk({"content": "I will"})
            return  # the connection closes: no finish, no [DONE]
        content = turn.get("content") or ""
        for begin in range(0, len(content), 4):
            chunk({"content": content[begin : begin + 4]})
        for index, call in enumerate(calls):
            function = call["function"]
            first = {
                **call,
                "index": index,
                "function": {"name": function["name"], "arguments": ""},
            }
            chunk({"tool_calls": [first]})
            arguments = function["arguments"]
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        chunk({}, "tool_calls" if calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk({}, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


class AnthropicStandIn(_StandIn):
    """`POST /v1/messages`: a `message` object, or with `"stream": true` the event stream
    `message_start`, `content_block_start` / `content_block_delta` (`text_delta`,
    `input_json_delta`) / `content_block_stop`, `message_delta` and `message_stop`."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(
        self, handler: BaseHTTPRequestHandler, body: dict[str, Any], turn: dict[str, Any]
    ) -> None:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        if self.error(handler, turn, error):
            return
        blocks: list[dict[str, Any]] = []
        if turn.get("content") or turn.get("truncate"):
            blocks.append({"type": "text", "text": turn.get("content") or "I will"})
        for index, (name, arguments) in enumerate(turn.get("tool_calls", [])):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{index}",
                    "name": name,
                    "input": _object_or_raw(arguments),
                }
            )
        stop = "tool_use" if turn.get("tool_calls") else "end_turn"
        message = {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 13, "output_tokens": 5},
        }
        if not body.get("stream"):
            _json(handler, 200, message)
            return
        _sse(handler)

        def event(name: str, data: dict[str, Any]) -> None:
            handler.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 13, "output_tokens": 1},
        }
        event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                opened: dict[str, Any] = {"type": "text", "text": ""}
                text = block["text"]
                deltas = [
                    {"type": "text_delta", "text": text[b : b + 4]} for b in range(0, len(text), 4)
                ]
            else:
                opened = {**block, "input": {}}
                given = block["input"]
                raw = given if isinstance(given, str) else json.dumps(given)
                half = len(raw) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in (raw[:half], raw[half:])
                ]
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opened},
            )
            for delta in deltas:
                event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            if turn.get("truncate"):
                return  # the connection closes: no block stop, no message_stop
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        )
        event("message_stop", {"type": "message_stop"})


def _object_or_raw(arguments: str) -> Any:
    """A tool call's input as the stand-in streams it: the object, or (for a malformed call,
    which only a stream can carry) the raw text."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
