"""The context-window rule (`thymos.cognition._context`, docs/COGNITION.md): history is fitted
by whole exchanges, newest first, the latest always kept; an observation's content is cut to a
quarter of the budget; the model is told how many items were left out; the result depends on
nothing but the context and the window."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from thymos.cognition import (
    AssistantTurn,
    CognitionContext,
    HistoryItem,
    Observation,
    ToolView,
    fit_history,
)
from thymos.cognition._anthropic import anthropic_messages
from thymos.cognition._context import observation_text
from thymos.cognition._openai import chat_messages
from thymos.core import Intent

TOOLS = (ToolView("kv_set", "set a key", {"type": "object"}),)


def exchange(step: int, value_chars: int = 10, output: Any = "ok") -> tuple[HistoryItem, ...]:
    call = f"call_{step}"
    intent = Intent("kv_set", {"key": f"k{step}", "value": "v" * value_chars}, call)
    return (
        AssistantTurn(step, f"turn {step}", (intent,)),
        Observation(call, "kv_set", "committed", output),
    )


def context(history: tuple[HistoryItem, ...], omitted: int = 0) -> CognitionContext:
    return CognitionContext(
        run_id="r",
        task="fill the store",
        step=len(history) // 2 + 1,
        max_steps=100,
        turns_taken=len(history) // 2,
        tools=TOOLS,
        history=history,
        omitted=omitted,
    )


def test_a_history_that_fits_is_sent_whole() -> None:
    history = exchange(1) + exchange(2)
    fitted = fit_history(context(history), 128_000, ["system", "task"])
    assert fitted.history == history
    assert fitted.omitted == 0
    assert not any("left out" in str(m["content"]) for m in chat_messages(fitted))


def test_old_exchanges_are_left_out_whole_and_the_model_is_told() -> None:
    history = tuple(item for step in range(1, 21) for item in exchange(step, value_chars=3000))
    fitted = fit_history(context(history), 8192, ["system", "task"])
    kept = fitted.history
    assert 2 <= len(kept) < len(history)
    assert kept == history[-len(kept) :], "the newest items are the ones kept"
    assert isinstance(kept[0], AssistantTurn), "an exchange is kept whole: no orphan result"
    assert fitted.omitted == len(history) - len(kept)
    messages = chat_messages(fitted)
    assert messages[2]["content"] == (
        f"[{fitted.omitted} earlier history items of this run were left out to fit the "
        "context window.]"
    )
    first_user = anthropic_messages(fitted)[0]["content"]
    assert first_user[1]["text"] == messages[2]["content"]


def test_items_the_runtime_already_dropped_are_counted() -> None:
    fitted = fit_history(context(exchange(1), omitted=7), 128_000, [])
    assert fitted.omitted == 7
    assert "7 earlier history items" in chat_messages(fitted)[2]["content"]


def test_the_latest_exchange_is_kept_even_when_it_alone_is_too_big() -> None:
    history = exchange(1) + exchange(2, value_chars=50_000)
    fitted = fit_history(context(history), 2048, [])
    assert fitted.history == history[2:]


def test_a_huge_observation_is_cut_and_says_how_much_was_left_out() -> None:
    output = {"text": "x" * 100_000}
    fitted = fit_history(context(exchange(1, output=output)), 8192, [])
    seen = fitted.history[1]
    assert isinstance(seen, Observation)
    assert isinstance(seen.content, str)
    assert seen.content.endswith("characters left out]")
    assert len(seen.content) < 10_000
    left_out = int(seen.content.rsplit("[", 1)[1].split()[0])
    assert len(seen.content.split("…[")[0]) + left_out == len('{"text":""}') + 100_000


def test_approvals_and_denials_read_as_such() -> None:
    approved = Observation("c", "kv_set", "committed", None, ("alice", "bob"))
    assert '"approved_by":["alice","bob"]' in observation_text(approved)
    denied = Observation(
        "d", "kv_set", "rejected", {"reason": "approval_denied", "details": {"approver": "carol"}}
    )
    assert "carol" in observation_text(denied) and "approved_by" not in observation_text(denied)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=30),
    window=st.integers(min_value=1024, max_value=64_000),
)
def test_the_fit_is_a_function_of_the_context_and_window(sizes: list[int], window: int) -> None:
    """Same input, same view (what makes a resumed run's context equal); the result is always
    a suffix of whole exchanges, and within the budget unless only the latest is left."""
    history = tuple(item for step, n in enumerate(sizes, 1) for item in exchange(step, n))
    one = fit_history(context(history), window, ["s"])
    two = fit_history(context(history), window, ["s"])
    assert one == two
    assert len(one.history) % 2 == 0 and len(one.history) >= 2
    assert [i.step for i in one.history if isinstance(i, AssistantTurn)] == list(
        range(len(sizes) - len(one.history) // 2 + 1, len(sizes) + 1)
    )
    assert one.omitted == len(history) - len(one.history)
