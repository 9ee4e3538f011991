"""Delegation: the child runs the `delegate` tool starts, how a parent waits for them, how a
parent's cancellation reaches them, and how they are listed.

The compiler has already decided that a staged `delegate` call narrows its run's authority
(`thymos.governance._delegation`); here the runtime carries it out, inside the parent's actor
(the tool awaits the hook the actor hands it, so only the parent's actor appends to the parent's
ledger):

1. the child's spec is built as `POST /runs` builds one (same tenant; tools resolved from its
   scopes; cognition defaulting to the parent's provider and model; `max_steps` defaulting to
   `MAX_STEPS_DEFAULT`; the budget asked, or in each dimension the parent limits and the child
   left open, all the parent has left; an effect ceiling no higher than the parent's) and its
   writ is the parent's attenuated (`attenuate`: a strict narrowing, valid no longer than the
   parent's). A child that cannot be built (an unusable provider, a bad script) or for which no
   active-run slot is free is a tool failure, recorded like any other;
2. the parent records a `delegation` entry (durable) naming the child, so the parent's ledger
   links to the child before it exists; then the child is created, its `run_started` recording
   `parent` (the parent's run id, the intent, the depth, the delegation's seq), and launched;
3. the parent waits for the child's actor to end; the observation is the child's end and the
   commit carries what it spent (`delegated_usage`), which the parent's usage folds in.

If the parent's wait is cancelled (the parent cancelled, stopped or out of wall-clock time), the
child is cancelled, naming the parent. A parent resumed with an undecided `delegate` intent
whose `delegation` entry is recorded follows that child (or reads its end) instead of starting a
second one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from thymos.core import (
    Budget,
    Effect,
    EntryKind,
    ErrorCode,
    RunSpec,
    RunStatus,
    TerminatedBy,
    ThymosError,
    ToolFailureCode,
    Usage,
    rfc3339_from_us,
    uuid7,
)
from thymos.governance import (
    DelegationAsk,
    WritError,
    WritRecord,
    WritTerms,
    attenuate,
    child_budget,
    child_ceiling,
)
from thymos.storage import RunRecord
from thymos.tools import ToolFailure, ToolOutcome

from ._actor import Cancel
from ._requests import MAX_STEPS_DEFAULT, StartRun

if TYPE_CHECKING:
    from ._actor import RunActor
    from ._service import ActiveRun, Runtime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CHILD_CANCEL_REASON = "its parent run stopped before it ended"

RESUME_WAIT_POLL_S = 0.02
RESUME_WAIT_POLLS = 500
"""A resumed parent whose interrupted child is being resumed by someone else waits this long
at most (10 s) for it to be active: a resumption is one append."""


class Delegations:
    """The runtime's delegation job: starting, following, cancelling and listing child runs."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    # -- the hook the actor hands to `delegate` ------------------------------------------------

    async def delegate(
        self, actor: RunActor, intent_id: str, args: Mapping[str, Any]
    ) -> ToolOutcome:
        """Carry out a staged delegation of `actor`'s run (intent `intent_id`) and return the
        child's end. Runs inside the parent's actor, under its stop scope."""
        parent_id = actor.trajectory.run_id
        child_id = actor.trajectory.state.delegations.get(intent_id)
        if child_id is None:
            child_id = await self._start_child(actor, intent_id, DelegationAsk.of(args))
        return await self._follow(parent_id, child_id)

    async def _start_child(self, actor: RunActor, intent_id: str, ask: DelegationAsk) -> str:
        runtime = self._runtime
        trajectory = actor.trajectory
        parent_id = trajectory.run_id
        parent = trajectory.state.spec
        bounds = actor.authority.delegation
        assert bounds is not None, "a staged delegation was checked against its run's bounds"
        now_us = runtime.clock.now_us()
        now = _EPOCH + timedelta(microseconds=now_us)
        budget = child_budget(ask, bounds, trajectory.state.summary.usage, now)
        try:
            if not runtime.accepting:
                raise ThymosError(
                    ErrorCode.SHUTTING_DOWN, "the server is shutting down and starts no runs"
                )
            scopes, tools = runtime.resolve_scopes(list(ask.tool_scopes), parent.tenant)
            # The compiler refused any scope beyond the parent's tools; asserted again here,
            # where the child's writ is made (invariants are checked in pairs).
            assert set(tools) <= bounds.tools, "a delegated tool is not the parent's"
            catalog = runtime.views.current(parent.tenant).catalog
            effects = [s.effect for s in map(catalog.get, tools) if s is not None]
            ceiling = child_ceiling((Effect(e) for e in effects), bounds.effect_ceiling)
            spec = runtime._spec(_request(ask, scopes, budget, ceiling, parent), parent.tenant)
        except ThymosError as exc:
            raise ToolFailure(
                ToolFailureCode.CHILD_INVALID, f"the child run cannot start: {exc.message}"
            ) from None
        try:
            runtime._check_capacity()
        except ThymosError as exc:
            raise ToolFailure(ToolFailureCode.NO_CAPACITY, exc.message) from None
        # The slot is taken before the first await (as `Runtime._create` takes one).
        runtime._starting += 1
        try:
            child_id = uuid7(now_us // 1000, runtime._random(10))
            writ = self._writ(parent, spec, budget, ceiling, tools, now_us, bounds.expires)
            depth = bounds.depth + 1
            body = {
                "intent": intent_id,
                "child_run_id": child_id,
                "task": ask.task,
                "tool_scopes": list(ask.tool_scopes),
                "tools": list(tools),
                "effect_ceiling": ceiling.value,
                "budget": budget.as_dict(),
                "max_steps": spec.max_steps,
                "writ_id": writ["id"],
                "expires": writ["expires"],
                "depth": depth,
            }
            # The parent's ledger names the child before the child exists.
            [entry] = await trajectory.append([(EntryKind.DELEGATION, body)])
            link = {"run_id": parent_id, "intent": intent_id, "depth": depth, "seq": entry.seq}
            spec = replace(spec, extra={**spec.extra, "writ": writ, "parent": link})
            creation = asyncio.ensure_future(self._create(actor, spec, child_id))
            try:
                await asyncio.shield(creation)
            except asyncio.CancelledError:
                # The parent stops while its child is being created: the child is created all
                # the same (the ledger's link names a run) and cancelled at once.
                with contextlib.suppress(Exception):
                    await creation
                self.cancel_children_of(parent_id, only=child_id)
                raise
        finally:
            runtime._starting -= 1
        return child_id

    def _writ(
        self,
        parent: RunSpec,
        spec: RunSpec,
        budget: Budget,
        ceiling: Effect,
        tools: list[str],
        now_us: int,
        parent_expires: datetime | None,
    ) -> dict[str, Any]:
        """The child's writ: the parent's with one more block of checks (its exact tools, its
        ceiling, its budget, its validity window, no longer than the parent's)."""
        from ._service import WRIT_VALIDITY_MS_DEFAULT  # the same default validity as any run

        runtime = self._runtime
        start = datetime.fromtimestamp(now_us // 1_000_000, tz=UTC)
        lifetime_ms = (
            budget.wall_clock_ms if budget.wall_clock_ms is not None else WRIT_VALIDITY_MS_DEFAULT
        )
        expires = start + timedelta(milliseconds=lifetime_ms) + timedelta(seconds=1)
        if parent_expires is not None:
            expires = min(expires, parent_expires)
        terms = WritTerms(
            tenant=spec.tenant,
            tools=tuple(tools),
            effect_ceiling=ceiling,
            budget=budget,
            not_before=start,
            expires=expires,
        )
        try:
            writ = attenuate(parent.extra["writ"]["token"], runtime.root.public_key, terms)
        except WritError as exc:
            raise ToolFailure(ToolFailureCode.CHILD_INVALID, str(exc)) from None
        return WritRecord.issued(writ, terms, runtime.root.public_key).as_body()

    async def _create(self, actor: RunActor, spec: RunSpec, child_id: str) -> ActiveRun:
        """Store the child's run row and first entry, then launch its actor."""
        runtime = self._runtime
        # The child is the parent's creator's run too (per-key usage counts it).
        parent_active = runtime.active(actor.trajectory.run_id)
        parent_record = parent_active.record if parent_active is not None else None
        _, active = await runtime._begin(
            spec,
            child_id,
            rfc3339_from_us(runtime.clock.now_us()),
            created_by=parent_record.created_by if parent_record is not None else None,
            parent_run_id=actor.trajectory.run_id,
        )
        return active

    async def _follow(self, parent_id: str, child_id: str) -> ToolOutcome:
        """Wait for the child's end (cancelling it if the wait is cancelled) and return it."""
        runtime = self._runtime
        active = runtime.active(child_id) or await self._resumed(parent_id, child_id)
        if active is None:
            # Another node may drive the child (it took it over from a node that died).
            active = await self._driven_elsewhere(parent_id, child_id)
        if active is not None and active.task is not None:
            try:
                await asyncio.shield(active.task)
            except asyncio.CancelledError:
                self.cancel_children_of(parent_id, only=child_id)
                raise
        record = await runtime.store.get_run(child_id)
        if record is None:
            raise ToolFailure(
                ToolFailureCode.CHILD_UNAVAILABLE,
                f"the child run {child_id} was never created (the server stopped first)",
            )
        if not RunStatus(record.status).terminal:
            raise ToolFailure(
                ToolFailureCode.CHILD_UNAVAILABLE,
                f"the child run {child_id} is {record.status} but not active: it cannot be "
                "followed",
            )
        summary = record.summary
        usage = Usage.from_dict(summary.get("usage") or {})
        output = {
            "run_id": child_id,
            "status": record.status,
            "terminated_by": summary.get("terminated_by"),
            "final_answer": summary.get("final_answer"),
            "usage": usage.as_dict(),
        }
        return ToolOutcome(output, delegated_usage=usage)

    async def _driven_elsewhere(self, parent_id: str, child_id: str) -> ActiveRun | None:
        """On shared storage, wait while another node drives the child (or while none does
        yet: its node died and a heartbeat will take it over): until it ends (None), or until
        this node drives it (its active run). Cancelling the wait asks the child's node to
        cancel it."""
        runtime = self._runtime
        cluster = runtime.cluster
        if not cluster.shared:
            return None
        while True:
            with cluster.watch(child_id) as changed:
                active = runtime.active(child_id)
                if active is not None:
                    return active
                record = await runtime.store.get_run(child_id)
                if record is None or RunStatus(record.status).terminal:
                    return None
                owner = await cluster.owner(child_id)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), cluster.config.lease_ttl_s / 3)
                except asyncio.CancelledError:
                    if owner is not None:
                        cancel = {
                            "action": "cancel",
                            "requested_by": f"parent run {parent_id}",
                            "key_id": None,
                            "reason": "its parent was cancelled",
                        }
                        with contextlib.suppress(Exception):
                            await asyncio.shield(cluster.forward(owner, child_id, cancel))
                    raise

    async def _resumed(self, parent_id: str, child_id: str) -> ActiveRun | None:
        """A child the server stopped under, resumed for its resumed parent (or being resumed
        by crash recovery), so the parent follows it to a real end; None when the child is not
        interrupted (it ended, or never existed: `_follow` reports which)."""
        runtime = self._runtime
        for _ in range(RESUME_WAIT_POLLS):
            active = runtime.active(child_id)
            if active is not None:
                return active
            if child_id not in runtime._resuming:
                record = await runtime.store.get_run(child_id)
                interrupted = record is not None and (
                    record.summary.get("terminated_by") == TerminatedBy.INTERRUPTED.value
                )
                if not interrupted:
                    return None
                try:
                    await runtime.resume(
                        child_id,
                        None,
                        max_steps=None,
                        requested_by=f"parent run {parent_id}",
                        key_id=None,
                    )
                except ThymosError as exc:
                    if await runtime.cluster.owner(child_id) is not None:
                        return None  # another node resumed it: `_driven_elsewhere` follows it
                    if child_id not in runtime._resuming and runtime.active(child_id) is None:
                        raise ToolFailure(
                            ToolFailureCode.CHILD_UNAVAILABLE,
                            f"the child run {child_id} was interrupted and cannot be resumed: "
                            f"{exc.message}",
                        ) from None
                continue
            # Someone else (crash recovery) is resuming it right now.
            await asyncio.sleep(RESUME_WAIT_POLL_S)
        raise ToolFailure(
            ToolFailureCode.CHILD_UNAVAILABLE, f"the child run {child_id} did not resume in time"
        )

    # -- cancellation ------------------------------------------------------------------------

    def cancel_children_of(self, run_id: str, *, only: str | None = None) -> list[str]:
        """Cancel the active children of a run (or only the one named), and theirs, each
        naming its parent as who asked. Returns the runs asked to stop."""
        asked: list[str] = []
        for active in list(self._runtime._active.values()):
            record = active.record
            if record is None or record.parent_run_id != run_id:
                continue
            if only is not None and active.run_id != only:
                continue
            active.actor.post(Cancel(f"parent run {run_id}", None, CHILD_CANCEL_REASON))
            asked.append(active.run_id)
            asked.extend(self.cancel_children_of(active.run_id))
        return asked

    # -- listing -----------------------------------------------------------------------------

    async def list(
        self, run_id: str, tenant: str | None, *, before: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The run's children, newest first (404 exactly as for the run when it is not
        visible)."""
        runtime = self._runtime
        parent = await runtime.visible_record(run_id, tenant)
        records = await runtime.store.list_runs(
            tenant=parent.tenant, status=None, before=before, limit=limit, parent_run_id=run_id
        )
        return [delegation_view(runtime._live(record)) for record in records]


def _request(
    ask: DelegationAsk, scopes: list[str], budget: Budget, ceiling: Effect, parent: RunSpec
) -> StartRun:
    """The child as `POST /runs` would ask for it; cognition defaults to the parent's (a mock
    script alone means the mock, as it does on `POST /runs`)."""
    cognition = ask.cognition
    script = cognition.get("script")
    provider = cognition.get("provider") or ("mock" if script is not None else parent.provider)
    same = provider == parent.provider
    return StartRun(
        task=ask.task,
        max_steps=ask.max_steps if ask.max_steps is not None else MAX_STEPS_DEFAULT,
        tool_scopes=scopes,
        provider=provider,
        model=cognition.get("model") or (parent.model if same else None),
        base_url=parent.base_url if same else None,
        stream=parent.stream,
        context_tokens=parent.context_tokens if same else None,
        script=script,
        budget=budget,
        effect_ceiling=ceiling.value,
    )


def delegation_view(record: RunRecord) -> dict[str, Any]:
    """One child as `GET /runs/:id/delegations` shows it: its end so far and its narrowed
    authority."""
    spec, summary = record.spec, record.summary
    link = spec.get("parent") or {}
    writ = spec.get("writ") or {}
    return {
        "child_run_id": record.run_id,
        "seq": link.get("seq"),
        "intent": link.get("intent"),
        "depth": link.get("depth"),
        "task": spec["task"],
        "status": record.status,
        "terminated_by": summary.get("terminated_by"),
        "final_answer": summary.get("final_answer"),
        "created_at": record.created_at,
        "tool_scopes": spec["tool_scopes"],
        "tools": spec["tools"],
        "effect_ceiling": spec.get("effect_ceiling"),
        "budget": spec.get("budget"),
        "writ": {
            "id": writ.get("id"),
            "not_before": writ.get("not_before"),
            "expires": writ.get("expires"),
        },
        "usage": summary.get("usage"),
    }
