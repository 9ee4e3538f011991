"""The deterministic mock provider: it plays a script, or behaves sensibly without one.

Script elements (one per turn), as `API.md` specifies:
`{"tool", "args"}`, `{"intents": [...]}`, `{"text"}`, `{"final"}`, `{"error"}`, `{"sleep_ms"}`,
each optionally with `"usage": {"input_tokens", "output_tokens"}`. The element for a turn is chosen
by the number of turns the run has already taken (from the ledger), so a resumed run continues the
script where it stopped. It never touches the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from thymos.core import Intent, Usage

from ._protocol import (
    CognitionContext,
    CognitionEvent,
    CognitionFailed,
    Emit,
    Observation,
    Turn,
)

SCRIPT_ELEMENTS_MAX = 10_000
"""The default bound on a mock script's length (`THYMOS_SCRIPT_ELEMENTS_MAX`)."""
SCRIPT_ELEMENTS_LIMIT = 10_000_000
"""What any request may carry at all (the body size bounds it first)."""
SCRIPT_INTENTS_PER_TURN_MAX = 1000
SLEEP_MS_MAX = 600_000
TURN_TOKENS_MAX = 10_000_000
"""Tokens one turn may report, per direction: far above any model's context, and small enough
that a run's totals stay exact integers whatever its length."""
ACTIONS = ("tool", "intents", "text", "final", "error")
_ALLOWED_KEYS = {
    "tool": {"tool", "args", "usage", "sleep_ms"},
    "intents": {"intents", "usage", "sleep_ms"},
    "text": {"text", "usage", "sleep_ms"},
    "final": {"final", "usage", "sleep_ms", "text"},
    "error": {"error", "usage", "sleep_ms"},
    None: {"sleep_ms", "usage"},
}


def _element(action: dict[str, Any] | None, required: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "sleep_ms": {"type": "integer", "minimum": 0, "maximum": SLEEP_MS_MAX},
        "usage": {
            "type": "object",
            "properties": {
                "input_tokens": {"type": "integer", "minimum": 0, "maximum": TURN_TOKENS_MAX},
                "output_tokens": {"type": "integer", "minimum": 0, "maximum": TURN_TOKENS_MAX},
            },
            "additionalProperties": False,
        },
    }
    properties.update(action or {})
    return {
        "type": "object",
        "properties": properties,
        "required": [required or "sleep_ms"],
        "additionalProperties": False,
    }


def script_element_schema(args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of one script element; `args` is the schema of a tool call's arguments
    (any object by default; the OpenAPI document narrows it to values stored exactly)."""
    intent_properties: dict[str, Any] = {
        "tool": {"type": "string", "minLength": 1},
        "args": args or {"type": "object"},
    }
    intent = {
        "type": "object",
        "properties": intent_properties,
        "required": ["tool"],
        "additionalProperties": False,
    }
    text = {"type": "string"}
    return {
        "title": "ScriptElement",
        "description": "One turn of the mock's script: a tool call, several intents, text, the "
        "final answer, a provider error, or only a pause; any of them may report usage and "
        "take sleep_ms.",
        "oneOf": [
            _element(intent_properties, "tool"),
            _element(
                {
                    "intents": {
                        "type": "array",
                        "items": intent,
                        "minItems": 1,
                        "maxItems": SCRIPT_INTENTS_PER_TURN_MAX,
                    }
                },
                "intents",
            ),
            _element({"text": text}, "text"),
            _element({"final": text, "text": text}, "final"),
            _element({"error": text}, "error"),
            _element(None, None),
        ],
    }


SCRIPT_ELEMENT_SCHEMA = script_element_schema()
"""The JSON Schema of a script element, published in the OpenAPI document. It accepts exactly
what `validate_script` accepts (a property test holds the two equal)."""


def validate_script(script: Any, elements_max: int = SCRIPT_ELEMENTS_MAX) -> list[str]:
    """Problems with a script, as sentences naming the element; empty when it is playable.
    `elements_max` is the server's bound (`THYMOS_SCRIPT_ELEMENTS_MAX`)."""
    if not isinstance(script, list):
        return ["cognition.script must be a list of turn elements"]
    if len(script) > elements_max:
        return [
            f"cognition.script has more than {elements_max} elements "
            "(the server's THYMOS_SCRIPT_ELEMENTS_MAX)"
        ]
    problems: list[str] = []
    for index, element in enumerate(script):
        where = f"cognition.script[{index}]"
        if not isinstance(element, dict):
            problems.append(f"{where} must be an object")
            continue
        actions = [key for key in ACTIONS if key in element]
        if len(actions) > 1 and set(actions) != {"final", "text"}:
            problems.append(f"{where} has more than one action: {', '.join(actions)}")
            continue
        action = "final" if "final" in actions else (actions[0] if actions else None)
        if action is None and "sleep_ms" not in element:
            problems.append(f"{where} needs one of tool, intents, text, final, error or sleep_ms")
            continue
        extra = set(element) - _ALLOWED_KEYS[action]
        if extra:
            problems.append(f"{where} has unknown keys: {', '.join(sorted(extra))}")
        problems.extend(_check_element(where, element, action))
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_element(where: str, element: Mapping[str, Any], action: str | None) -> list[str]:
    problems: list[str] = []
    if "sleep_ms" in element and not (
        _is_int(element["sleep_ms"]) and 0 <= element["sleep_ms"] <= SLEEP_MS_MAX
    ):
        problems.append(f"{where}.sleep_ms must be an integer from 0 to {SLEEP_MS_MAX}")
    if "usage" in element:
        usage = element["usage"]
        if not isinstance(usage, dict) or set(usage) - {"input_tokens", "output_tokens"}:
            problems.append(f"{where}.usage takes input_tokens and output_tokens")
        elif not all(_is_int(v) and 0 <= v <= TURN_TOKENS_MAX for v in usage.values()):
            problems.append(f"{where}.usage counts must be integers from 0 to {TURN_TOKENS_MAX}")
    if action == "tool":
        problems.extend(_check_intent(where, element))
    elif action == "intents":
        intents = element["intents"]
        if (
            not isinstance(intents, list)
            or not intents
            or len(intents) > SCRIPT_INTENTS_PER_TURN_MAX
        ):
            problems.append(
                f"{where}.intents must be a list of 1 to {SCRIPT_INTENTS_PER_TURN_MAX} intents"
            )
        else:
            for i, intent in enumerate(intents):
                if not isinstance(intent, dict) or set(intent) - {"tool", "args"}:
                    problems.append(f"{where}.intents[{i}] must be an object with tool and args")
                else:
                    problems.extend(_check_intent(f"{where}.intents[{i}]", intent))
    elif action in ("text", "final", "error"):
        for key in ("text", "final", "error"):
            if key in element and not isinstance(element[key], str):
                problems.append(f"{where}.{key} must be a string")
    return problems


def _check_intent(where: str, intent: Mapping[str, Any]) -> list[str]:
    if not isinstance(intent.get("tool"), str) or not intent["tool"]:
        return [f"{where}.tool must be a tool name"]
    if not isinstance(intent.get("args", {}), dict):
        return [f"{where}.args must be an object"]
    return []


def _usage(element: Mapping[str, Any]) -> Usage:
    usage = element.get("usage") or {}
    return Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0))


