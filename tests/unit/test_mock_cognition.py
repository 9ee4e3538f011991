"""The deterministic mock provider: script validation and playback, and its scriptless default."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thymos.api import parse_json
from thymos.cognition import (
    SCRIPT_ELEMENT_SCHEMA,
    TURN_TOKENS_MAX,
    AssistantTurn,
    CognitionContext,
    CognitionEvent,
    CognitionFailed,
    MockCognition,
    Observation,
    ToolView,
    Turn,
    validate_script,
)
from thymos.core import Intent, Usage


def context(
    turns_taken: int = 0,
    tools: tuple[str, ...] = ("repo_map", "fs_read", "grep", "kv_get"),
    history: tuple[AssistantTurn | Observation, ...] = (),
    task: str = "find the answer",
) -> CognitionContext:
    return CognitionContext(
        run_id="run",
        task=task,
        step=turns_taken + 1,
        max_steps=10,
        turns_taken=turns_taken,
        tools=tuple(ToolView(name, "", {"type": "object"}) for name in tools),
        history=history,
    )


async def play(
    script: list[dict[str, Any]] | None, ctx: CognitionContext
) -> tuple[Turn, list[CognitionEvent]]:
    events: list[CognitionEvent] = []
    turn = await MockCognition(script).turn(ctx, events.append)
    return turn, events


API_FORMS: list[dict[str, Any]] = [
    {"tool": "fs_read", "args": {"path": "README.md"}},
    {"tool": "repo_map"},
    {"intents": [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, {"tool": "kv_get"}]},
    {"text": "thinking"},
    {"final": "done"},
    {"final": "done", "text": "here is why"},
    {"error": "provider down"},
    {"sleep_ms": 5},
    {"text": "slow", "sleep_ms": 0, "usage": {"input_tokens": 3, "output_tokens": 4}},
    {"tool": "grep", "args": {"pattern": "x"}, "usage": {"input_tokens": 0}},
]


def test_validate_script_accepts_every_form_api_md_documents() -> None:
    """Each element form of API.md (tool, intents, text, final, error, sleep_ms, with usage) is
    playable."""
    assert validate_script(API_FORMS) == []
    assert validate_script([]) == []


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        ("not a list", "must be a list"),
        ([1], "cognition.script[0] must be an object"),
        ([{"text": "a"}, {}], "cognition.script[1] needs one of"),
        ([{"tool": "a", "text": "b"}], "cognition.script[0] has more than one action"),
        ([{"text": "a", "colour": "red"}], "cognition.script[0] has unknown keys: colour"),
        ([{"tool": ""}], "cognition.script[0].tool must be a tool name"),
        ([{"tool": "a", "args": []}], "cognition.script[0].args must be an object"),
        ([{"intents": []}], "cognition.script[0].intents must be a list of 1 to"),
        (
            [{"intents": [{"tool": "a", "x": 1}]}],
            "cognition.script[0].intents[0] must be an object",
        ),
        ([{"intents": [{"tool": 5}]}], "cognition.script[0].intents[0].tool must be a tool name"),
        ([{"text": 5}], "cognition.script[0].text must be a string"),
        ([{"final": None}], "cognition.script[0].final must be a string"),
        ([{"sleep_ms": -1}], "cognition.script[0].sleep_ms must be an integer"),
        ([{"sleep_ms": True}], "cognition.script[0].sleep_ms must be an integer"),
        ([{"text": "a", "usage": {"tokens": 1}}], "cognition.script[0].usage takes"),
        ([{"text": "a", "usage": {"input_tokens": -1}}], "cognition.script[0].usage counts"),
    ],
)
def test_validate_script_names_the_bad_element(script: Any, fragment: str) -> None:
    """A script that cannot be played is refused with a sentence naming the element (and the
    key) that is wrong."""
    problems = validate_script(script)
    assert problems
    assert fragment in problems[0], problems


def test_validate_script_refuses_an_oversized_script() -> None:
    """A script longer than the named limit is refused as a whole."""
    problems = validate_script([{"text": "a"}] * 10_001)
    assert problems == [
        "cognition.script has more than 10000 elements (the server's THYMOS_SCRIPT_ELEMENTS_MAX)"
    ]


@pytest.mark.anyio
async def test_script_plays_the_element_for_the_turns_taken() -> None:
    """The element played is chosen by the turns already taken (so resume continues the script),
    and tool, intents, text and final become the turn's intents, text and final, with usage."""
    script: list[dict[str, Any]] = [
        {
            "tool": "fs_read",
            "args": {"path": "a"},
            "usage": {"input_tokens": 5, "output_tokens": 6},
        },
        {"intents": [{"tool": "kv_get", "args": {"key": "k"}}, {"tool": "repo_map"}]},
        {"text": "two words"},
        {"final": "the answer", "text": "because"},
    ]
    first, _ = await play(script, context(0))
    assert first.intents == (Intent("fs_read", {"path": "a"}, "call_1_0"),)
    assert first.usage == Usage(5, 6)
    second, events = await play(script, context(1))
    assert second.intents == (
        Intent("kv_get", {"key": "k"}, "call_2_0"),
        Intent("repo_map", {}, "call_2_1"),
    )
    assert [e.type for e in events] == [
        *["tool_use_start", "tool_use_delta", "tool_use_done"] * 2,
        "turn_complete",
    ]
    third, events = await play(script, context(2))
    assert (third.text, third.intents, third.final) == ("two words", (), None)
    assert [e.data["text"] for e in events if e.type == "token"] == ["two ", "words"]
    fourth, _ = await play(script, context(3))
    assert (fourth.text, fourth.final) == ("because", "the answer")


