"""`delegate`: hand a sub-task to a child run with narrower authority, and wait for its end.

The tool itself only asks: the runtime gives each execution a hook (`ToolContext.delegate`) that
records the delegation, starts the child run under a writ attenuated from the parent's, and
returns the child's end as the observation (`run_id`, `status`, `terminated_by`,
`final_answer`, `usage`) with what the child spent. Whether the delegation narrows the parent's
authority was decided before, by the compiler; a refusal never reaches this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

# The bounds of `POST /runs`, so a child is asked for no more than a run could be; the tools
# cannot import the runtime or the API, and `tests/unit/test_delegation.py` holds them equal.
DELEGATE_TASK_CHARS_MAX = 20_000
DELEGATE_MAX_STEPS_MAX = 1000
DELEGATE_TOOL_SCOPES_MAX = 256
DELEGATE_SCOPE_CHARS_MAX = 200
DELEGATE_BUDGET_MAX = 2**53 - 1
DELEGATE_WALL_CLOCK_MS_MAX = 366 * 24 * 3600 * 1000
DELEGATE_SCRIPT_ELEMENTS_MAX = 10_000

_COUNT = {"type": "integer", "minimum": 0, "maximum": DELEGATE_BUDGET_MAX}

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        # A blank task and a scope no tool matches are refused by the compiler's delegation
        # stage (`invalid_arguments`): the schema stays in the fast acceptor's subset.
        "task": {"type": "string", "minLength": 1, "maxLength": DELEGATE_TASK_CHARS_MAX},
        "tool_scopes": {
            "type": "array",
            "minItems": 1,
            "maxItems": DELEGATE_TOOL_SCOPES_MAX,
            "items": {"type": "string", "minLength": 1, "maxLength": DELEGATE_SCOPE_CHARS_MAX},
        },
        "max_steps": {"type": "integer", "minimum": 1, "maximum": DELEGATE_MAX_STEPS_MAX},
        "budget": {
            "type": "object",
            "properties": {
                "tokens": _COUNT,
                "tool_calls": _COUNT,
                "usd_millicents": _COUNT,
                "wall_clock_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": DELEGATE_WALL_CLOCK_MS_MAX,
                },
            },
            "additionalProperties": False,
        },
        "cognition": {
            "type": "object",
            "properties": {
                "provider": {"type": "string", "minLength": 1, "maxLength": 64},
                "model": {"type": "string", "minLength": 1, "maxLength": 200},
                "script": {
                    "type": "array",
                    "items": {"type": "object"},
                    "maxItems": DELEGATE_SCRIPT_ELEMENTS_MAX,
                },
            },
            "additionalProperties": False,
        },
    },
    "required": ["task", "tool_scopes"],
    "additionalProperties": False,
}


class Delegate:
    spec = ToolSpec(
        name="delegate",
        description=(
            "Hand a sub-task to a child run and wait for its end. The child gets only the tool "
            "scopes you name (each within yours), a budget carved out of what you have left "
            "(by default all of it in each limit you have), and its own cognition (by default "
            "yours). The observation is the child's run_id, status, terminated_by, "
            "final_answer and usage; what the child spent counts against your budget."
        ),
        input_schema=INPUT_SCHEMA,
        effect=Effect.WRITE,
        risk=Risk.MEDIUM,
        idempotent=False,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        if ctx.delegate is None:
            raise ToolFailure(ToolFailureCode.UNAVAILABLE, "this runtime cannot start child runs")
        return await ctx.delegate(args)
