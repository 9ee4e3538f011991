"""Anthropic Messages, on the official `anthropic` SDK, streamed unless a run asks otherwise.

The context becomes a system prompt, the task as the first user message, then the history:
each assistant turn as `text` and `tool_use` blocks, and the observations that answer it as one
user message of `tool_result` blocks (a rejection or failure marked `is_error`). The tools sent
are exactly the run's scoped tools. Text streams as `token` events and tool input as
`tool_use_*` events; the usage the API reports is returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
from anthropic.types import Message, RawMessageStreamEvent

from thymos.core import Intent, Usage

from ._context import (
    SYSTEM_PROMPT,
    fit_history,
    observation_text,
    omitted_note,
    read_arguments,
    sorted_keys,
)
from ._http import REQUEST_TIMEOUT_S
from ._protocol import (
    AssistantTurn,
    CognitionContext,
    CognitionEvent,
    Emit,
    Observation,
    Turn,
)
from ._retry import Retryable, status_failure, with_retries

MAX_TOKENS = 4096
MESSAGES_PATH = "/v1/messages"
"""Posted through the SDK's client (its auth, version header, errors and event parsing) with the
body as built here, as for OpenAI: the SDK's per-field transformation is skipped, and the stream
is folded here."""


def anthropic_messages(context: CognitionContext) -> list[dict[str, Any]]:
    """The conversation rebuilt from the history; results whose call fell out of the bounded
    history are left out (a tool result must answer a call of the previous message)."""
    task: str | list[dict[str, Any]] = context.task
    if context.omitted:
        task = [
            {"type": "text", "text": context.task},
            {"type": "text", "text": omitted_note(context.omitted)},
        ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    open_calls: set[str] = set()
    for item in context.history:
        if isinstance(item, AssistantTurn):
            blocks: list[dict[str, Any]] = []
            if item.text:
                blocks.append({"type": "text", "text": item.text})
            for intent in item.intents:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": intent.call_id,
                        "name": intent.tool,
                        "input": sorted_keys(dict(intent.args)),
                    }
                )
            open_calls = {intent.call_id for intent in item.intents}
            if blocks:
                messages.append({"role": "assistant", "content": blocks})
        elif isinstance(item, Observation) and item.call_id in open_calls:
            open_calls.discard(item.call_id)
            result = {
                "type": "tool_result",
                "tool_use_id": item.call_id,
                "content": observation_text(item),
                "is_error": item.outcome != "committed",
            }
            last = messages[-1]
            if last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(result)
            else:
                messages.append({"role": "user", "content": [result]})
    return messages


class AnthropicCognition:
    live = True

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        window_tokens: int,
        stream: bool = True,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.stream = stream
        self.window_tokens = window_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "not-set",
            base_url=base_url,
            max_retries=0,  # `with_retries` retries whole turns, dropped streams included
            timeout=REQUEST_TIMEOUT_S,
            http_client=http_client,
        )

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        tools = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
            for t in context.tools
        ]
        fitted = fit_history(context, self.window_tokens, [SYSTEM_PROMPT, context.task, tools])
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            "system": SYSTEM_PROMPT,
            "messages": anthropic_messages(fitted),
        }
        if tools:
            request["tools"] = tools
        reply = await with_retries(lambda: self._attempt(request, emit), what="anthropic")
        intents = []
        for intent in reply.calls:
            intents.append(intent)
            emit(CognitionEvent("tool_use_done", {"id": intent.call_id, "name": intent.tool}))
        emit(CognitionEvent("turn_complete", {"usage": reply.usage.as_dict()}))
        return Turn(
            text=reply.text if intents else "",
            intents=tuple(intents),
            final=None if intents else reply.text,
            usage=reply.usage,
        )

    async def _attempt(self, request: dict[str, Any], emit: Emit) -> _Reply:
        try:
            if not self.stream:
                whole = await self._client.post(MESSAGES_PATH, body=request, cast_to=Message)
                return _Reply.of(whole)
            events = await self._client.post(
                MESSAGES_PATH,
                body={**request, "stream": True},
                cast_to=Message,
                stream=True,
                stream_cls=anthropic.AsyncStream[RawMessageStreamEvent],
            )
            return await _Reply.streamed(events, emit)
        except anthropic.APIStatusError as exc:
            message = f"anthropic answered {exc.status_code}: {exc.message}"[:600]
            raise status_failure(exc.status_code, message, exc.response.headers) from None
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            raise Retryable(f"anthropic could not be reached ({type(exc).__name__})") from None


@dataclass(slots=True)
class _Reply:
    """One message from the API: its text, its tool calls (id, name, arguments) and usage."""

    text: str = ""
    calls: list[Intent] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    @staticmethod
    def of(message: Message) -> _Reply:
        reply = _Reply(usage=Usage(message.usage.input_tokens, message.usage.output_tokens))
        texts = []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                given: object = block.input  # typed a dict, but built from the response unchecked
                if isinstance(given, dict):
                    reply.calls.append(Intent(block.name, given, block.id))
                else:
                    error = f"the arguments must be a JSON object: {str(given)[:200]}"
                    reply.calls.append(Intent(block.name, {}, block.id, error))
        reply.text = "".join(texts)
        return reply

    @staticmethod
    async def streamed(events: AsyncIterator[RawMessageStreamEvent], emit: Emit) -> _Reply:
        """Folds the documented event stream (`message_start`, `content_block_*`,
        `message_delta`, `message_stop`), relaying text and tool input as it comes; a stream
        that ends before `message_stop` is a dropped stream, tried again."""
        reply = _Reply()
        texts: list[str] = []
        blocks: dict[int, dict[str, str]] = {}
        input_tokens = output_tokens = 0
        stopped = False
        async for event in events:
            if event.type == "message_start":
                input_tokens = event.message.usage.input_tokens
                output_tokens = event.message.usage.output_tokens
            elif event.type == "content_block_start":
                block = event.content_block
                if block.type == "tool_use":
                    blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                    emit(CognitionEvent("tool_use_start", {"id": block.id, "name": block.name}))
                elif block.type == "text" and block.text:
                    texts.append(block.text)
            elif event.type == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    texts.append(delta.text)
                    emit(CognitionEvent("token", {"text": delta.text}))
                elif delta.type == "input_json_delta" and event.index in blocks:
                    blocks[event.index]["json"] += delta.partial_json
                    emit(
                        CognitionEvent(
                            "tool_use_delta",
                            {"id": blocks[event.index]["id"], "arguments": delta.partial_json},
                        )
                    )
            elif event.type == "message_delta":
                output_tokens = event.usage.output_tokens
            elif event.type == "message_stop":
                stopped = True
        if not stopped:
            emit(CognitionEvent("error", {"message": "the stream ended early; retrying"}))
            raise Retryable("anthropic's stream ended before the message did")
        for index in sorted(blocks):
            call = blocks[index]
            args, error = read_arguments(call["json"])
            reply.calls.append(Intent(call["name"], args, call["id"], error))
        reply.text = "".join(texts)
        reply.usage = Usage(input_tokens, output_tokens)
        return reply