def _stream_text(text: str, emit: Emit) -> None:
    """Emit text as `token` events, a word (with its trailing space) at a time."""
    start = 0
    for index, char in enumerate(text):
        if char == " ":
            emit(CognitionEvent("token", {"text": text[start : index + 1]}))
            start = index + 1
    if start < len(text):
        emit(CognitionEvent("token", {"text": text[start:]}))


def _stream_intents(intents: Sequence[Intent], emit: Emit) -> None:
    for intent in intents:
        emit(CognitionEvent("tool_use_start", {"call_id": intent.call_id, "tool": intent.tool}))
        emit(
            CognitionEvent("tool_use_delta", {"call_id": intent.call_id, "args": dict(intent.args)})
        )
        emit(CognitionEvent("tool_use_done", {"call_id": intent.call_id}))


class MockCognition:
    """Deterministic cognition for tests, demos and benchmarks."""

    live = False

    def __init__(self, script: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._script = list(script) if script is not None else None

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        if self._script is None:
            turn = _default_turn(context)
        else:
            index = context.turns_taken
            if index >= len(self._script):
                raise CognitionFailed(
                    f"the mock script ran out after {len(self._script)} turns without a final answer",
                    code="script_exhausted",
                )
            element = self._script[index]
            if element.get("sleep_ms"):
                await asyncio.sleep(element["sleep_ms"] / 1000)
            turn = _scripted_turn(context, element)
        if turn.text:
            _stream_text(turn.text, emit)
        if turn.final is not None:
            _stream_text(turn.final, emit)
        _stream_intents(turn.intents, emit)
        emit(CognitionEvent("turn_complete", {"step": context.step, "usage": turn.usage.as_dict()}))
        return turn


def _call_id(context: CognitionContext, index: int) -> str:
    return f"call_{context.step}_{index}"


def _scripted_turn(context: CognitionContext, element: Mapping[str, Any]) -> Turn:
    usage = _usage(element)
    if "error" in element:
        raise CognitionFailed(str(element["error"]), code="scripted_error")
    if "final" in element:
        return Turn(text=element.get("text", ""), final=str(element["final"]), usage=usage)
    if "text" in element:
        return Turn(text=str(element["text"]), usage=usage)
    raw: list[Mapping[str, Any]] = []
    if "tool" in element:
        raw = [element]
    elif "intents" in element:
        raw = element["intents"]
    intents = tuple(
        Intent(tool=item["tool"], args=dict(item.get("args", {})), call_id=_call_id(context, i))
        for i, item in enumerate(raw)
    )
    return Turn(intents=intents, usage=usage)


_DEFAULT_PREFERENCE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("repo_map", {"max_entries": 50}),
    ("fs_read", {"path": "README.md", "limit": 40}),
    ("kv_get", {"key": "notes"}),
)


def _default_turn(context: CognitionContext) -> Turn:
    """Without a script: look once with a read-only tool, then answer from what was seen."""
    usage = Usage(input_tokens=len(context.task.split()) + 10, output_tokens=12)
    observations = [item for item in context.history if isinstance(item, Observation)]
    if not observations:
        available = {tool.name for tool in context.tools}
        for name, args in _DEFAULT_PREFERENCE:
            if name in available:
                intent = Intent(tool=name, args=args, call_id=_call_id(context, 0))
                return Turn(text=f"I will look with {name} first.", intents=(intent,), usage=usage)
        if "grep" in available:
            word = next((w for w in context.task.split() if w.isalnum() and len(w) > 3), "TODO")
            intent = Intent(
                tool="grep", args={"pattern": word, "max_matches": 20}, call_id=_call_id(context, 0)
            )
            return Turn(text="I will search the workspace first.", intents=(intent,), usage=usage)
    seen = ", ".join(f"{o.tool} {o.outcome}" for o in observations) or "no tools were available"
    answer = f"Mock answer for the task {context.task!r}: {seen}."
    return Turn(final=answer, usage=usage)