@pytest.mark.anyio
async def test_a_scripted_error_raises_cognition_failed() -> None:
    """An error element makes the turn fail as a provider would, with the scripted message."""
    with pytest.raises(CognitionFailed) as caught:
        await play([{"error": "model unavailable"}], context(0))
    assert caught.value.message == "model unavailable"
    assert caught.value.code == "scripted_error"


@pytest.mark.anyio
async def test_script_exhaustion_raises_cognition_failed() -> None:
    """Asking for a turn past the end of the script raises CognitionFailed (script_exhausted)."""
    with pytest.raises(CognitionFailed) as caught:
        await play([{"text": "only one"}], context(1))
    assert caught.value.code == "script_exhausted"
    assert "ran out after 1 turns" in caught.value.message


@pytest.mark.anyio
async def test_sleep_ms_makes_the_turn_take_that_long() -> None:
    """A sleep_ms element delays the turn by at least that long and otherwise yields no action."""
    started = time.monotonic()
    turn, _ = await play([{"sleep_ms": 30}], context(0))
    assert time.monotonic() - started >= 0.03
    assert turn == Turn()


@pytest.mark.anyio
async def test_default_proposes_a_read_only_tool_then_answers() -> None:
    """Without a script the mock first proposes a read-only tool that is in scope, and once it
    has an observation it gives a final answer that mentions what it saw."""
    first, _ = await play(None, context(0))
    assert [i.tool for i in first.intents] == ["repo_map"]
    assert first.final is None
    only_grep, _ = await play(None, context(0, tools=("grep",), task="find widgets here"))
    assert only_grep.intents[0].tool == "grep"
    assert only_grep.intents[0].args["pattern"] == "find"
    seen = Observation("call_1_0", "repo_map", "committed", {"files": []})
    answer, _ = await play(None, context(1, history=(seen,)))
    assert answer.intents == ()
    assert answer.final is not None
    assert "repo_map committed" in answer.final
    nothing, _ = await play(None, context(0, tools=()))
    assert nothing.final is not None
    assert "no tools were available" in nothing.final


_KEYS = ("tool", "args", "intents", "text", "final", "error", "sleep_ms", "usage", "other")
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=TURN_TOKENS_MAX + 5),
    st.sampled_from([0.5, 3.0, -1.0]),
    st.text(max_size=3),
    st.just({}),
    st.just({"path": "x"}),
    st.just({"input_tokens": 1}),
    st.just({"input_tokens": 1, "extra": 2}),
    st.just({"output_tokens": -1}),
    st.just([]),
    st.just([{"tool": "kv_get"}]),
    st.just([{"tool": ""}]),
    st.just([{"tool": "kv_get", "args": []}]),
    st.just([{"tool": "kv_get", "why": 1}]),
    st.just([7]),
)


_ELEMENTS = st.one_of(
    # Anything at all, and the documented forms with one key changed or added: the second finds
    # the near misses (a null where an object goes, an extra key) that random objects rarely hit.
    st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4),
    st.builds(
        lambda base, key, value: {**base, key: value},
        st.sampled_from(API_FORMS),
        st.sampled_from(_KEYS),
        _VALUES,
    ),
)


@settings(max_examples=1500, deadline=None)
@given(_ELEMENTS)
def test_the_published_element_schema_accepts_exactly_what_the_mock_plays(
    element: dict[str, Any],
) -> None:
    """The OpenAPI document's script element schema and `validate_script` agree on every
    element: a client that follows the schema is never refused, and nothing the schema refuses
    is played. The element goes through the HTTP edge's JSON reader first, as a request's does
    (it reads `3.0` as the integer `3`, as JSON Schema does)."""
    by_schema = jsonschema.Draft202012Validator(SCRIPT_ELEMENT_SCHEMA).is_valid(element)
    received = parse_json(orjson.dumps([element]))
    by_mock = validate_script(received) == []
    assert by_schema == by_mock, (element, validate_script(received))


@pytest.mark.parametrize("element", API_FORMS)
def test_every_documented_form_is_valid_under_the_schema(element: dict[str, Any]) -> None:
    """Each form API.md lists is valid under the published schema."""
    jsonschema.Draft202012Validator(SCRIPT_ELEMENT_SCHEMA).validate(element)
