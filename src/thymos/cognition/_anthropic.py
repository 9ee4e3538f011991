"""Anthropic Messages, on the official `anthropic` SDK, streamed.

The context becomes a system prompt, the task as the first user message, then the history:
each assistant turn as `text` and `tool_use` blocks, and the observations that answer it as one
user message of `tool_result` blocks (a rejection or failure marked `is_error`). The tools sent
are exactly the run's scoped tools. Text streams as `token` events and tool input as
`tool_use_*` events; the usage the API reports is returned.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

from thymos.core import Intent, Usage

from ._openai import INVALID_JSON, REQUEST_TIMEOUT_S, SYSTEM_PROMPT
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


def anthropic_messages(context: CognitionContext) -> list[dict[str, Any]]:
    """The conversation rebuilt from the history; results whose call fell out of the bounded
    history are left out (a tool result must answer a call of the previous message)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": context.task}]
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
                        "input": dict(intent.args),
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
                "content": json.dumps(
                    {"outcome": item.outcome, "content": item.content}, default=str
                ),
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

    def __init__(self, *, model: str, base_url: str | None, api_key: str | None) -> None:
        self.model = model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "not-set",
            base_url=base_url,
            max_retries=0,  # `with_retries` retries whole turns, dropped streams included
            timeout=REQUEST_TIMEOUT_S,
        )

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            "system": SYSTEM_PROMPT,
            "messages": anthropic_messages(context),
        }
        if context.tools:
            request["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
                for t in context.tools
            ]
        message = await with_retries(lambda: self._attempt(request, emit), what="anthropic")
        text = "".join(block.text for block in message.content if block.type == "text")
        intents = []
        for block in message.content:
            if block.type == "tool_use":
                args = (
                    block.input
                    if isinstance(block.input, dict)
                    else {INVALID_JSON: str(block.input)}
                )
                intents.append(Intent(block.name, args, block.id))
                emit(CognitionEvent("tool_use_done", {"id": block.id, "name": block.name}))
        usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
        emit(CognitionEvent("turn_complete", {"usage": usage.as_dict()}))
        return Turn(
            text=text if intents else "",
            intents=tuple(intents),
            final=None if intents else text,
            usage=usage,
        )

    async def _attempt(self, request: dict[str, Any], emit: Emit) -> Any:
        try:
            async with self._client.messages.stream(**request) as stream:
                async for event in stream:
                    self._relay(event, emit)
                return await stream.get_final_message()
        except anthropic.APIStatusError as exc:
            message = f"anthropic answered {exc.status_code}: {exc.message}"[:600]
            raise status_failure(exc.status_code, message, exc.response.headers) from None
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            raise Retryable(f"anthropic could not be reached ({type(exc).__name__})") from None

    @staticmethod
    def _relay(event: Any, emit: Emit) -> None:
        kind = getattr(event, "type", "")
        if kind == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            emit(CognitionEvent("tool_use_start", {"id": block.id, "name": block.name}))
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                emit(CognitionEvent("token", {"text": delta.text}))
            elif delta.type == "input_json_delta":
                emit(CognitionEvent("tool_use_delta", {"arguments": delta.partial_json}))
