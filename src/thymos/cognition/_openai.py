"""OpenAI Chat Completions (and every OpenAI-compatible server), on the official `openai` SDK.

The context becomes messages: a system message, the task, then the history as assistant turns
(with their `tool_calls`) and `tool` messages (each observation, a rejection's reason
included), fitted to the model's window (`_context.fit_history`). The tools sent are exactly
the run's scoped tools, with their schemas. A turn is streamed unless the run asks otherwise
(text as `token` events, tool calls as `tool_use_*` events); the usage the server reports is
returned. Tool calls whose arguments are not a JSON object become intents carrying why
(`args_error`), which the compiler rejects (`invalid_arguments`); the model sees why next turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from thymos.core import Intent, Usage

from ._context import (
    SYSTEM_PROMPT,
    compact_json,
    fit_history,
    observation_text,
    omitted_note,
    read_arguments,
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

COMPLETIONS_PATH = "/chat/completions"
"""Posted through the SDK's client (its auth, errors and stream parsing) with the body as built
here: the request is plain JSON already, and the SDK's per-field transformation of typed
parameters cost about 40 ms a turn on a long history (measured by `thymos bench`)."""


def tool_definitions(context: CognitionContext) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.input_schema),
            },
        }
        for tool in context.tools
    ]


def chat_messages(context: CognitionContext) -> list[dict[str, Any]]:
    """The conversation the model sees, rebuilt from the run's (fitted) history, so a resumed
    run sends what it would have sent. Tool results whose call is not in the history are left
    out, since a tool message must answer a call in the conversation."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": context.task},
    ]
    if context.omitted:
        messages.append({"role": "user", "content": omitted_note(context.omitted)})
    open_calls: set[str] = set()
    for item in context.history:
        if isinstance(item, AssistantTurn):
            message: dict[str, Any] = {"role": "assistant", "content": item.text or None}
            if item.intents:
                message["tool_calls"] = [
                    {
                        "id": intent.call_id,
                        "type": "function",
                        "function": {
                            "name": intent.tool,
                            "arguments": compact_json(dict(intent.args)),
                        },
                    }
                    for intent in item.intents
                ]
                open_calls.update(intent.call_id for intent in item.intents)
            if message["content"] is not None or item.intents:
                messages.append(message)
        elif isinstance(item, Observation) and item.call_id in open_calls:
            open_calls.discard(item.call_id)
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": observation_text(item)}
            )
    return messages


def _intent(call_id: str, name: str, arguments: str) -> Intent:
    args, error = read_arguments(arguments)
    return Intent(name, args, call_id, error)


class OpenAICognition:
    live = True

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str | None,
        api_key: str | None,
        window_tokens: int,
        stream: bool = True,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.stream = stream
        self.window_tokens = window_tokens
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url,
            max_retries=0,  # `with_retries` retries whole turns, dropped streams included
            timeout=REQUEST_TIMEOUT_S,
            http_client=http_client,
        )

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        tools = tool_definitions(context)
        fitted = fit_history(context, self.window_tokens, [SYSTEM_PROMPT, context.task, tools])
        request: dict[str, Any] = {"model": self.model, "messages": chat_messages(fitted)}
        if tools:
            request["tools"] = tools
        return await with_retries(lambda: self._attempt(request, emit), what=self.provider)

    async def _attempt(self, request: dict[str, Any], emit: Emit) -> Turn:
        try:
            if self.stream:
                return await self._streamed(request, emit)
            whole = await self._client.post(COMPLETIONS_PATH, body=request, cast_to=ChatCompletion)
            return self._parsed(whole, emit)
        except openai.APIStatusError as exc:
            message = f"{self.provider} answered {exc.status_code}: {_message(exc.body)}"
            raise status_failure(exc.status_code, message, exc.response.headers) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise Retryable(
                f"{self.provider} could not be reached ({type(exc).__name__})"
            ) from None

    def _parsed(self, response: Any, emit: Emit) -> Turn:
        """A whole (not streamed) completion: its calls and usage are still reported as
        `tool_use_done` and `turn_complete` events."""
        if not response.choices:
            raise Retryable(f"{self.provider} answered with no choices")
        choice = response.choices[0].message
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments or ""}
            for c in choice.tool_calls or ()
        ]
        intents = []
        for call in calls:
            emit(CognitionEvent("tool_use_done", call))
            intents.append(_intent(call["id"], call["name"], call["arguments"]))
        text = choice.content or ""
        reported = response.usage
        usage = Usage(
            reported.prompt_tokens if reported else 0,
            reported.completion_tokens if reported else 0,
        )
        emit(CognitionEvent("turn_complete", {"usage": usage.as_dict()}))
        return Turn(
            text=text if intents else "",
            intents=tuple(intents),
            final=None if intents else text,
            usage=usage,
        )

    async def _streamed(self, request: dict[str, Any], emit: Emit) -> Turn:
        stream = await self._client.post(
            COMPLETIONS_PATH,
            body={**request, "stream": True, "stream_options": {"include_usage": True}},
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage = Usage()
        finished = False
        async for chunk in stream:
            if chunk.usage is not None:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for choice in chunk.choices:
                finished = finished or choice.finish_reason is not None
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                    emit(CognitionEvent("token", {"text": delta.content}))
                for part in delta.tool_calls or ():
                    call = calls.get(part.index)
                    if call is None:
                        call = calls[part.index] = {"id": "", "name": "", "arguments": ""}
                    if part.id:
                        call["id"] = part.id
                    if part.function is not None and part.function.name:
                        call["name"] = part.function.name
                        emit(
                            CognitionEvent(
                                "tool_use_start", {"id": call["id"], "name": call["name"]}
                            )
                        )
                    if part.function is not None and part.function.arguments:
                        call["arguments"] += part.function.arguments
                        emit(
                            CognitionEvent(
                                "tool_use_delta",
                                {"id": call["id"], "arguments": part.function.arguments},
                            )
                        )
        if not finished:
            emit(CognitionEvent("error", {"message": "the stream ended early; retrying"}))
            raise Retryable(f"{self.provider}'s stream ended before the turn did")
        intents = []
        for index in sorted(calls):
            call = calls[index]
            emit(CognitionEvent("tool_use_done", dict(call)))
            intents.append(_intent(call["id"] or f"call_{index}", call["name"], call["arguments"]))
        emit(CognitionEvent("turn_complete", {"usage": usage.as_dict()}))
        joined = "".join(text)
        return Turn(
            text=joined if intents else "",
            intents=tuple(intents),
            final=None if intents else joined,
            usage=usage,
        )


def _message(body: object) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return "an error"
