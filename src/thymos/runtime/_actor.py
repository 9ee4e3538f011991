"""The run actor: one asyncio task per active run that owns its trajectory and its cognition.

Each step: a cognition turn; the turn and its intents are recorded; each intent is compiled and
either rejected (recorded, and shown to cognition next turn) or executed and committed (or
recorded as a tool failure). Stop requests (shutdown, and later cancel) are honoured at safe
points: before a turn and between intents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thymos.cognition import Cognition, CognitionContext, CognitionEvent, CognitionFailed, ToolView
from thymos.core import (
    DeltaConflict,
    EntryKind,
    Intent,
    NotCanonicalizable,
    TerminatedBy,
    canonical_bytes,
)
from thymos.governance import (
    COMPILER_VERSION,
    Authority,
    Rejected,
    ToolCatalog,
    compile_intent,
)
from thymos.tools import ToolContext, ToolFailure, ToolRegistry

from ._clock import Clock
from ._feeds import Feed
from ._trajectory import EntryTooLarge, Trajectory

log = logging.getLogger("thymos.runtime")


INTENTS_PER_YIELD = 16
"""Decisions made between yields to the event loop when a turn brings many in-process intents."""


class StopRun(BaseException):
    """Control flow, not an error: the run must stop at this safe point.

    It derives from BaseException so tool or provider code cannot swallow it."""

    def __init__(self, terminated_by: TerminatedBy, message: str | None = None) -> None:
        super().__init__(terminated_by.value)
        self.terminated_by = terminated_by
        self.message = message


@dataclass(slots=True)
class LiveView:
    """What observers see of the actor beyond the ledger: its phase and active tool."""

    phase: str = "starting"
    active_tool: str | None = None
    current_step: int = 0


@dataclass(slots=True)
class ActorDeps:
    catalog: ToolCatalog
    tools: ToolRegistry
    workspace: Path
    clock: Clock
    cognition_events: Feed[CognitionEvent]
    view: LiveView = field(default_factory=LiveView)


class RunActor:
    def __init__(
        self,
        trajectory: Trajectory,
        cognition: Cognition,
        deps: ActorDeps,
        on_change: Any,
    ) -> None:
        self.trajectory = trajectory
        self.cognition = cognition
        self.deps = deps
        self._on_change = on_change
        self._stop: StopRun | None = None
        self._started_ms = deps.clock.monotonic_ms()
        spec = trajectory.state.spec
        self.authority = Authority(frozenset(spec.tools), spec.budget)
        self._tool_views = tuple(
            ToolView(s.name, s.description, s.input_schema)
            for s in (deps.catalog.get(name) for name in spec.tools)
            if s is not None
        )

    @property
    def view(self) -> LiveView:
        return self.deps.view

    def request_stop(self, terminated_by: TerminatedBy, message: str | None = None) -> None:
        """Ask the run to stop at its next safe point."""
        if self._stop is None:
            self._stop = StopRun(terminated_by, message)

    def _set_view(self, phase: str, active_tool: str | None = None) -> None:
        self.view.phase, self.view.active_tool = phase, active_tool
        self._on_change()

    async def run(self) -> None:
        """The run's whole life from its current head to a recorded end."""
        final_answer: str | None = None
        error: str | None = None
        try:
            final_answer = await self._loop()
            terminated_by = TerminatedBy.FINAL_ANSWER
        except StopRun as stop:
            terminated_by, error = stop.terminated_by, stop.message
        except asyncio.CancelledError:
            # Shutdown's grace period ran out mid-step: record the interruption and finish.
            terminated_by, error = TerminatedBy.INTERRUPTED, "the server stopped during a step"
        except Exception as exc:
            log.exception("run %s failed unexpectedly", self.trajectory.run_id)
            terminated_by, error = TerminatedBy.ERROR, f"internal error: {type(exc).__name__}"
        try:
            await self._end(terminated_by, final_answer=final_answer, error=error)
        except Exception:
            # The ledger itself failed: the run stays active in storage and the next start
            # records it as interrupted.
            log.exception(
                "run %s: the end of the run could not be recorded", self.trajectory.run_id
            )
        finally:
            self._set_view("finished")

    def _emit(self, event: CognitionEvent) -> None:
        self.deps.cognition_events.publish(event)

    def _safe_point(self) -> None:
        if self._stop is not None:
            raise self._stop
        budget = self.authority.budget
        if (
            budget.wall_clock_ms is not None
            and self.deps.clock.monotonic_ms() - self._started_ms >= budget.wall_clock_ms
        ):
            raise StopRun(
                TerminatedBy.BUDGET_EXHAUSTED,
                f"the wall-clock budget of {budget.wall_clock_ms} ms is spent",
            )

    async def _loop(self) -> str:
        """Steps until a final answer (returned) or a stop (raised as `StopRun`)."""
        state = self.trajectory.state
        spec = state.spec
        while True:
            # Everything recorded so far is durable before cognition is asked again.
            await self.trajectory.flush()
            self._safe_point()
            summary = state.summary
            if summary.steps_executed >= spec.max_steps:
                raise StopRun(
                    TerminatedBy.MAX_STEPS, f"the run reached max_steps ({spec.max_steps})"
                )
            step = summary.steps_executed + 1
            self.view.current_step = step
            self._set_view("thinking")
            context = CognitionContext(
                run_id=self.trajectory.run_id,
                task=spec.task,
                step=step,
                max_steps=spec.max_steps,
                turns_taken=summary.steps_executed,
                tools=self._tool_views,
                history=tuple(state.history),
            )
            try:
                turn = await self.cognition.turn(context, self._emit)
            except CognitionFailed as failure:
                self.deps.cognition_events.publish(
                    CognitionEvent("error", {"code": failure.code, "message": failure.message})
                )
                raise StopRun(TerminatedBy.ERROR, failure.message) from None
            turn_body: dict[str, Any] = {
                "step": step,
                "text": turn.text,
                "usage": {
                    "input_tokens": turn.usage.input_tokens,
                    "output_tokens": turn.usage.output_tokens,
                },
                "intents": len(turn.intents),
            }
            if turn.final is not None:
                turn_body["final"] = turn.final
            items: list[tuple[EntryKind, Mapping[str, Any]]] = [(EntryKind.TURN, turn_body)]
            for index, intent in enumerate(turn.intents):
                items.append((EntryKind.INTENT, self._intent_body(step, index, intent)))
            entries = self.trajectory.stage(items)
            self._check_token_budget()
            for number, entry in enumerate(entries[1:], start=1):
                self._safe_point()
                await self._decide(entry.id, state.undecided[entry.id][1])
                if number % INTENTS_PER_YIELD == 0:
                    await asyncio.sleep(0)  # other runs get the loop during a long turn
            if turn.final is not None:
                return turn.final

    def _intent_body(self, step: int, index: int, intent: Intent) -> dict[str, Any]:
        body = {
            "step": step,
            "index": index,
            "call_id": intent.call_id,
            "tool": intent.tool,
            "args": intent.args,
        }
        try:
            canonical_bytes(body)
        except NotCanonicalizable:
            body["args"] = {}
            body["args_error"] = "the proposed arguments have no canonical JSON form"
        return body

    def _check_token_budget(self) -> None:
        budget, usage = self.authority.budget, self.trajectory.state.summary.usage
        if budget.tokens is not None and usage.input_tokens + usage.output_tokens >= budget.tokens:
            raise StopRun(
                TerminatedBy.BUDGET_EXHAUSTED, f"the token budget of {budget.tokens} is spent"
            )

    async def _decide(self, intent_id: str, intent: Intent) -> None:
        state = self.trajectory.state
        self._set_view("compiling")
        decision = compile_intent(
            intent, catalog=self.deps.catalog, authority=self.authority, usage=state.summary.usage
        )
        if isinstance(decision, Rejected):
            body = {
                "intent": intent_id,
                "tool": intent.tool,
                "compiler": COMPILER_VERSION,
                **decision.as_body(),
            }
            self.trajectory.stage([(EntryKind.REJECTION, body)])
            return
        tool = self.deps.tools.get(intent.tool)
        assert tool is not None, "the catalog and the registry hold the same tools"
        self._set_view("executing", intent.tool)
        context = ToolContext(self.trajectory.run_id, self.deps.workspace, state.world)
        base = {"intent": intent_id, "tool": intent.tool, "compiler": COMPILER_VERSION}
        try:
            outcome = await tool.run(intent.args, context)
            state.world.check_all(outcome.deltas)
        except ToolFailure as failure:
            await self._record_failure(base, failure.code, failure.message)
            return
        except DeltaConflict as conflict:
            await self._record_failure(base, "delta_conflict", str(conflict))
            return
        except Exception as exc:
            # A tool bug is still a decision to record, never a swallowed error.
            log.exception("tool %s raised", intent.tool)
            await self._record_failure(base, "tool_error", f"the tool raised {type(exc).__name__}")
            return
        finally:
            self._set_view("thinking")
        body = {**base, "output": outcome.output, "deltas": [d.as_dict() for d in outcome.deltas]}
        try:
            self.trajectory.stage([(EntryKind.COMMIT, body)])
        except NotCanonicalizable:
            await self._record_failure(
                base, "invalid_output", "the tool's output has no canonical JSON form"
            )
        except EntryTooLarge as exc:
            await self._record_failure(base, "output_too_large", str(exc))

    async def _record_failure(self, base: Mapping[str, Any], code: str, message: str) -> None:
        self.trajectory.stage(
            [(EntryKind.TOOL_FAILURE, {**base, "error": {"code": code, "message": message}})]
        )

    async def _end(
        self,
        terminated_by: TerminatedBy,
        *,
        final_answer: str | None = None,
        error: str | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "status": terminated_by.status.value,
            "terminated_by": terminated_by.value,
            "final_answer": final_answer,
            "error": error,
        }
        # Shielded: the end of a run is recorded even when shutdown cancels the actor here.
        await asyncio.shield(self.trajectory.append([(EntryKind.RUN_ENDED, body)]))
