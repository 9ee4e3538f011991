"""Local stand-ins for vendor model APIs, speaking their documented wire formats.

`OpenAIStandIn` serves `POST /v1/chat/completions` as OpenAI documents it: a JSON
`chat.completion` object, or with `"stream": true` a `text/event-stream` of `chat.completion.chunk`
objects ending with `data: [DONE]` (tool calls streamed as indexed `tool_calls` deltas, usage in
a last chunk when `stream_options.include_usage`). It records every request (headers and body)
and answers from a script: each turn is `{"tool_calls": [(name, arguments_json), ...]}` or
`{"content": "..."}`, an HTTP error `{"status": 429, "retry_after": "0"}`, or a stream cut off
after its first words `{"truncate": true}`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIStandIn:
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
                if "status" in turn:
                    payload = json.dumps({"error": {"message": "slow down", "type": "rate"}})
                    self.send_response(int(turn["status"]))
                    if "retry_after" in turn:
                        self.send_header("Retry-After", turn["retry_after"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if body.get("stream"):
                    self._stream(body, turn)
                else:
                    self._whole(body, turn)

            def _message(self, turn: dict[str, Any]) -> dict[str, Any]:
                calls = [
                    {
                        "id": f"call_{index}",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                    for index, (name, arguments) in enumerate(turn.get("tool_calls", []))
                ]
                message: dict[str, Any] = {"role": "assistant", "content": turn.get("content")}
                if calls:
                    message["tool_calls"] = calls
                return message

            def _whole(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
                message = self._message(turn)
                payload = json.dumps(
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "created": 1767225600,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls"
                                if "tool_calls" in message
                                else "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def chunk(
                    delta: dict[str, Any], finish: str | None = None, usage: Any = None
                ) -> None:
                    data = {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion.chunk",
                        "created": 1767225600,
                        "model": body["model"],
                        "choices": []
                        if usage
                        else [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    if usage:
                        data["usage"] = usage
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if turn.get("truncate"):
                    chunk({"content": "I will"})
                    return  # the connection closes: no finish, no [DONE]
                content = turn.get("content") or ""
                for start in range(0, len(content), 4):
                    chunk({"content": content[start : start + 4]})
                for index, (name, arguments) in enumerate(turn.get("tool_calls", [])):
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": f"call_{index}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                    half = len(arguments) // 2
                    for part in (arguments[:half], arguments[half:]):
                        chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                chunk({}, "tool_calls" if turn.get("tool_calls") else "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk(
                        {}, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                    )
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> OpenAIStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class AnthropicStandIn:
    """`POST /v1/messages` as Anthropic documents it: a `message` object, or with `"stream":
    true` the event stream `message_start`, `content_block_start` / `content_block_delta`
    (`text_delta`, `input_json_delta`) / `content_block_stop`, `message_delta` (stop reason,
    output tokens) and `message_stop`. Turns as for `OpenAIStandIn`."""

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
                blocks: list[dict[str, Any]] = []
                if turn.get("content"):
                    blocks.append({"type": "text", "text": turn["content"]})
                for index, (name, arguments) in enumerate(turn.get("tool_calls", [])):
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": f"toolu_{index}",
                            "name": name,
                            "input": json.loads(arguments),
                        }
                    )
                stop = "tool_use" if turn.get("tool_calls") else "end_turn"
                if not body.get("stream"):
                    payload = json.dumps(
                        {
                            "id": "msg_standin",
                            "type": "message",
                            "role": "assistant",
                            "model": body["model"],
                            "content": blocks,
                            "stop_reason": stop,
                            "stop_sequence": None,
                            "usage": {"input_tokens": 13, "output_tokens": 5},
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(name: str, data: dict[str, Any]) -> None:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

                event(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": "msg_standin",
                            "type": "message",
                            "role": "assistant",
                            "model": body["model"],
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": 13, "output_tokens": 1},
                        },
                    },
                )
                for index, block in enumerate(blocks):
                    if block["type"] == "text":
                        event(
                            "content_block_start",
                            {
                                "type": "content_block_start",
                                "index": index,
                                "content_block": {"type": "text", "text": ""},
                            },
                        )
                        text = block["text"]
                        for start in range(0, len(text), 4):
                            event(
                                "content_block_delta",
                                {
                                    "type": "content_block_delta",
                                    "index": index,
                                    "delta": {
                                        "type": "text_delta",
                                        "text": text[start : start + 4],
                                    },
                                },
                            )
                    else:
                        event(
                            "content_block_start",
                            {
                                "type": "content_block_start",
                                "index": index,
                                "content_block": {
                                    "type": "tool_use",
                                    "id": block["id"],
                                    "name": block["name"],
                                    "input": {},
                                },
                            },
                        )
                        raw = json.dumps(block["input"])
                        half = len(raw) // 2
                        for part in (raw[:half], raw[half:]):
                            event(
                                "content_block_delta",
                                {
                                    "type": "content_block_delta",
                                    "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": part},
                                },
                            )
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AnthropicStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
