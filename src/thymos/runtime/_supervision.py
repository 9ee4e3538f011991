"""The runtime's supervision job: runs started (from a request, or as a branch), launched on an
actor and driven to their end, resumed, cancelled, recovered at start-up and stopped at shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from thymos.cognition import (
    PROVIDER_INFOS,
    RUNNABLE_KINDS,
    Cognition,
    CognitionEvent,
    base_url_problem,
    provider_info,
    validate_script,
)
from thymos.core import (
    LEDGER_FORMAT,
    DocumentKind,
    Effect,
    Entry,
    EntryKind,
    ErrorCode,
    NotCanonicalizable,
    RunSpec,
    RunStatus,
    TerminatedBy,
    ThymosError,
    World,
    blake3_hex,
    canonical_bytes,
    match_scope,
    rfc3339_from_us,
    seal,
    uuid7,
)
from thymos.governance import (
    Authority,
    DelegationBounds,
    WritError,
    WritRecord,
    WritTerms,
    lineage_of,
    mint,
)
from thymos.governance import parse as parse_writ
from thymos.observability import bind_run
from thymos.storage import Checkpoint, RunRecord
from thymos.tools import READ_ONLY_DEFAULT_SCOPES

from ._actor import ActorDeps, Cancel, RunActor, Stop
from ._base import (
    RECOVERY_REQUESTER,
    WRIT_VALIDITY_MS_DEFAULT,
    ActiveRun,
    RuntimeBase,
    _document,
    log,
)
from ._branch import BranchOrigin, BranchRun, branch_start, check_depth, find_commit
from ._feeds import Cell, Feed
from ._marketplace import Skill
from ._parking import writ_deadline_us
from ._registry import run_entities
from ._requests import StartRun
from ._state import RunState
from ._trajectory import Trajectory

if TYPE_CHECKING:
    from ._service import Runtime


class Supervision(RuntimeBase):
    """Starting, resuming, cancelling, recovering and stopping runs; each run's actor."""

    async def keep_documents(self) -> None:
        """Store the active policy set and tool catalog by hash (once per process): every
        decision names them, and replay and exports fetch them by that hash."""
        if self._documents_kept:
            return
        await self.store.put_documents(
            [
                _document(DocumentKind.POLICY_SET, self.policy.document()),
                _document(DocumentKind.TOOL_CATALOG, self.catalog.document()),
            ]
        )
        self._documents_kept = True

    async def recover(self) -> int:
        """Load revocations; relaunch runs that wait for approval (their approvals survive a
        restart); record runs left running by a previous process as interrupted, then (unless
        `auto_resume` is off) resume every interrupted run. Returns how many were interrupted."""
        self._revocations = frozenset(await self.store.revocations())
        await self.keep_documents()
        self.views.start()
        self.parking.start()
        self.cluster.start(
            handle=self._forwarded,
            held=lambda: set(self._active),
            lost=self._lost,
            take_over=self._take_over,
        )
        # Probed while runs are recovered (a jailed process takes a while to start); it is done
        # before the server serves.
        probe = asyncio.create_task(self.sandbox.probe())
        try:
            return await self._recover_runs()
        finally:
            support = await probe
            if not support.usable:
                log.warning(
                    "commands (shell, test_run) are refused: %s%s",
                    support.reason,
                    "" if self.config.sandbox else " (THYMOS_SANDBOX=off: they run unconfined)",
                )

    async def _recover_runs(self) -> int:
        count = 0
        for record in await self.store.runs_with_status(
            [RunStatus.RUNNING.value, RunStatus.WAITING_APPROVAL.value]
        ):
            if (
                record.status == RunStatus.WAITING_APPROVAL.value
                and record.parent_run_id is None
                and record.writ_id not in self._revocations
            ):
                # It waits parked: a vote or a cancel wakes it, or its writ's deadline here. (A
                # run whose writ was revoked is loaded below: it decides again, refusing.)
                self.parking.park(
                    record.run_id,
                    writ_deadline_us(record.spec.get("writ")),
                    len(record.summary.get("pending") or {}),
                )
                continue
            # On shared storage, a run another live node drives is left to it.
            if await self.cluster.claim(record.run_id):
                count += await self._recover_one(record)
        if self.config.auto_resume:
            await self._resume_interrupted()
        return count

    async def _recover_one(self, record: RunRecord) -> int:
        """Recover one run this node now holds the lease of, that was active when the node
        driving it stopped: one waiting for approval waits again here; one that was running is
        recorded interrupted and (unless `auto_resume` is off) resumed at once. 1 when it was
        interrupted."""
        try:
            state = await self._load_state(record)
        except ThymosError as exc:
            # Left as stored: neither continued nor ended, so nothing vouches for it.
            self._unloadable.add(record.run_id)
            log.error(
                "run %s cannot be recovered: %s",
                record.run_id,
                exc.message,
                extra={"run_id": record.run_id},
            )
            return 0
        if state.summary.status is RunStatus.WAITING_APPROVAL:
            try:
                self._launch(record, state)
            except (ThymosError, WritError) as exc:
                self._unloadable.add(record.run_id)
                log.error("run %s waits for approval but cannot be loaded: %s", record.run_id, exc)
            return 0
        if state.summary.status.terminal:
            await self.cluster.release(record.run_id)  # it ended after all
            return 0
        trajectory = self._unobserved(record.run_id, state)
        body = {
            "status": RunStatus.FAILED.value,
            "terminated_by": TerminatedBy.INTERRUPTED.value,
            "final_answer": None,
            "error": "the server stopped while the run was active",
        }
        await trajectory.append([(EntryKind.RUN_ENDED, body)])
        if self.config.auto_resume:
            # At once, with the state just folded: the first run is going again before the
            # others are even read.
            if not await self._auto_resume(record, state):
                await self.cluster.release(record.run_id)
        else:
            await self.cluster.release(record.run_id)
        return 1

    async def _take_over(self, run_id: str) -> None:
        """A run whose node stopped renewing its lease, now claimed by this one."""
        record = await self.store.get_run(run_id)
        if record is None or run_id in self._active or RunStatus(record.status).terminal:
            if run_id not in self._active:
                await self.cluster.release(run_id)
            return
        log.info("taking over run %s from a node that stopped", run_id)
        await self._recover_one(record)

    def _lost(self, run_id: str) -> None:
        """Another node took the run over: stop driving it, writing nothing more."""
        active = self._active.get(run_id)
        if active is not None:
            active.actor.abandon()

    async def _forwarded(self, run_id: str, action: dict[str, Any]) -> dict[str, Any]:
        forwarded = cast("Runtime", self).forwarded
        return await forwarded(run_id, action)

    async def _auto_resume(self, record: RunRecord, state: RunState | None) -> bool:
        """Resume an interrupted run at start-up if a slot is free; False leaves it
        interrupted (the log says why) for an operator to resume."""
        if len(self._active) + self._starting >= self.config.runs_active_max:
            log.warning(
                "run %s stays interrupted: every slot is taken; POST /runs/%s/resume resumes it",
                record.run_id,
                record.run_id,
            )
            return False
        try:
            await self._claim_and_resume(record, None, RECOVERY_REQUESTER, None, state)
        except ThymosError as exc:
            log.error("run %s was interrupted and cannot be resumed: %s", record.run_id, exc)
            return False
        except Exception:
            # One run that cannot be loaded must not keep the server (and every other run)
            # down: it stays interrupted, and the log says why.
            log.exception("run %s was interrupted and cannot be resumed", record.run_id)
            return False
        return True

    async def _resume_interrupted(self) -> None:
        """Resume the runs a previous process stopped under before they ended (a shutdown
        records them interrupted), oldest first, as many as there are free slots."""
        for record in await self.store.runs_interrupted():
            if record.run_id not in self._unloadable and record.run_id not in self._active:
                await self._auto_resume(record, None)

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting runs, let active runs reach a safe point, record the rest interrupted."""
        self.accepting = False
        for active in list(self._active.values()):
            active.actor.post(Stop(TerminatedBy.INTERRUPTED, "the server is shutting down"))
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(1.0, grace_s))
        self.closed.set()
        await self.parking.stop()
        await self.cluster.stop()
        for active in list(self._active.values()):
            self._close_feeds(active)
        self.tool_pool.close()
        await self.views.stop()
        await self._model_http.aclose()

    def check_max_steps(self, max_steps: int) -> None:
        """422 for more steps than the operator allows (`THYMOS_MAX_STEPS_MAX`)."""
        bound = self.config.max_steps_max
        if max_steps > bound:
            raise ThymosError(
                ErrorCode.INVALID_REQUEST,
                f"max_steps may be at most {bound} on this server (THYMOS_MAX_STEPS_MAX)",
                {"field": "max_steps", "max_steps_max": bound},
            )

    def resolve_scopes(self, scopes: list[str] | None, tenant: str) -> tuple[list[str], list[str]]:
        """(scopes as given, the tools they cover among those the tenant's runs may use: the
        server's and the tenant's installed packages'); 422 for a scope matching nothing."""
        registry = self.views.current(tenant).tools
        given = list(READ_ONLY_DEFAULT_SCOPES) if scopes is None else list(scopes)
        tools: list[str] = []
        unknown = []
        for scope in given:
            matched = registry.match(scope)
            if not matched:
                unknown.append(scope)
            tools.extend(name for name in matched if name not in tools)
        if unknown:
            raise ThymosError(
                ErrorCode.UNKNOWN_TOOL_SCOPE,
                f"tool scope {unknown[0]!r} matches no registered capability",
                {"unknown_scopes": unknown, "registered": registry.match("*")},
            )
        return given, sorted(tools)

    async def start_run(
        self,
        request: StartRun,
        *,
        tenant: str,
        idempotency_key: str | None = None,
        created_by: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Start a run. Returns (record, created); `created` is False for an idempotent replay."""
        if not self.accepting:
            raise ThymosError(
                ErrorCode.SHUTTING_DOWN, "the server is shutting down and accepts no new runs"
            )
        skills = await self.marketplace.skills(request.skills) if request.skills else []
        await self.views.view(tenant)  # what the tenant installed, as stored now
        spec = self._spec(request, tenant, skills)
        if idempotency_key is None:
            return await self._create(spec, None, created_by), True
        body_hash = blake3_hex(canonical_bytes(spec.as_body()))
        async with self._idempotency_lock:
            hit = await self.store.find_idempotency(tenant, idempotency_key)
            if hit is not None:
                if hit.body_hash != body_hash:
                    raise ThymosError(
                        ErrorCode.IDEMPOTENCY_CONFLICT,
                        "this Idempotency-Key was used with a different request body",
                        {"run_id": hit.run_id},
                    )
                record = await self.store.get_run(hit.run_id)
                assert record is not None, "an idempotency row always names a stored run"
                return record, False
            try:
                return await self._create(spec, (idempotency_key, body_hash), created_by), True
            except ThymosError as exc:
                # Another node stored a run under this key between the lookup and the insert
                # (the lock above is this process's): the same request is answered with it.
                if exc.code is not ErrorCode.IDEMPOTENCY_CONFLICT:
                    raise
                hit = await self.store.find_idempotency(tenant, idempotency_key)
                if hit is None or hit.body_hash != body_hash:
                    raise
                record = await self.store.get_run(hit.run_id)
                assert record is not None, "an idempotency row always names a stored run"
                return record, False

    def _spec(self, request: StartRun, tenant: str, skills: Sequence[Skill] = ()) -> RunSpec:
        """The run's spec from a request; `skills` (already looked up) narrow it: the run keeps
        only the tools its own scopes give that every skill's scopes also cover (recorded as
        its scopes, so its writ holds exactly those), its ceiling is the lowest of its own and
        every skill's (`pure` read as `read`), and each skill's instructions follow the task."""
        if not request.task.strip():
            raise ThymosError(
                ErrorCode.INVALID_REQUEST, "task must not be empty", {"field": "task"}
            )
        self.check_max_steps(request.max_steps)
        scopes, tools = self.resolve_scopes(
            None if request.tool_scopes is None else list(request.tool_scopes), tenant
        )
        task = request.task
        if skills:
            tools = [
                name
                for name in tools
                if all(any(match_scope([name], s) for s in skill.tool_scopes) for skill in skills)
            ]
            scopes = list(tools)
            task += "".join(
                f"\n\nSkill {skill.reference}:\n{skill.instructions}" for skill in skills
            )
        # A mock script names its provider: a run with a script and no provider is the mock's.
        provider = request.provider or (
            "mock" if request.script is not None else self.config.default_provider
        )
        info = provider_info(provider)
        if info is None or info.kind not in RUNNABLE_KINDS:
            runnable = [p.name for p in PROVIDER_INFOS if p.kind in RUNNABLE_KINDS]
            raise ThymosError(
                ErrorCode.UNKNOWN_PROVIDER,
                f"cognition provider {provider!r} is not available in this build",
                {"available": runnable},
            )
        if not self.config.providers.usable(info) and not request.base_url:
            raise ThymosError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"cognition provider {provider!r} needs {info.key_variable} on the server",
                {"provider": provider, "key_variable": info.key_variable},
            )
        problem = base_url_problem(request.base_url) if request.base_url is not None else None
        if problem is not None:
            raise ThymosError(ErrorCode.INVALID_REQUEST, problem, {"field": "cognition.base_url"})
        if request.base_url is not None and info.kind != "openai":
            raise ThymosError(
                ErrorCode.INVALID_REQUEST,
                "cognition.base_url is for OpenAI-compatible providers",
                {"field": "cognition.base_url"},
            )
        script = None
        if request.script is not None:
            if provider != "mock":
                raise ThymosError(
                    ErrorCode.INVALID_SCRIPT, "cognition.script is only for the mock provider"
                )
            problems = validate_script(list(request.script), self.config.script_elements_max)
            if problems:
                raise ThymosError(
                    ErrorCode.INVALID_SCRIPT, problems[0], {"problems": problems[:20]}
                )
            script = tuple(request.script)
        catalog = self.views.current(tenant).catalog
        specs = [catalog.get(name) for name in tools]
        needed = max(
            (Effect(s.effect) for s in specs if s is not None),
            key=lambda e: e.rank,
            default=Effect.READ,
        )
        ceiling = needed
        if request.effect_ceiling is not None:
            try:
                ceiling = Effect(request.effect_ceiling)
            except ValueError:
                raise ThymosError(
                    ErrorCode.INVALID_EFFECT_CEILING,
                    f"effect_ceiling must be one of {', '.join(e.value for e in Effect)}",
                ) from None
        for skill in skills:
            if skill.effect_ceiling is not None:
                bound = Effect("read" if skill.effect_ceiling == "pure" else skill.effect_ceiling)
                ceiling = min(ceiling, bound, key=lambda e: e.rank)
        extra: dict[str, Any] = {
            "format": LEDGER_FORMAT,
            "effect_ceiling": ceiling.value,
            "max_delegation_depth": self.config.max_delegation_depth,
        }
        if skills:
            extra["skills"] = [skill.record() for skill in skills]
        spec = RunSpec(
            task=task,
            max_steps=request.max_steps,
            tool_scopes=tuple(scopes),
            tools=tuple(tools),
            provider=provider,
            # The model is recorded as used (the provider's default unless asked), so the
            # ledger says what thought and the price table can price it.
            model=request.model or info.default_model,
            base_url=request.base_url,
            stream=request.stream,
            context_tokens=request.context_tokens,
            script=script,
            budget=request.budget,
            tenant=tenant,
            extra=extra,
        )
        try:
            canonical_bytes(spec.as_body())
        except NotCanonicalizable as exc:
            raise ThymosError(
                ErrorCode.INVALID_REQUEST,
                f"the request has a value with no canonical JSON form: {exc}",
            ) from exc
        return spec

    async def _create(
        self,
        spec: RunSpec,
        idempotency: tuple[str, str] | None,
        created_by: str | None,
        *,
        inherited: World | None = None,
    ) -> RunRecord:
        # A slot is taken before the first await and held until the run is registered as
        # active (or its creation failed): the check and the registration must not be split by
        # an await, or every concurrent request passes the check at once.
        self._check_capacity()
        self._starting += 1
        try:
            return await self._create_in_slot(spec, idempotency, created_by, inherited)
        finally:
            self._starting -= 1

    async def _create_in_slot(
        self,
        spec: RunSpec,
        idempotency: tuple[str, str] | None,
        created_by: str | None,
        inherited: World | None = None,
    ) -> RunRecord:
        """Record a run's first entry and launch its actor. `inherited` is a branch's world: its
        state starts from it and it is stored as the run's checkpoint at seq 0."""
        await self.keep_documents()
        now_us = self.clock.now_us()
        run_id = uuid7(now_us // 1000, self._random(10))
        now = rfc3339_from_us(now_us)
        writ = self._mint(spec, now_us)
        spec = replace(spec, extra={**spec.extra, "writ": writ})
        record, _ = await self._begin(
            spec, run_id, now, created_by=created_by, idempotency=idempotency, inherited=inherited
        )
        return record

    async def _begin(
        self,
        spec: RunSpec,
        run_id: str,
        now: str,
        *,
        created_by: str | None,
        parent_run_id: str | None = None,
        idempotency: tuple[str, str] | None = None,
        inherited: World | None = None,
    ) -> tuple[RunRecord, ActiveRun]:
        """The one way a run begins (a request, a branch, a delegation): seal its first entry
        from its spec (its writ already in it), store it with the run row under this node's
        lease, and launch its actor. `inherited` is a branch's world: its state starts from it
        and it is stored as the run's checkpoint at seq 0."""
        first = seal(
            run_id=run_id,
            seq=0,
            parent=None,
            kind=EntryKind.RUN_STARTED,
            time=now,
            body=spec.as_body(),
        )
        state = RunState(spec, world=World() if inherited is None else inherited.copy())
        state.fold(first)
        checkpoint = None
        if inherited is not None:
            checkpoint = Checkpoint(run_id, 0, inherited.snapshot())
            state.last_checkpoint_seq = 0
        record = RunRecord(
            run_id,
            spec.tenant,
            RunStatus.RUNNING.value,
            now,
            now,
            spec.as_body(),
            state.summary.as_dict(),
            created_by,
            spec.extra["writ"]["id"],
            parent_run_id=parent_run_id,
        )
        await self.cluster.claim(run_id)  # a new id: nobody else holds it
        submitted = time.perf_counter()
        await self.store.create_run(record, first, idempotency, checkpoint)
        self.observer.durable((first,), time.perf_counter() - submitted)
        return record, self._launch(record, state, first)

    async def branch(
        self,
        run_id: str,
        tenant: str | None,
        request: BranchRun,
        *,
        created_by: str | None,
        requested_by: str | None = None,
    ) -> RunRecord:
        """Start a new run whose world is the source run's world after one of its commits, with
        its own writ (the source's scopes, effect ceiling and budget) and the source's task, step
        limit and cognition unless the request changes them (`_branch.py`)."""
        if not self.accepting:
            raise ThymosError(
                ErrorCode.SHUTTING_DOWN, "the server is shutting down and accepts no new runs"
            )
        source = await self.visible_record(run_id, tenant)
        seq = await find_commit(self.store, source, request.commit_id)
        await self.views.view(source.tenant)
        spec = self._spec(branch_start(RunSpec.from_body(source.spec), request), source.tenant)
        await check_depth(self.store, source)
        world = await self.world_at(run_id, seq)
        origin = BranchOrigin(run_id, request.commit_id, seq, world.hash, requested_by, created_by)
        extra = {**spec.extra, "branch_of": origin.as_body()}
        if "skills" in source.spec:
            # Its scopes and ceiling are the source's, which the source's skills narrowed.
            extra["skills"] = source.spec["skills"]
        spec = replace(spec, extra=extra)
        return await self._create(spec, None, created_by, inherited=world)

    async def resume(
        self,
        run_id: str,
        tenant: str | None,
        *,
        max_steps: int | None,
        requested_by: str,
        key_id: str | None,
    ) -> RunRecord:
        """Continue a failed or cancelled run on its own ledger: its writ, the usage it spent,
        its world and its model's context are all rebuilt from the ledger; a `resumption`
        entry records who asked and the step limit from now on."""
        if not self.accepting:
            raise ThymosError(
                ErrorCode.SHUTTING_DOWN, "the server is shutting down and resumes no runs"
            )
        record = await self.visible_record(run_id, tenant)
        status = RunStatus(record.status)
        if run_id in self._active or run_id in self._resuming or not status.resumable:
            shown = "active" if run_id in self._active or not status.terminal else status.value
            raise ThymosError(
                ErrorCode.RUN_NOT_RESUMABLE,
                f"the run is {shown}: only a failed or cancelled run can be resumed",
                {"status": record.status},
            )
        if run_id in self._unloadable:
            raise ThymosError(
                ErrorCode.RUN_NOT_RESUMABLE,
                "the run could not be loaded at start-up; the server log says why",
            )
        return await self._claim_and_resume(record, max_steps, requested_by, key_id)

    async def _claim_and_resume(
        self,
        record: RunRecord,
        max_steps: int | None,
        requested_by: str,
        key_id: str | None,
        state: RunState | None = None,
    ) -> RunRecord:
        self._check_capacity()
        # Claimed before the first await: a second resume of the same run is refused.
        self._resuming.add(record.run_id)
        self._starting += 1
        try:
            if not await self.cluster.claim(record.run_id):
                raise ThymosError(
                    ErrorCode.RUN_NOT_RESUMABLE, "another node is driving or resuming the run"
                )
            return await self._resume_claimed(record, max_steps, requested_by, key_id, state)
        finally:
            self._starting -= 1
            self._resuming.discard(record.run_id)

    async def _control(self, record: RunRecord, action: str) -> ActiveRun | str:
        """Where a control action (a vote, a cancel) on a run goes: its active run here, or
        the node that drives it (to forward it to). A parked run, waiting for votes with no
        actor, is woken here first; otherwise as `_running` says."""
        run_id = record.run_id
        active = self._active.get(run_id)
        if active is not None:
            return active
        owner = await self.cluster.owner(run_id)
        if owner is not None:
            return owner
        if record.status == RunStatus.WAITING_APPROVAL.value and run_id not in self._unloadable:
            woken = await self._wake(run_id)
            if woken is not None:
                return woken
            owner = await self.cluster.owner(run_id)
            if owner is not None:
                return owner
            record = await self.store.get_run(run_id) or record
        return self._running(record, action)

    async def _wake(self, run_id: str) -> ActiveRun | None:
        """Give a parked run an actor again (its state folded from its ledger, verified as it
        goes); None when another node took it first or it no longer waits. 429
        `capacity_exhausted` when every slot is taken."""
        lock = self._waking.setdefault(run_id, asyncio.Lock())
        try:
            async with lock:
                active = self._active.get(run_id)
                if active is not None:
                    return active
                self._check_capacity()
                self._starting += 1
                try:
                    return await self._wake_claimed(run_id)
                finally:
                    self._starting -= 1
        finally:
            if not lock.locked():
                self._waking.pop(run_id, None)

    async def _wake_claimed(self, run_id: str) -> ActiveRun | None:
        if not await self.cluster.claim(run_id):
            return None
        record = await self.store.get_run(run_id)
        if record is None or record.status != RunStatus.WAITING_APPROVAL.value:
            await self.cluster.release(run_id)
            return None
        try:
            state = await self._load_state(record)
            if state.summary.status is not RunStatus.WAITING_APPROVAL:
                await self.cluster.release(run_id)
                return None
            self.parking.unpark(run_id)
            return self._launch(record, state)
        except (ThymosError, WritError) as exc:
            self._unloadable.add(run_id)
            await self.cluster.release(run_id)
            log.error("parked run %s cannot be woken: %s", run_id, exc)
            raise ThymosError(
                ErrorCode.RUN_NOT_ACTIVE, "the run could not be loaded; the server log says why"
            ) from None

    async def _wake_due(self, run_id: str) -> bool:
        """Wake a parked run at its writ's deadline (it then refuses what it waited for);
        False when no slot is free (tried again shortly)."""
        try:
            await self._wake(run_id)
        except ThymosError as exc:
            if exc.code is ErrorCode.CAPACITY_EXHAUSTED:
                return False
            raise
        return True

    async def cancel(
        self,
        run_id: str,
        tenant: str | None,
        *,
        requested_by: str,
        key_id: str | None,
        reason: str | None,
    ) -> dict[str, Any]:
        """Ask an active run to stop now; its end (a `cancellation` entry with who asked, then
        `run_ended` cancelled) is recorded by its actor. Commits already made stay."""
        record = await self.visible_record(run_id, tenant)
        active = await self._control(record, "cancelled")
        if isinstance(active, str):
            cancel = {
                "action": "cancel",
                "requested_by": requested_by,
                "key_id": key_id,
                "reason": reason,
            }
            return await self.cluster.forward(active, run_id, cancel)
        active.actor.post(Cancel(requested_by, key_id, reason))
        # Its children too, at once (each naming this run), not only when its wait ends.
        self.delegations.cancel_children_of(run_id)
        return {"run_id": run_id, "status": active.actor.trajectory.state.summary.status.value}

    async def _resume_claimed(
        self,
        record: RunRecord,
        max_steps: int | None,
        requested_by: str,
        key_id: str | None,
        state: RunState | None = None,
    ) -> RunRecord:
        """Record the resumption and start the run's actor (`state`: the run's state as
        already folded, else it is loaded from the ledger)."""
        if state is None:
            state = await self._load_state(record)
        steps = state.summary.steps_executed
        limit = max_steps if max_steps is not None else state.spec.max_steps
        if max_steps is not None:
            self.check_max_steps(max_steps)
        if limit <= steps:
            raise ThymosError(
                ErrorCode.INVALID_REQUEST,
                f"the run has taken {steps} steps of its max_steps {state.spec.max_steps}; "
                f"resume it with a max_steps above {steps}",
                {"field": "max_steps", "steps_executed": steps},
            )
        # An external call whose outcome is unknown is decided by the actor: an idempotent tool
        # runs again under the same key, any other asks an operator on the recovery channel.
        summary = state.summary
        body = {
            "max_steps": limit,
            "requested_by": requested_by,
            "key_id": key_id,
            "previous_status": summary.status.value,
            "previous_terminated_by": summary.terminated_by,
        }
        # Everything that can refuse the run is checked before its resumption is recorded: a
        # recorded resumption always has an actor.
        try:
            prepared = self._prepare(record.run_id, state.spec)
        except WritError as exc:
            raise ThymosError(
                ErrorCode.RUN_NOT_RESUMABLE,
                f"the run's writ does not verify under this server's root key: {exc}",
            ) from None
        trajectory = self._unobserved(record.run_id, state)
        await trajectory.append([(EntryKind.RESUMPTION, body)])
        resumed = await self.store.get_run(record.run_id)
        assert resumed is not None, "a run being resumed is stored"
        self._launch(resumed, state, prepared=prepared)
        return resumed

    def _check_capacity(self) -> None:
        """429 when one more active run would pass the limit (callers take their slot before
        their first await, so the check and the claim are not split)."""
        limit = self.config.runs_active_max
        if len(self._active) + self._starting >= limit:
            raise ThymosError(
                ErrorCode.CAPACITY_EXHAUSTED,
                f"this server already runs {limit} runs; retry shortly",
                {"retry_after_s": 1, "runs_active_max": limit},
            )

    def _mint(self, spec: RunSpec, now_us: int) -> dict[str, Any]:
        """The run's writ: its scopes, effect ceiling, budgets, validity window and tenant."""
        start = datetime.fromtimestamp(now_us // 1_000_000, tz=UTC)
        budget = spec.budget
        lifetime_ms = (
            budget.wall_clock_ms if budget.wall_clock_ms is not None else WRIT_VALIDITY_MS_DEFAULT
        )
        terms = WritTerms(
            tenant=spec.tenant,
            tools=spec.tool_scopes,
            effect_ceiling=Effect(spec.extra["effect_ceiling"]),
            budget=budget,
            not_before=start,
            expires=start + timedelta(milliseconds=lifetime_ms) + timedelta(seconds=1),
        )
        try:
            writ = mint(self.root.private_key, terms)
        except WritError as exc:
            raise ThymosError(ErrorCode.UNKNOWN_TOOL_SCOPE, str(exc)) from exc
        return WritRecord.issued(writ, terms, self.root.public_key).as_body()

    def _authority(self, run_id: str, spec: RunSpec) -> Authority:
        try:
            record = WritRecord.of(spec.extra.get("writ"))
        except ValueError as exc:
            raise WritError(str(exc)) from None
        token = parse_writ(record.token, self.root.public_key)
        view = self.views.current(spec.tenant)
        return Authority(
            run_id=run_id,
            tenant=spec.tenant,
            writ=token,
            lineage=lineage_of(token),
            policy=view.policy,
            entities=run_entities(view, run_id, spec),
            delegation=DelegationBounds.of_run(spec.as_body()),
        )

    def _prepare(self, run_id: str, spec: RunSpec) -> tuple[Cognition, Authority]:
        """A run's cognition and authority (WritError when its writ does not verify)."""
        return self._provider_factory(spec), self._authority(run_id, spec)

    def _launch(
        self,
        record: RunRecord,
        state: RunState,
        *already: Entry,
        prepared: tuple[Cognition, Authority] | None = None,
    ) -> ActiveRun:
        entries: Feed[Entry] = Feed(first_id=0)
        for entry in already:
            entries.publish(entry, entry.seq)
        cognition: Feed[CognitionEvent] = Feed()
        # The snapshot is rebuilt only when read after a change (`active` is bound below,
        # before anything can read it).
        snapshot: Cell[dict[str, Any]] = Cell(lambda: self._execution_of(active))
        trajectory = Trajectory(
            run_id=record.run_id,
            store=self.store,
            state=state,
            clock=self.clock,
            entries=entries,
            on_change=snapshot.touch,
            signer=self._signer,
            observer=self.observer,
        )
        provider, authority = prepared or self._prepare(record.run_id, state.spec)
        view = self.views.current(record.tenant)
        deps = ActorDeps(
            view.catalog,
            view.tools,
            self.workspace,
            self.clock,
            cognition,
            self.revocations,
            self.tool_pool,
            self.sandbox,
            self.redactor,
            self.config.prices,
            delegate=self.delegations.delegate,
            # A delegated child waits inside its parent's call, which follows its actor: it is
            # not parked (its parent holds a slot for it anyway).
            park_when_waiting=record.parent_run_id is None,
            tenant_view=functools.partial(self.views.current, record.tenant),
            observer=self.observer,
        )
        actor = RunActor(trajectory, provider, deps, authority, snapshot.touch)
        active = ActiveRun(
            record.run_id, record.tenant, actor, entries, cognition, snapshot, record=record
        )
        self._active[record.run_id] = active
        active.task = asyncio.create_task(self._drive(active), name=f"run-{record.run_id}")
        return active

    async def _drive(self, active: ActiveRun) -> None:
        # The run's task logs as the run (it was created inside a request's context).
        bind_run(active.run_id, active.tenant)
        try:
            await active.actor.run()
        finally:
            self._active.pop(active.run_id, None)
            self._close_feeds(active)
            actor = active.actor
            if actor.idle:
                # Waiting for votes with no actor: any node may wake it (a vote, a cancel);
                # this one also at its writ's deadline.
                self.parking.park(
                    active.run_id,
                    actor.deadline_us,
                    len(actor.trajectory.state.summary.pending),
                )
                await self.cluster.release(active.run_id)
            elif not actor.abandoned and not actor.parked:
                await self.cluster.release(active.run_id)

    @staticmethod
    def _close_feeds(active: ActiveRun) -> None:
        active.entries.close()
        active.cognition.close()
        active.snapshot.close()
