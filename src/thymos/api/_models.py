"""Request and response models of the HTTP surface (pydantic at the edge only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from thymos.cognition import (
    PROVIDERS,
    SCRIPT_ELEMENTS_LIMIT,
    WINDOW_TOKENS_MAX,
    WINDOW_TOKENS_MIN,
    script_element_schema,
)
from thymos.core import Budget, RunStatus
from thymos.runtime import (
    MAX_STEPS_DEFAULT,
    MAX_STEPS_LIMIT,
    SKILLS_PER_RUN_MAX,
    TASK_CHARS_MAX,
    BranchCognition,
    BranchRun,
    StartRun,
)

TOOL_SCOPES_MAX = 256
SKILL_REFERENCE_CHARS_MAX = 200


class _Strict(BaseModel):
    # Unknown fields are errors (a typo is not a silent default); no type coercion.
    model_config = ConfigDict(extra="forbid", strict=True)


SCRIPT_ARGS_SCHEMA = {
    "type": "object",
    "description": "The tool's arguments: any JSON object. Like every value in a body, its "
    "numbers must lie within +/-(2^53 - 1) (else 422 number_out_of_range) and the whole body "
    "may nest at most 64 levels (else 422 json_too_deep).",
}

ScriptElement = Annotated[dict[str, Any], WithJsonSchema(script_element_schema(SCRIPT_ARGS_SCHEMA))]
"""A script element: checked by the mock's `validate_script` (422 `invalid_script`); its schema
says exactly the same."""


class CognitionBody(_Strict):
    provider: str | None = Field(
        None, min_length=1, max_length=64, json_schema_extra={"enum": list(PROVIDERS)}
    )
    model: str | None = Field(None, max_length=200)
    base_url: str | None = Field(None, max_length=2000)
    stream: bool = Field(True, description="Stream the model's turns (false: whole answers).")
    context_tokens: int | None = Field(
        None,
        ge=WINDOW_TOKENS_MIN,
        le=WINDOW_TOKENS_MAX,
        description="The model's context window in tokens; history is fitted to it.",
    )
    script: list[ScriptElement] | None = Field(None, max_length=SCRIPT_ELEMENTS_LIMIT)


BUDGET_MAX = 2**53 - 1
"""Budgets are JSON numbers in the ledger: at most the largest integer JSON carries exactly."""

WALL_CLOCK_MS_MAX = 366 * 24 * 3600 * 1000
"""A year: a writ's validity window is counted from the run's start, and a longer one is not a
budget."""


class BudgetBody(_Strict):
    tokens: int | None = Field(None, ge=0, le=BUDGET_MAX)
    tool_calls: int | None = Field(None, ge=0, le=BUDGET_MAX)
    usd_millicents: int | None = Field(None, ge=0, le=BUDGET_MAX)
    wall_clock_ms: int | None = Field(None, ge=1, le=WALL_CLOCK_MS_MAX)


class CreateRunBody(_Strict):
    # At least one character that is not white space.
    task: str = Field(..., min_length=1, max_length=TASK_CHARS_MAX, pattern=r"\S")
    max_steps: int = Field(MAX_STEPS_DEFAULT, ge=1, le=MAX_STEPS_LIMIT)
    tool_scopes: list[str] | None = Field(None, max_length=TOOL_SCOPES_MAX)
    cognition: CognitionBody = Field(default_factory=lambda: CognitionBody())
    budget: BudgetBody | None = None
    effect_ceiling: Literal["read", "write", "external", "irreversible"] | None = None
    skills: list[Annotated[str, Field(max_length=SKILL_REFERENCE_CHARS_MAX)]] | None = Field(
        None,
        max_length=SKILLS_PER_RUN_MAX,
        description="Published skills to bind, `name@version` each, none twice: their "
        "instructions follow the task, their scopes and ceiling narrow the run's writ. 422 "
        "`invalid_package_reference`, `skill_not_found`, `not_a_skill`.",
    )

    def to_request(self) -> StartRun:
        budget = self.budget or BudgetBody()
        return StartRun(
            task=self.task,
            max_steps=self.max_steps,
            tool_scopes=self.tool_scopes,
            provider=self.cognition.provider,
            model=self.cognition.model,
            base_url=self.cognition.base_url,
            stream=self.cognition.stream,
            context_tokens=self.cognition.context_tokens,
            script=self.cognition.script,
            budget=Budget(
                budget.tokens, budget.tool_calls, budget.usd_millicents, budget.wall_clock_ms
            ),
            effect_ceiling=self.effect_ceiling,
            skills=tuple(self.skills or ()),
        )


class BranchRunBody(_Strict):
    # The commit id's form is checked by the runtime, so that every commit id that is not one of
    # the source run's commits, malformed or not, is the one refusal `commit_not_in_run`.
    commit_id: str = Field(
        ...,
        description="The id of a `commit` entry of the source run: the branch's world starts "
        "as the source's world after it. Anything else is 422 `commit_not_in_run`.",
        json_schema_extra={"pattern": "^[0-9a-f]{64}$"},
    )
    task: str | None = Field(
        None,
        min_length=1,
        max_length=TASK_CHARS_MAX,
        pattern=r"\S",
        description="The branch's task (default: the source's)",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS_LIMIT,
        description="The branch's step limit (default: the source's)",
    )
    cognition: CognitionBody | None = Field(
        None,
        description="The branch's cognition, read as `POST /runs` reads it (default: the "
        "source's provider, model and script)",
    )

    def to_request(self) -> BranchRun:
        chosen = self.cognition
        return BranchRun(
            commit_id=self.commit_id,
            task=self.task,
            max_steps=self.max_steps,
            cognition=None
            if chosen is None
            else BranchCognition(
                provider=chosen.provider,
                model=chosen.model,
                base_url=chosen.base_url,
                stream=chosen.stream,
                context_tokens=chosen.context_tokens,
                script=chosen.script,
            ),
        )


class ApprovalBody(_Strict):
    approve: bool
    proposal_id: str | None = Field(None, pattern="^[0-9a-f]{64}$")
    reason: str | None = Field(None, max_length=2000)


class ResumeBody(_Strict):
    max_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS_LIMIT,
        description="The run's step limit from now on (above the steps it has taken)",
    )


class CancelBody(_Strict):
    reason: str | None = Field(None, max_length=2000, description="Recorded with the cancellation")


class RunCancelling(BaseModel):
    run_id: str
    status: str = Field(description="The run's status when the cancel was asked for")


class RevokeBody(_Strict):
    reason: str | None = Field(None, max_length=2000)


class RunCreated(BaseModel):
    run_id: str
    task: str
    status: RunStatus


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in (
        (400, "Malformed request (bad JSON, bad query value)"),
        (404, "Unknown or not visible"),
        (409, "Conflicts with the current state"),
        (413, "Body too large"),
        (422, "Well-formed but invalid"),
        (429, "Rate or capacity limit (see Retry-After)"),
        (503, "Shutting down or not ready"),
    )
}
