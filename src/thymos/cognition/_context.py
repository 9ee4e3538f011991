"""The model's view of a run: its history fitted to the context window by one rule, documented in
`docs/COGNITION.md`, applied the same way by every adapter.

The rule depends only on the context (which is a fold of the ledger) and the run's window, so
a resumed or branched run gives the model exactly the view it would have had:

1. The runtime hands over at most the latest `CONTEXT_HISTORY_MAX` history items.
2. Sizes are estimated, not tokenised: one token per `CHARS_PER_TOKEN` characters of an item's
   JSON rendering. The budget for history is the window minus the reserve for the answer
   (`OUTPUT_RESERVE_TOKENS`, at most a quarter of the window) minus the fixed part (system
   prompt, task, tool definitions).
3. One observation's content is never more than a quarter of that budget: longer content is
   cut and marked with how many characters were left out.
4. History is taken in exchanges (an assistant turn with the observations that answer it),
   newest first, while they fit; the latest exchange is always kept. Older exchanges are left
   out whole, so a tool result never loses its call, and the model is told how many.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import orjson

from ._protocol import AssistantTurn, CognitionContext, HistoryItem, Observation

SYSTEM_PROMPT = (
    "You act through the tools you are given; every call is checked by a runtime that may "
    "reject it, and you will see each call's outcome. Call tools until the task is done, then "
    "answer with your final answer as plain text and no tool call."
)
"""The same for every run and every provider (docs/COGNITION.md)."""

CHARS_PER_TOKEN = 3
"""Conservative for English text and JSON (vendors' tokenisers average nearer 4)."""
OUTPUT_RESERVE_TOKENS = 4096
"""Left free for the model's answer."""
WINDOW_TOKENS_MIN = 1024
"""The smallest window a run may ask for (`cognition.context_tokens`)."""
WINDOW_TOKENS_MAX = 10_000_000


def estimate_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else compact_json(value)
    return len(text) // CHARS_PER_TOKEN + 1


def omitted_note(count: int) -> str:
    return (
        f"[{count} earlier history item{'s' if count != 1 else ''} of this run "
        "were left out to fit the context window.]"
    )


def fit_history(context: CognitionContext, window_tokens: int, fixed: Any) -> CognitionContext:
    """The context with its history fitted to `window_tokens` (rule above); `fixed` is what the
    adapter sends besides the history (its size is subtracted first). `omitted` counts the
    history items left out."""
    reserve = min(OUTPUT_RESERVE_TOKENS, window_tokens // 4)
    budget = max(window_tokens - reserve - estimate_tokens(fixed), 0)
    content_max_chars = max(budget // 4, 64) * CHARS_PER_TOKEN
    exchanges = _exchanges(tuple(_cut(item, content_max_chars) for item in context.history))
    kept: list[tuple[HistoryItem, ...]] = []
    used = 0
    for exchange in reversed(exchanges):
        size = sum(_item_tokens(item) for item in exchange)
        if kept and used + size > budget:
            break
        kept.append(exchange)
        used += size
    history = tuple(item for exchange in reversed(kept) for item in exchange)
    omitted = len(context.history) - len(history) + context.omitted
    return replace(context, history=history, omitted=omitted)


def _exchanges(history: tuple[HistoryItem, ...]) -> list[tuple[HistoryItem, ...]]:
    groups: list[list[HistoryItem]] = []
    for item in history:
        if isinstance(item, AssistantTurn) or not groups:
            groups.append([item])
        else:
            groups[-1].append(item)
    return [tuple(group) for group in groups]


def _cut(item: HistoryItem, max_chars: int) -> HistoryItem:
    if not isinstance(item, Observation):
        return item
    rendered = compact_json(item.content)
    if len(rendered) <= max_chars:
        return item
    left_out = len(rendered) - max_chars
    return replace(item, content=f"{rendered[:max_chars]}…[{left_out} characters left out]")


def _item_tokens(item: HistoryItem) -> int:
    if isinstance(item, AssistantTurn):
        calls = [(i.call_id, i.tool, dict(i.args)) for i in item.intents]
        return estimate_tokens(item.text) + estimate_tokens(calls)
    return estimate_tokens([item.call_id, item.outcome, item.approved_by, item.content])


def compact_json(value: Any) -> str:
    """Compact JSON as a model reads it, keys sorted (what no JSON type is, as text). Sorted,
    because the same value folded live and read back from the ledger's canonical bytes may hold
    its keys in different orders; the model must be sent the same text either way."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # keys that are not strings, integers past 64 bits
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, default=str, sort_keys=True
        )


def sorted_keys(value: Any) -> Any:
    """The value with every object's keys in sorted order (for JSON sent as an object)."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [sorted_keys(item) for item in value]
    return value


def observation_text(item: Observation) -> str:
    """How an observation reads to a model: its outcome, who approved it (if policy made it
    wait for approval) and its content (a rejection's reason and message, a failure's error)."""
    seen: dict[str, Any] = {"outcome": item.outcome}
    if item.approved_by:
        seen["approved_by"] = list(item.approved_by)
    seen["content"] = item.content
    return compact_json(seen)


def read_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments as the model wrote them: an object, or why they are not one
    (the call is then rejected `invalid_arguments`, and the model sees why)."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        return (
            {},
            f"the arguments are not valid JSON ({exc.msg} at character {exc.pos}): {raw[:200]}",
        )
    if not isinstance(value, dict):
        return {}, f"the arguments must be a JSON object, not {type(value).__name__}: {raw[:200]}"
    return value, None
