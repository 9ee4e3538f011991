"""The run actor: one asyncio task per active run that owns its trajectory and its cognition.

Each step: a cognition turn; the turn and its intents are recorded; each intent is compiled and
either rejected (recorded, and shown to cognition next turn), suspended for approval, or executed
and committed (or recorded as a tool failure). A suspended proposal waits for votes sent to the
actor's inbox; once its quorum approves, every stage is compiled again before it executes.

Others talk to the actor only through its inbox (`post`: a `Vote`, a `Cancel`, a `Stop`). A
cancel or a stop takes effect at once: a model call or a tool in flight is cancelled (they run in
one timeout scope the stop moves to now), a wait for approval ends; the run then records its end.
On shutdown a run that waits for approval is parked, not ended: its pending approval survives
the restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from thymos.cognition import (
    TURN_TOKENS_MAX,
    Cognition,
    CognitionContext,
    CognitionEvent,
    CognitionFailed,
    Prices,
    ToolView,
    Turn,
)
from thymos.core import (
    RECOVERY_CHANNEL,
    DeltaConflict,
    Effect,
    EntryKind,
    ErrorCode,
    Intent,
    NotCanonicalizable,
    Redactor,
    TerminatedBy,
    ThymosError,
    ToolFailureCode,
    Usage,
    canonical_bytes,
    us_from_rfc3339,
)
from thymos.governance import (
    COMPILER_VERSION,
    Authority,
    Basis,
    Decision,
    Next,
    PendingApproval,
    Rejected,
    RejectionReason,
    Suspended,
    ToolCatalog,
    compile_intent,
    settle,
)
from thymos.observability import Observer, Span
from thymos.tools import (
    Sandbox,
    Tool,
    ToolContext,
    ToolFailure,
    ToolOutcome,
    ToolPool,
    ToolRegistry,
    Workspace,
)

from ._clock import Clock
from ._feeds import Feed
from ._parking import writ_deadline_us
from ._registry import TenantView, run_entities
from ._trajectory import EntryTooLarge, Trajectory

log = logging.getLogger("thymos.runtime")
T = TypeVar("T")

INTENTS_PER_YIELD = 16
"""Decisions made between yields to the event loop when a turn brings many in-process intents."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ARGUMENTS_PREVIEW_CHARS_MAX = 300
ARGS_ERROR_CHARS_MAX = 600
"""A call whose arguments could not be read is recorded with why, this long at most."""
"""Approvers see this much of a proposal's arguments in the execution session; the ledger has
all of them."""


def _preview(intent: Intent) -> str:
    """The start of a proposal's arguments, for approvers (the ledger has all of them)."""
    preview = canonical_bytes(intent.args).decode()
    if len(preview) > ARGUMENTS_PREVIEW_CHARS_MAX:
        preview = preview[: ARGUMENTS_PREVIEW_CHARS_MAX - 1] + "…"
    return preview


class StopRun(BaseException):
    """Control flow, not an error: the run must stop at this safe point.

    It derives from BaseException so tool or provider code cannot swallow it."""

    def __init__(self, terminated_by: TerminatedBy, message: str | None = None) -> None:
        super().__init__(terminated_by.value)
        self.terminated_by = terminated_by
        self.message = message


class CallStopped(Exception):
    """A tool or model call was cancelled because the run must stop (`stop` says how)."""

    def __init__(self, stop: StopRun) -> None:
        super().__init__(stop.terminated_by.value)
        self.stop = stop


class Parked(BaseException):
    """Control flow: the run waits for approval with no actor. `idle`: it waits for votes that
    have not come (it is woken by one); else the server is stopping (it is woken on start)."""

    def __init__(self, *, idle: bool = False) -> None:
        super().__init__()
        self.idle = idle


@dataclass(slots=True)
class LiveView:
    """What observers see of the actor beyond the ledger: its phase and active tool."""

    phase: str = "starting"
    active_tool: str | None = None
    current_step: int = 0
    partial_answer: str | None = None
    """The text of the turn being streamed, as it arrives (None between turns)."""


@dataclass(slots=True)
class ActorDeps:
    catalog: ToolCatalog
    tools: ToolRegistry
    workspace: Workspace
    clock: Clock
    cognition_events: Feed[CognitionEvent]
    revocations: Callable[[], frozenset[str]]
    pool: ToolPool
    sandbox: Sandbox
    redactor: Redactor
    prices: Prices = field(default_factory=Prices)
    view: LiveView = field(default_factory=LiveView)
    delegate: Callable[[RunActor, str, Mapping[str, Any]], Awaitable[ToolOutcome]] | None = None
    """How a staged `delegate` call starts its child run (`Runtime.delegations.delegate`),
    given the actor and the intent's id; None: delegation is not offered."""
    park_when_waiting: bool = False
    """Park the run (end its actor, free its slot) whenever it waits for votes: a vote, a
    cancel or its writ's deadline wakes it with a new actor."""
    tenant_view: Callable[[], TenantView] | None = None
    """The tools and policies the run's tenant may use now (`TenantViews.current`): asked at
    every decision, so a policy activated or a package uninstalled meanwhile governs the next
    one. None: the catalog and authority the run started with, always."""
    observer: Observer = field(default_factory=Observer)
    """Told of each model turn, tool call and vote (metrics; spans when tracing is on)."""


@dataclass(slots=True)
class Vote:
    """An approver's decision on a pending proposal (the approvals route waits on `result`)."""

    channel: str
    approve: bool
    proposal_id: str | None
    reason: str | None
    approver: str
    key_id: str | None
    result: asyncio.Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Cancel:
    """An operator cancels the run (`POST /runs/:id/cancel`, or its parent's cancellation)."""

    requested_by: str
    key_id: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Stop:
    """The server stops the run (`interrupted` at shutdown: a run waiting for approval is
    parked, not ended)."""

    terminated_by: TerminatedBy
    message: str | None = None


Message = Vote | Cancel | Stop
"""What others may send a run's actor (`RunActor.post`): the actor's whole inbox. Resuming is
not a message: a resumed run gets a new actor on the same trajectory; a delegated child's end is
awaited by the `delegate` call that started it."""


class RunActor:
    def __init__(
        self,
        trajectory: Trajectory,
        cognition: Cognition,
        deps: ActorDeps,
        authority: Authority,
        on_change: Callable[[], None],
    ) -> None:
        self.trajectory = trajectory
        self.cognition = cognition
        self.deps = deps
        self.authority = authority
        self._on_change = on_change
        self._stop: StopRun | None = None
        self._scope: asyncio.Timeout | None = None
        """The deadline of the tool or model call in progress (a stop request moves it to
        now)."""
        self._votes: list[Vote] = []
        self._cancellation: dict[str, Any] | None = None
        """Who cancelled the run (recorded with its end)."""
        self._wake = asyncio.Event()
        self._waiting = False
        self.abandoned = False
        """Another node took the run over: this actor stops and writes nothing more."""
        self.parked = False
        """The run waits for approval in storage, with no actor: the server stopped (`idle`
        False) or no vote has come yet (`idle`)."""
        self.idle = False
        self._recheck = False
        """Decide the waiting proposal again now (its writ was revoked)."""
        self._task: asyncio.Task[None] | None = None
        # The wall-clock budget counts what the run spent before it was resumed, and the time
        # of its current segment so far (a run woken from parking was waiting all along).
        state = trajectory.state
        spent_us = state.wall_spent_us
        if state.segment_started_us is not None:
            spent_us += max(0, deps.clock.now_us() - state.segment_started_us)
        self._started_ms = deps.clock.monotonic_ms() - spent_us // 1000
        spec = trajectory.state.spec
        self._expires_us = writ_deadline_us(spec.extra.get("writ"))
        self._view = deps.tenant_view() if deps.tenant_view is not None else None
        self._tool_views = self._views_of_tools()

    def _views_of_tools(self) -> tuple[ToolView, ...]:
        return tuple(
            ToolView(s.name, s.description, s.input_schema)
            for s in (self.deps.catalog.get(name) for name in self.trajectory.state.spec.tools)
            if s is not None
        )

    def _follow_tenant(self) -> None:
        """Adopt the tenant's current tools and policy set when they changed since the last
        decision (an identity check otherwise)."""
        if self.deps.tenant_view is None:
            return
        view = self.deps.tenant_view()
        if view is self._view:
            return
        self._view = view
        self.deps.catalog, self.deps.tools = view.catalog, view.tools
        self.authority = replace(
            self.authority,
            policy=view.policy,
            entities=run_entities(view, self.trajectory.run_id, self.trajectory.state.spec),
        )
        self._tool_views = self._views_of_tools()

    @property
    def deadline_us(self) -> int | None:
        """When the run's writ expires (a waiting proposal is decided again then)."""
        return self._expires_us

    @property
    def view(self) -> LiveView:
        return self.deps.view

    @property
    def waiting(self) -> bool:
        return self._waiting

    def recheck(self) -> None:
        """Decide a waiting proposal again at once (its writ was revoked): it is refused now,
        not when its votes come."""
        self._recheck = True
        self._wake.set()

    def post(self, message: Message) -> None:
        """Deliver a message. A vote waits for the proposal's wait to take it; a cancel or a
        stop takes effect at once wherever the run is (a model call or a tool in flight is
        cancelled, a wait for approval ends); the first stop wins, and a cancel records who
        asked."""
        match message:
            case Vote():
                self._votes.append(message)
            case Cancel(requested_by, key_id, reason):
                if self._stop is None:
                    self._cancellation = {
                        "requested_by": requested_by,
                        "key_id": key_id,
                        "reason": reason,
                    }
                self._halt(StopRun(TerminatedBy.CANCELLED, f"cancelled by {requested_by}"))
            case Stop(terminated_by, text):
                self._halt(StopRun(terminated_by, text))
        self._wake.set()

    def _halt(self, stop: StopRun) -> None:
        if self._stop is None:
            self._stop = stop
        # A second request while the first is cancelling the call finds the scope expiring:
        # asyncio refuses to reschedule it then, and there is nothing more to do.
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time())

    def _set_view(self, phase: str, active_tool: str | None = None) -> None:
        self.view.phase, self.view.active_tool = phase, active_tool
        self._on_change()

    def abandon(self) -> None:
        """Stop at once without recording anything: another node writes the run now (its lease
        was taken over), and storage would refuse this actor's writes anyway."""
        self.abandoned = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        """The run's whole life from its current head to a recorded end (or a park)."""
        final_answer: str | None = None
        error: str | None = None
        self._task = asyncio.current_task()
        try:
            final_answer = await self._loop()
            terminated_by = TerminatedBy.FINAL_ANSWER
        except Parked as parked:
            self.parked, self.idle = True, parked.idle
            # An idle run parks only with no vote waiting (checked with no await since), so
            # this answers votes only when the server stops.
            self._reject_votes(
                ErrorCode.SHUTTING_DOWN, "the server is shutting down; vote again after it restarts"
            )
            self._set_view("parked")
            return
        except StopRun as stop:
            terminated_by, error = stop.terminated_by, stop.message
        except asyncio.CancelledError:
            if self.abandoned:
                self._reject_votes(ErrorCode.RUN_NOT_ACTIVE, "another node drives the run now")
                self._set_view("finished")
                return
            # Shutdown's grace period ran out mid-step: record the interruption and finish.
            terminated_by, error = TerminatedBy.INTERRUPTED, "the server stopped during a step"
        except Exception as exc:
            log.exception(
                "run %s failed unexpectedly",
                self.trajectory.run_id,
                extra={"seq": self.trajectory.head_seq},
            )
            terminated_by, error = TerminatedBy.ERROR, f"internal error: {type(exc).__name__}"
        self._reject_votes(ErrorCode.RUN_NOT_ACTIVE, "the run has ended")
        try:
            await self._end(terminated_by, final_answer=final_answer, error=error)
        except Exception:
            # The ledger itself failed: the run stays active in storage and the next start
            # records it as interrupted.
            log.exception(
                "run %s: the end of the run could not be recorded", self.trajectory.run_id
            )
        finally:
            # Votes that arrived while the end was being recorded are answered too.
            self._reject_votes(ErrorCode.RUN_NOT_ACTIVE, "the run has ended")
            self._set_view("finished")

    def _emit(self, event: CognitionEvent) -> None:
        self.deps.cognition_events.publish(event)
        if event.type == "token":
            self.view.partial_answer = (self.view.partial_answer or "") + str(
                event.data.get("text", "")
            )
            self._on_change()

    def _safe_point(self) -> None:
        if self._stop is not None:
            raise self._stop
        left = self._wall_clock_left_s()
        if left is not None and left <= 0:
            raise self._out_of_time()

    def _wall_clock_left_s(self) -> float | None:
        budget = self.trajectory.state.spec.budget
        if budget.wall_clock_ms is None:
            return None
        spent = self.deps.clock.monotonic_ms() - self._started_ms
        return (budget.wall_clock_ms - spent) / 1000

    def _out_of_time(self) -> StopRun:
        budget = self.trajectory.state.spec.budget
        return StopRun(
            TerminatedBy.BUDGET_EXHAUSTED,
            f"the wall-clock budget of {budget.wall_clock_ms} ms is spent",
        )

    async def _run_tool(self, tool: Tool, args: Mapping[str, Any], context: ToolContext) -> Any:
        """The tool's outcome, unless the run is stopped or its wall-clock budget runs out
        first: then the tool is cancelled mid-flight (a child process's whole group is killed)
        and `CallStopped` says why."""
        return await self._stoppable(tool.run(args, context))

    async def _observed_turn(self, context: CognitionContext) -> Turn:
        """`_think`, timed (and in a span when tracing is on); tokens counted by provider."""
        observer = self.deps.observer
        provider = self.trajectory.state.spec.provider
        started = time.perf_counter()
        tokens_in = tokens_out = 0
        try:
            if observer.tracer is None:
                turn = await self._think(context)
            else:
                attributes = {
                    "thymos.run_id": self.trajectory.run_id,
                    "thymos.step": context.step,
                    "thymos.provider": provider,
                }
                with observer.tracer.span("thymos.turn", attributes) as span:
                    turn = await self._think(context)
                    span.set_attribute("thymos.intents", len(turn.intents))
                    span.set_attribute("thymos.input_tokens", turn.usage.input_tokens)
                    span.set_attribute("thymos.output_tokens", turn.usage.output_tokens)
            tokens_in = min(max(turn.usage.input_tokens, 0), TURN_TOKENS_MAX)
            tokens_out = min(max(turn.usage.output_tokens, 0), TURN_TOKENS_MAX)
            return turn
        finally:
            observer.turn(provider, time.perf_counter() - started, tokens_in, tokens_out)

    async def _think(self, context: CognitionContext) -> Turn:
        """The model's turn, raced against a stop request and the wall-clock budget: a stop
        during a model call ends it at once (the call is cancelled) and is raised as `StopRun`."""
        try:
            return await self._stoppable(self.cognition.turn(context, self._emit))
        except CallStopped as stopped:
            raise stopped.stop from None

    async def _stoppable(self, call: Awaitable[T]) -> T:
        """`call`, cancelled if the run is stopped or out of wall-clock time first (then
        `CallStopped` says why). The deadline is a timeout scope around the call itself (no
        extra task: a call that finishes without waiting costs nothing more); a stop request
        moves that deadline to now."""
        scope = asyncio.timeout(self._wall_clock_left_s())
        self._scope = scope
        try:
            async with scope:
                if self._stop is not None:
                    scope.reschedule(asyncio.get_running_loop().time())
                return await call
        except TimeoutError:
            if not scope.expired():
                raise  # the call's own timeout, not ours: its failure to record
            raise CallStopped(self._stop or self._out_of_time()) from None
        finally:
            self._scope = None

    async def _loop(self) -> str:
        """Steps until a final answer (returned) or a stop (raised as `StopRun`)."""
        state = self.trajectory.state
        spec = state.spec
        # A relaunched run (after a restart) first decides what its last turn left undecided.
        if state.undecided:
            await self._decide_all(sorted(state.undecided.items(), key=lambda item: item[1][0]))
            if state.turn_final is not None:
                return state.turn_final
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
            history = state.context_history()
            context = CognitionContext(
                run_id=self.trajectory.run_id,
                task=spec.task,
                step=step,
                max_steps=spec.max_steps,
                turns_taken=summary.steps_executed,
                tools=self._tool_views,
                history=history,
                omitted=state.history_items - len(history),
            )
            try:
                turn = await self._observed_turn(context)
            except CognitionFailed as failure:
                self.view.partial_answer = None
                self.deps.cognition_events.publish(
                    CognitionEvent("error", {"code": failure.code, "message": failure.message})
                )
                raise StopRun(TerminatedBy.ERROR, failure.message) from None
            self.view.partial_answer = None
            turn_body: dict[str, Any] = {
                "step": step,
                "text": turn.text,
                # A provider's report is bounded, so a run's totals stay exact and encodable.
                "usage": self._turn_usage(turn.usage),
                "intents": len(turn.intents),
            }
            if turn.final is not None:
                turn_body["final"] = turn.final
            items: list[tuple[EntryKind, Mapping[str, Any]]] = [(EntryKind.TURN, turn_body)]
            for index, intent in enumerate(turn.intents):
                items.append((EntryKind.INTENT, self._intent_body(step, index, intent)))
            entries = self.trajectory.stage(items)
            self._check_token_budget()
            await self._decide_all([(e.id, state.undecided[e.id]) for e in entries[1:]])
            if turn.final is not None:
                return turn.final

    async def _decide_all(self, intents: list[tuple[str, tuple[int, Intent]]]) -> None:
        pending = self.trajectory.state.summary.pending
        for number, (intent_id, (_, intent)) in enumerate(intents, start=1):
            if intent_id not in pending:
                # A proposal already waiting (a woken or relaunched run) goes on being decided
                # as it would have in the wait: its writ's deadline and a stop still end it.
                self._safe_point()
            await self._decide(intent_id, intent)
            if number % INTENTS_PER_YIELD == 0:
                await asyncio.sleep(0)  # other runs get the loop during a long turn

    def _intent_body(self, step: int, index: int, intent: Intent) -> dict[str, Any]:
        body: dict[str, Any] = {
            "step": step,
            "index": index,
            "call_id": intent.call_id,
            "tool": intent.tool,
            "args": intent.args,
        }
        if intent.args_error is not None:
            body["args"] = {}
            body["args_error"] = intent.args_error[:ARGS_ERROR_CHARS_MAX]
            return body
        try:
            canonical_bytes(body)
        except NotCanonicalizable:
            body["args"] = {}
            body["args_error"] = "the proposed arguments have no canonical JSON form"
        return body

    def _turn_usage(self, reported: Usage) -> dict[str, int]:
        """A turn's tokens (a provider's report is bounded, so totals stay exact and encodable)
        and its spend from the price table."""
        bounded = Usage(
            min(max(reported.input_tokens, 0), TURN_TOKENS_MAX),
            min(max(reported.output_tokens, 0), TURN_TOKENS_MAX),
        )
        spec = self.trajectory.state.spec
        return {
            "input_tokens": bounded.input_tokens,
            "output_tokens": bounded.output_tokens,
            "usd_millicents": self.deps.prices.millicents(spec.provider, spec.model, bounded),
        }

    def _check_token_budget(self) -> None:
        budget, usage = self.trajectory.state.spec.budget, self.trajectory.state.summary.usage
        if budget.tokens is not None and usage.input_tokens + usage.output_tokens >= budget.tokens:
            raise StopRun(
                TerminatedBy.BUDGET_EXHAUSTED, f"the token budget of {budget.tokens} is spent"
            )
        if budget.usd_millicents is not None and usage.usd_millicents >= budget.usd_millicents:
            raise StopRun(
                TerminatedBy.BUDGET_EXHAUSTED,
                f"the spend budget of {budget.usd_millicents} millicents is spent",
            )

    def _compile(self, intent: Intent) -> Decision:
        self._set_view("compiling")
        self._follow_tenant()
        return compile_intent(
            intent,
            catalog=self.deps.catalog,
            authority=self.authority,
            usage=self.trajectory.state.summary.usage,
            now=_EPOCH + timedelta(microseconds=self.deps.clock.now_us()),
            revocations=self.deps.revocations(),
        )

    async def _decide(self, intent_id: str, intent: Intent) -> None:
        tracer = self.deps.observer.tracer
        if tracer is None:
            await self._decide_in(intent_id, intent, None)
            return
        attributes = {
            "thymos.run_id": self.trajectory.run_id,
            "thymos.intent": intent_id,
            "thymos.tool": intent.tool,
        }
        with tracer.span("thymos.intent", attributes) as span:
            await self._decide_in(intent_id, intent, span)

    async def _decide_in(self, intent_id: str, intent: Intent, span: Span | None) -> None:
        base = {"intent": intent_id, "tool": intent.tool, "compiler": COMPILER_VERSION}
        while True:
            decision = self._compile(intent)
            pending = self.trajectory.state.summary.pending.get(intent_id)
            step = settle(decision, PendingApproval.of(pending))
            if span is not None:
                span.set_attribute("thymos.decision", step.value)
                if isinstance(decision, Rejected):
                    span.set_attribute("thymos.reason", decision.reason.value)
            if step is Next.REJECT:
                assert isinstance(decision, Rejected)
                self.trajectory.stage([(EntryKind.REJECTION, {**base, **decision.as_body()})])
                self._settle_votes(intent_id)
                return
            if step is Next.EXECUTE:
                # Staged, or suspended and approved by its quorum: every other stage passed
                # again just now.
                approved_by = (
                    list(pending.approvers)
                    if isinstance(decision, Suspended) and pending is not None
                    else None
                )
                again = await self._may_run_again(intent_id, intent, decision, base, approved_by)
                if again == "deadline":
                    continue  # the writ expired while the operator was asked: decide again
                if again == "approved":
                    await self._execute(intent_id, intent, decision.basis, base, approved_by)
                self._settle_votes(intent_id)
                return
            assert isinstance(decision, Suspended)
            if step is Next.DENY:
                assert pending is not None
                # A recorded veto without its rejection (a ledger from before denials and their
                # rejections were appended together): the veto stands.
                self.trajectory.stage(
                    [
                        (
                            EntryKind.REJECTION,
                            self._denial_body(base, decision, str(pending.denied_by), None),
                        )
                    ]
                )
                self._settle_votes(intent_id)
                return
            if step is Next.SUSPEND:
                self._suspend(intent_id, intent, decision, base)
            verdict = await self._await_votes(
                intent_id, decision.quorum, self._veto(base, decision)
            )
            if verdict == "denied":
                self._settle_votes(intent_id)
                return
            # Approved, or the writ's deadline passed: compile again (every stage is re-checked).

    @classmethod
    def _veto(
        cls, base: Mapping[str, Any], decision: Suspended
    ) -> Callable[[Vote], list[tuple[EntryKind, Mapping[str, Any]]]]:
        """What a denial of a suspended proposal records: its rejection."""

        def items(vote: Vote) -> list[tuple[EntryKind, Mapping[str, Any]]]:
            body = cls._denial_body(base, decision, vote.approver, vote.reason)
            return [(EntryKind.REJECTION, body)]

        return items

    @staticmethod
    def _denial_body(
        base: Mapping[str, Any], decision: Suspended, approver: str, reason: str | None
    ) -> dict[str, Any]:
        return {
            **base,
            "reason": RejectionReason.APPROVAL_DENIED.value,
            "message": f"{approver} denied the proposal",
            "details": {"approver": approver, "reason": reason},
            **decision.basis.as_body(),
        }

    def _suspend(
        self, intent_id: str, intent: Intent, decision: Suspended, base: Mapping[str, Any]
    ) -> None:
        body = {
            **base,
            "channel": decision.channel,
            "quorum": decision.quorum,
            "message": f"policy {', '.join(decision.basis.policies)} needs approval on {decision.channel}",
            "arguments_preview": _preview(intent),
            **decision.basis.as_body(),
        }
        self.trajectory.stage([(EntryKind.SUSPENSION, body)])

    async def _may_run_again(
        self,
        intent_id: str,
        intent: Intent,
        decision: Decision,
        base: Mapping[str, Any],
        approved_by: list[str] | None,
    ) -> str:
        """Whether an allowed call may run: `approved` unless a crash left an earlier execution
        of it with an unknown outcome (invariant 7). An idempotent tool then runs again under
        the same idempotency key; any other waits on the recovery channel for an operator:
        `approved` runs it again, `denied` records it as failed with its outcome unknown, and
        `deadline` means the writ expired meanwhile (the caller decides again)."""
        execution = self.trajectory.state.started.get(intent_id)
        spec = self.deps.catalog.get(intent.tool)
        if execution is None or spec is None or spec.idempotent:
            return "approved"
        if execution not in self.trajectory.state.summary.pending:
            body = {
                **base,
                **decision.basis.as_body(),
                "channel": RECOVERY_CHANNEL,
                "quorum": 1,
                "message": (
                    f"{intent.tool} ({spec.effect.value}) started before the server stopped and "
                    "its outcome is unknown: approve to run it again, deny to go on without it"
                ),
                "arguments_preview": _preview(intent),
                "execution": execution,
            }
            self.trajectory.stage([(EntryKind.SUSPENSION, body)])
        decided = self._decided_body(base, decision.basis, spec.effect, approved_by)

        def unknown(vote: Vote) -> list[tuple[EntryKind, Mapping[str, Any]]]:
            error = {
                "code": ToolFailureCode.OUTCOME_UNKNOWN.value,
                "message": (
                    f"{vote.approver} decided not to run it again; whether the attempt before "
                    "the server stopped took effect is unknown"
                ),
            }
            return [(EntryKind.TOOL_FAILURE, {**decided, "error": error})]

        verdict = await self._await_votes(execution, 1, unknown)
        self._settle_votes(execution)
        return verdict

    @staticmethod
    def _decided_body(
        base: Mapping[str, Any],
        basis: Basis,
        effect: Effect,
        approved_by: list[str] | None,
    ) -> dict[str, Any]:
        """What a commit or a failure of an allowed call records of its decision (so replay
        can re-authorize it from the ledger alone)."""
        decided = {**base, **basis.as_body(), "effect": effect.value}
        if approved_by is not None:
            decided["approved_by"] = approved_by
        return decided

    def _seconds_to_deadline(self) -> float | None:
        """Seconds until the writ expires (a waiting proposal is re-checked then), if it does."""
        if self._expires_us is None:
            return None
        return max(0.0, (self._expires_us - self.deps.clock.now_us()) / 1_000_000)

    async def _await_votes(
        self,
        proposal_id: str,
        quorum: int,
        on_denial: Callable[[Vote], list[tuple[EntryKind, Mapping[str, Any]]]],
    ) -> str:
        """Wait until the proposal has its quorum (`approved`), a denial (`denied`, recorded
        together with what `on_denial` says it decides), or the writ's deadline passes
        (`deadline`)."""
        await self.trajectory.flush()  # the suspension is durable before anyone can vote on it
        self._waiting = True
        self._set_view("waiting_approval")
        try:
            while True:
                if self._stop is not None:
                    if self._stop.terminated_by is TerminatedBy.INTERRUPTED:
                        raise Parked
                    raise self._stop
                remaining = self._seconds_to_deadline()
                if remaining is not None and remaining <= 0:
                    return "deadline"  # no vote counts once the writ has expired
                if self._recheck:
                    self._recheck = False
                    return "deadline"  # decided again now
                while self._votes:
                    vote = self._votes.pop(0)
                    verdict = await self._take_vote(proposal_id, vote, on_denial)
                    if verdict == "deadline":
                        return "deadline"
                    if verdict == "denied":
                        self._settle_votes(proposal_id)  # decided: later votes are answered now
                        return "denied"
                    pending = self.trajectory.state.summary.pending.get(proposal_id)
                    if (
                        verdict == "approved"
                        and pending is not None
                        and pending.approvals >= quorum
                    ):
                        self._settle_votes(proposal_id)
                        return "approved"
                remaining = self._seconds_to_deadline()
                if remaining is not None and remaining <= 0:
                    return "deadline"
                if self.deps.park_when_waiting:
                    # Every vote taken is durable first; a vote that came meanwhile is taken
                    # now, else the run parks (no await between this check and the actor's end).
                    await self.trajectory.flush()
                    if self._votes or self._stop is not None:
                        continue
                    raise Parked(idle=True)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    return "deadline"
        finally:
            self._waiting = False

    async def _take_vote(
        self,
        proposal_id: str,
        vote: Vote,
        on_denial: Callable[[Vote], list[tuple[EntryKind, Mapping[str, Any]]]],
    ) -> str:
        """Record one vote; its caller's future is always settled, whatever happens."""
        pending = self.trajectory.state.summary.pending.get(proposal_id)
        if (
            pending is None
            or pending.channel != vote.channel
            or vote.proposal_id not in (None, proposal_id)
        ):
            vote.result.set_exception(
                ThymosError(
                    ErrorCode.APPROVAL_NOT_FOUND, f"nothing is pending on channel {vote.channel!r}"
                )
            )
            return "ignored"
        if vote.approver in pending.approvers:
            vote.result.set_exception(
                ThymosError(
                    ErrorCode.DUPLICATE_APPROVAL,
                    f"{vote.approver} has already voted on this proposal",
                    {"proposal_id": proposal_id},
                )
            )
            return "ignored"
        body = {
            "proposal_id": proposal_id,
            "channel": vote.channel,
            "approve": vote.approve,
            "approver": vote.approver,
            "key_id": vote.key_id,
            "reason": vote.reason,
        }
        # The vote is recorded at the very time its writ is checked: replay checks that every
        # vote was cast while the writ was valid.
        now_us = self.deps.clock.now_us()
        if self._expires_us is not None and now_us >= self._expires_us:
            vote.result.set_exception(
                ThymosError(
                    ErrorCode.PROPOSAL_DECIDED,
                    "the run's writ has expired; the proposal is rejected",
                    {"proposal_id": proposal_id},
                )
            )
            return "deadline"
        approvals_before, required = pending.approvals, pending.required
        items: list[tuple[EntryKind, Mapping[str, Any]]] = [(EntryKind.APPROVAL, body)]
        if not vote.approve:
            # The veto and what it decides land in one atomic append: no crash can separate them.
            items.extend(on_denial(vote))
        try:
            await self.trajectory.append(items, at_us=now_us)
        except BaseException as exc:
            if not vote.result.done():
                vote.result.set_exception(
                    ThymosError(
                        ErrorCode.NOT_READY,
                        "the vote may not have been recorded; check the run's ledger before voting again",
                    )
                )
            raise exc
        self.deps.observer.voted((now_us - us_from_rfc3339(pending.suspended_at)) / 1_000_000)
        approvals = approvals_before + (1 if vote.approve else 0)
        vote.result.set_result(
            {
                "run_id": self.trajectory.run_id,
                "proposal_id": proposal_id,
                "channel": vote.channel,
                "approve": vote.approve,
                "approver": vote.approver,
                "approvals": approvals,
                "required": required,
                "decided": (not vote.approve) or approvals >= required,
            }
        )
        return "approved" if vote.approve else "denied"

    def _settle_votes(self, proposal_id: str) -> None:
        """Answer votes still queued for a proposal that has just been decided."""
        remaining = []
        for vote in self._votes:
            if vote.proposal_id == proposal_id and not vote.result.done():
                vote.result.set_exception(
                    ThymosError(
                        ErrorCode.PROPOSAL_DECIDED,
                        "the proposal was already decided",
                        {"proposal_id": proposal_id},
                    )
                )
            else:
                remaining.append(vote)
        self._votes = remaining

    def _reject_votes(self, code: ErrorCode, message: str) -> None:
        for vote in self._votes:
            if not vote.result.done():
                vote.result.set_exception(ThymosError(code, message))
        self._votes.clear()

    async def _execute(
        self,
        intent_id: str,
        intent: Intent,
        basis: Basis,
        base: Mapping[str, Any],
        approved_by: list[str] | None = None,
    ) -> None:
        state = self.trajectory.state
        tool = self.deps.tools.get(intent.tool)
        assert tool is not None, "the catalog and the registry hold the same tools"
        self._set_view("executing", intent.tool)
        spec = self.deps.catalog.get(intent.tool)
        assert spec is not None
        decided = self._decided_body(base, basis, spec.effect, approved_by)
        if spec.effect.rank >= Effect.EXTERNAL.rank:
            # At most once: the execution is on record, durably, before the effect leaves the
            # process (invariant 7); the intent's id is the one key it may run under.
            started = {
                "intent": intent_id,
                "tool": intent.tool,
                "effect": spec.effect.value,
                "idempotency_key": intent_id,
                "idempotent": spec.idempotent,
            }
            await self.trajectory.append([(EntryKind.EXECUTION_STARTED, started)])
        hook = self.deps.delegate
        context = ToolContext(
            self.trajectory.run_id,
            self.deps.workspace,
            state.world,
            self.deps.pool,
            self.deps.sandbox,
            delegate=None if hook is None else functools.partial(hook, self, intent_id),
        )
        observer = self.deps.observer
        began = time.perf_counter()
        try:
            if observer.tracer is None:
                outcome = await self._run_tool(tool, intent.args, context)
            else:
                attributes = {
                    "thymos.run_id": self.trajectory.run_id,
                    "thymos.intent": intent_id,
                    "thymos.tool": intent.tool,
                    "thymos.effect": spec.effect.value,
                }
                with observer.tracer.span("thymos.tool", attributes):
                    outcome = await self._run_tool(tool, intent.args, context)
            observer.tool_ran(intent.tool, time.perf_counter() - began)
            state.world.check_all(outcome.deltas)
        except CallStopped as stopped:
            observer.tool_ran(intent.tool, time.perf_counter() - began)
            self._record_failure(
                decided,
                ToolFailureCode.STOPPED,
                f"the tool was stopped: {stopped.stop.message or stopped.stop.terminated_by.value}",
            )
            raise stopped.stop from None
        except ToolFailure as failure:
            observer.tool_ran(intent.tool, time.perf_counter() - began)
            self._record_failure(decided, failure.code, failure.message)
            return
        except DeltaConflict as conflict:
            self._record_failure(decided, ToolFailureCode.DELTA_CONFLICT, str(conflict))
            return
        except Exception as exc:
            # A tool bug is still a decision to record, never a swallowed error.
            observer.tool_ran(intent.tool, time.perf_counter() - began)
            log.exception("tool %s raised", intent.tool, extra={"seq": self.trajectory.head_seq})
            self._record_failure(
                decided, ToolFailureCode.TOOL_ERROR, f"the tool raised {type(exc).__name__}"
            )
            return
        finally:
            self._set_view("thinking")
        body = {
            **decided,
            # Nothing a tool returns reaches the ledger (and so a stream, the model or an
            # export) with a secret in it.
            "output": self.deps.redactor.redact(outcome.output),
            "deltas": [d.as_dict() for d in outcome.deltas],
        }
        if outcome.delegated_usage is not None:
            # What a child run spent: the parent's usage folds it in with this commit.
            body["delegated_usage"] = outcome.delegated_usage.as_dict()
        try:
            self.trajectory.stage([(EntryKind.COMMIT, body)])
        except NotCanonicalizable:
            self._record_failure(
                decided,
                ToolFailureCode.INVALID_OUTPUT,
                "the tool's output has no canonical JSON form",
            )
        except EntryTooLarge as exc:
            self._record_failure(decided, ToolFailureCode.OUTPUT_TOO_LARGE, str(exc))

    def _record_failure(self, base: Mapping[str, Any], code: ToolFailureCode, message: str) -> None:
        message = self.deps.redactor.text(message)
        try:
            self.trajectory.stage(
                [
                    (
                        EntryKind.TOOL_FAILURE,
                        {**base, "error": {"code": code.value, "message": message}},
                    )
                ]
            )
        except (NotCanonicalizable, EntryTooLarge):
            # Never fail to record a failure: the decision's facts are always encodable; the
            # tool's message is what could not be.
            error = {"code": code.value, "message": "the tool's message could not be recorded"}
            self.trajectory.stage([(EntryKind.TOOL_FAILURE, {**base, "error": error})])

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
        items: list[tuple[EntryKind, Mapping[str, Any]]] = [(EntryKind.RUN_ENDED, body)]
        if terminated_by is TerminatedBy.CANCELLED and self._cancellation is not None:
            items.insert(0, (EntryKind.CANCELLATION, self._cancellation))
        # Shielded: the end of a run is recorded even when shutdown cancels the actor here.
        await asyncio.shield(self.trajectory.append(items))
