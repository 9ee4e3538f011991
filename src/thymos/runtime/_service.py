"""The runtime service: starts runs, owns their actors, and answers every read about them.

Route handlers call one method here each. Active runs are held in `_active` (one actor task,
its trajectory and its feeds); finished runs are read from storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import biscuit_auth as biscuit
import httpx2
import orjson

from thymos import __version__
from thymos.cognition import (
    PROVIDER_INFOS,
    RUNNABLE_KINDS,
    Cognition,
    CognitionEvent,
    Prices,
    ProviderEnv,
    base_url_problem,
    create_provider,
    model_http_client,
    provider_info,
    validate_script,
)
from thymos.core import (
    LEDGER_FORMAT,
    ChainVerifier,
    CorruptEntry,
    DocumentKind,
    Effect,
    Entry,
    EntryKind,
    ErrorCode,
    HeadSigner,
    NotCanonicalizable,
    Redactor,
    RunSpec,
    RunStatus,
    RunSummary,
    TerminatedBy,
    ThymosError,
    Usage,
    World,
    blake3_hex,
    canonical_bytes,
    deltas_of,
    is_hex64,
    is_run_id,
    parse_envelope,
    rfc3339_from_us,
    seal,
    uuid7,
)
from thymos.governance import (
    MAX_DELEGATION_DEPTH_DEFAULT,
    WRIT_FORMAT,
    Authority,
    DelegationBounds,
    PolicySet,
    ToolCatalog,
    WritError,
    WritTerms,
    default_policy_files,
    lineage_of,
    mint,
    new_root_key,
    public_key_hex,
)
from thymos.governance import parse as parse_writ
from thymos.storage import Checkpoint, Document, LedgerStore, RunRecord
from thymos.tools import (
    READ_ONLY_DEFAULT_SCOPES,
    McpHub,
    Sandbox,
    ToolPool,
    ToolRegistry,
    Workspace,
)

from ._actor import ActorDeps, RunActor, Vote
from ._branch import (
    BranchOrigin,
    BranchRun,
    branch_start,
    check_depth,
    find_commit,
    replay_through_source,
    starting_world,
)
from ._clock import Clock, SystemClock, system_random
from ._delegation import Delegations
from ._feeds import Cell, Feed
from ._limits import REPLAY_PAGE_ROWS, RUNS_ACTIVE_MAX, SUBSCRIBERS_PER_RUN_MAX
from ._replay import referenced_documents
from ._requests import StartRun
from ._state import RunState
from ._streams import Streams
from ._trajectory import Trajectory
from ._views import execution_view, pending_view, run_view

log = logging.getLogger("thymos.runtime")

DEFAULT_TENANT = "default"

RECOVERY_REQUESTER = "server (crash recovery)"
"""Who a resumption at start-up names as having asked for it."""

WRIT_VALIDITY_MS_DEFAULT = 7 * 24 * 3600 * 1000
"""A run's writ is valid for a week unless its wall-clock budget says less: long enough for an
approval to wait over a weekend, short enough that a forgotten run's authority lapses."""


@dataclass(slots=True)
class ActiveRun:
    run_id: str
    tenant: str
    actor: RunActor
    entries: Feed[Entry]
    cognition: Feed[CognitionEvent]
    snapshot: Cell[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    subscribers: int = 0
    record: RunRecord | None = None


@dataclass(slots=True)
class RuntimeConfig:
    workspace: Path
    mode: str = "reference"
    default_provider: str = "mock"
    providers: ProviderEnv = field(default_factory=ProviderEnv, repr=False)
    prices: Prices = field(default_factory=Prices)
    """The providers' keys and endpoints (from the environment, never shown)."""
    protected: tuple[Path, ...] = ()
    """Paths no tool may reach wherever they lie: the data directory, key files, policies."""
    runs_active_max: int = RUNS_ACTIVE_MAX
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Values redacted from every tool output (the server's keys and passwords)."""
    sandbox: bool = True
    """False only when the operator opted out (`THYMOS_SANDBOX=off`): commands then run
    without namespaces or Landlock."""
    auto_resume: bool = True
    """Resume at start-up the runs a previous process stopped under (`THYMOS_AUTO_RESUME`)."""
    max_delegation_depth: int = MAX_DELEGATION_DEPTH_DEFAULT
    """How deep child runs may nest (`THYMOS_MAX_DELEGATION_DEPTH`); each run records the bound
    it started under, so its `delegate` calls are decided (and replayed) against that."""


@dataclass(slots=True)
class _Subscription:
    active: ActiveRun | None
    released: bool = field(default=False)


class Runtime:
    def __init__(
        self,
        *,
        store: LedgerStore,
        tools: ToolRegistry,
        config: RuntimeConfig,
        clock: Clock | None = None,
        root: biscuit.KeyPair | None = None,
        policy: PolicySet | None = None,
        random: Callable[[int], bytes] = system_random,
        provider_factory: Callable[[RunSpec], Cognition] | None = None,
        mcp: McpHub | None = None,
    ) -> None:
        self.store = store
        # The root key signs every run's writ. Tests and the benchmark may let it be generated;
        # the server passes the persistent one.
        self.root = root or new_root_key()
        self.policy = policy or PolicySet(default_policy_files())
        # The root key also signs run heads (the same Ed25519 key, published at /writs/root-key).
        self._signer = HeadSigner(bytes(self.root.private_key.to_bytes()))
        self._documents_kept = False
        self._revocations: frozenset[str] = frozenset()
        self._unloadable: set[str] = set()
        self._resuming: set[str] = set()
        """Runs whose resumption is being recorded (a second request for one is refused)."""
        self.tools = tools
        self.catalog = ToolCatalog(tools.specs())
        self.config = config
        self.workspace = Workspace.of(config.workspace, config.protected)
        self.tool_pool = ToolPool()
        self.mcp = mcp
        """The MCP servers tools come from (their state shows in /health and /ready)."""
        self.sandbox = Sandbox(self.workspace, enforce=config.sandbox)
        self.redactor = Redactor((*config.secrets, bytes(self.root.private_key.to_bytes()).hex()))
        self.clock = clock or SystemClock()
        self._random = random
        # How a run gets its cognition; tests and the benchmark substitute their own.
        self._model_http = model_http_client()
        self._provider_factory = provider_factory or _provider_factory(
            config.providers, self._model_http
        )
        self._active: dict[str, ActiveRun] = {}
        self._starting = 0
        """Runs being created: counted against the active-run limit before they are active."""
        self._idempotency_lock = asyncio.Lock()
        self.streams = Streams(self)
        """How observers follow a run (the SSE routes format what it yields)."""
        self.accepting = True
        self.closed = asyncio.Event()
        self.delegations = Delegations(self)
        """Child runs started by `delegate`: started, followed, cancelled and listed there."""

    # -- lifecycle ---------------------------------------------------------------------------

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
            try:
                state = await self._load_state(record)
            except ThymosError as exc:
                # Left as stored: neither continued nor ended, so nothing vouches for it.
                self._unloadable.add(record.run_id)
                log.error("run %s cannot be recovered: %s", record.run_id, exc.message)
                continue
            if state.summary.status is RunStatus.WAITING_APPROVAL:
                try:
                    self._launch(record, state)
                except (ThymosError, WritError) as exc:
                    self._unloadable.add(record.run_id)
                    log.error(
                        "run %s waits for approval but cannot be loaded: %s", record.run_id, exc
                    )
                continue
            trajectory = self._unobserved(record.run_id, state)
            body = {
                "status": RunStatus.FAILED.value,
                "terminated_by": TerminatedBy.INTERRUPTED.value,
                "final_answer": None,
                "error": "the server stopped while the run was active",
            }
            await trajectory.append([(EntryKind.RUN_ENDED, body)])
            count += 1
            if self.config.auto_resume:
                # At once, with the state just folded: the first run is going again before the
                # others are even read.
                await self._auto_resume(record, state)
        if self.config.auto_resume:
            await self._resume_interrupted()
        return count

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
            active.actor.request_stop(TerminatedBy.INTERRUPTED, "the server is shutting down")
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(1.0, grace_s))
        self.closed.set()
        for active in list(self._active.values()):
            self._close_feeds(active)
        self.tool_pool.close()
        await self._model_http.aclose()

    # -- starting runs -----------------------------------------------------------------------

    def resolve_scopes(self, scopes: list[str] | None) -> tuple[list[str], list[str]]:
        """(scopes as given, the registered tools they cover); 422 for a scope matching nothing."""
        given = list(READ_ONLY_DEFAULT_SCOPES) if scopes is None else list(scopes)
        tools: list[str] = []
        unknown = []
        for scope in given:
            matched = self.tools.match(scope)
            if not matched:
                unknown.append(scope)
            tools.extend(name for name in matched if name not in tools)
        if unknown:
            raise ThymosError(
                ErrorCode.UNKNOWN_TOOL_SCOPE,
                f"tool scope {unknown[0]!r} matches no registered capability",
                {"unknown_scopes": unknown, "registered": self.tools.match("*")},
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
        spec = self._spec(request, tenant)
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
            return await self._create(spec, (idempotency_key, body_hash), created_by), True

    def _spec(self, request: StartRun, tenant: str) -> RunSpec:
        if not request.task.strip():
            raise ThymosError(
                ErrorCode.INVALID_REQUEST, "task must not be empty", {"field": "task"}
            )
        scopes, tools = self.resolve_scopes(
            None if request.tool_scopes is None else list(request.tool_scopes)
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
            problems = validate_script(list(request.script))
            if problems:
                raise ThymosError(
                    ErrorCode.INVALID_SCRIPT, problems[0], {"problems": problems[:20]}
                )
            script = tuple(request.script)
        specs = [self.catalog.get(name) for name in tools]
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
        spec = RunSpec(
            task=request.task,
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
            extra={
                "format": LEDGER_FORMAT,
                "effect_ceiling": ceiling.value,
                "max_delegation_depth": self.config.max_delegation_depth,
            },
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
            writ["id"],
        )
        await self.store.create_run(record, first, idempotency, checkpoint)
        self._launch(record, state, first)
        return record

    async def branch(
        self, run_id: str, tenant: str | None, request: BranchRun, *, created_by: str | None
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
        spec = self._spec(branch_start(RunSpec.from_body(source.spec), request), source.tenant)
        await check_depth(self.store, source)
        world = await self.world_at(run_id, seq)
        origin = BranchOrigin(run_id, request.commit_id, seq, world.hash)
        spec = replace(spec, extra={**spec.extra, "branch_of": origin.as_body()})
        return await self._create(spec, None, created_by, inherited=world)

    # -- run control -------------------------------------------------------------------------

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
            return await self._resume_claimed(record, max_steps, requested_by, key_id, state)
        finally:
            self._starting -= 1
            self._resuming.discard(record.run_id)

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
        active = self._active.get(run_id)
        if active is None and run_id in self._unloadable:
            raise ThymosError(
                ErrorCode.RUN_NOT_ACTIVE,
                "the run could not be loaded at start-up; the server log says why",
            )
        if active is None:
            if not RunStatus(record.status).terminal:
                raise ThymosError(
                    ErrorCode.NOT_READY,
                    "the run is not loaded yet; retry shortly",
                    {"retry_after_s": 1},
                )
            raise ThymosError(
                ErrorCode.RUN_NOT_ACTIVE,
                f"the run is {record.status}: only an active run can be cancelled",
                {"status": record.status},
            )
        active.actor.request_cancel(requested_by, key_id, reason)
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

    def _unobserved(self, run_id: str, state: RunState) -> Trajectory:
        """A trajectory for appending to a run that has no actor (its end at recovery, its
        resumption before its actor starts): nobody observes it yet."""
        return Trajectory(
            run_id=run_id,
            store=self.store,
            state=state,
            clock=self.clock,
            entries=Feed(),
            on_change=lambda: None,
            signer=self._signer,
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
        assert terms.not_before is not None and terms.expires is not None
        return {
            "format": WRIT_FORMAT,
            "not_before": terms.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires": terms.expires.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "id": writ.id,
            "lineage": list(writ.lineage),
            "token": writ.token,
            "root_public_key": public_key_hex(self.root.public_key),
        }

    def _authority(self, run_id: str, spec: RunSpec) -> Authority:
        writ = spec.extra["writ"]
        token = parse_writ(writ["token"], self.root.public_key)
        tools = [s for s in (self.catalog.get(n) for n in self.catalog.names()) if s is not None]
        return Authority(
            run_id=run_id,
            tenant=spec.tenant,
            writ=token,
            lineage=lineage_of(token),
            policy=self.policy,
            entities=self.policy.entities(
                run_id=run_id, tenant=spec.tenant, task=spec.task, tools=tools
            ),
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
        )
        provider, authority = prepared or self._prepare(record.run_id, state.spec)
        deps = ActorDeps(
            self.catalog,
            self.tools,
            self.workspace,
            self.clock,
            cognition,
            self.revocations,
            self.tool_pool,
            self.sandbox,
            self.redactor,
            self.config.prices,
            delegate=self.delegations.delegate,
        )
        actor = RunActor(trajectory, provider, deps, authority, snapshot.touch)
        active = ActiveRun(
            record.run_id, record.tenant, actor, entries, cognition, snapshot, record=record
        )
        self._active[record.run_id] = active
        active.task = asyncio.create_task(self._drive(active), name=f"run-{record.run_id}")
        return active

    async def _drive(self, active: ActiveRun) -> None:
        try:
            await active.actor.run()
        finally:
            self._active.pop(active.run_id, None)
            self._close_feeds(active)

    @staticmethod
    def _close_feeds(active: ActiveRun) -> None:
        active.entries.close()
        active.cognition.close()
        active.snapshot.close()

    # -- authority ---------------------------------------------------------------------------

    def revocations(self) -> frozenset[str]:
        return self._revocations

    async def approve(
        self,
        run_id: str,
        tenant: str | None,
        *,
        channel: str,
        approve: bool,
        proposal_id: str | None,
        reason: str | None,
        approver: str,
        key_id: str | None,
    ) -> dict[str, Any]:
        """Record one approver's vote on a proposal waiting on `channel` (via the run's actor)."""
        record = await self.visible_record(run_id, tenant)
        pending = [p for p in record.summary.get("pending", {}).values() if p["channel"] == channel]
        if proposal_id is not None:
            pending = [p for p in pending if p["proposal_id"] == proposal_id]
        if not pending:
            raise ThymosError(
                ErrorCode.APPROVAL_NOT_FOUND,
                f"nothing is pending on channel {channel!r} of run {run_id}",
            )
        if len(pending) > 1:
            raise ThymosError(
                ErrorCode.PROPOSAL_AMBIGUOUS,
                f"{len(pending)} proposals wait on channel {channel!r}; name one with proposal_id",
                {"proposal_ids": [p["proposal_id"] for p in pending]},
            )
        chosen = pending[0]
        if chosen["approvals"] >= chosen["required"]:
            raise ThymosError(
                ErrorCode.PROPOSAL_DECIDED,
                "the proposal already has its approvals and is being executed",
                {"proposal_id": chosen["proposal_id"]},
            )
        active = self._active.get(run_id)
        if active is None and run_id in self._unloadable:
            raise ThymosError(
                ErrorCode.RUN_NOT_ACTIVE,
                "the run could not be loaded at start-up; the server log says why",
            )
        if active is None:
            raise ThymosError(
                ErrorCode.NOT_READY,
                "the run is not loaded yet; retry shortly",
                {"retry_after_s": 1},
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        active.actor.submit_vote(
            Vote(channel, approve, pending[0]["proposal_id"], reason, approver, key_id, future)
        )
        return await future

    async def pending_approvals(
        self, tenant: str | None, channel: str | None
    ) -> list[dict[str, Any]]:
        """Every proposal waiting for approval in the runs this caller can see (the inbox),
        oldest run first."""
        inbox = []
        for stored in await self.store.runs_with_status([RunStatus.WAITING_APPROVAL.value]):
            if tenant is not None and stored.tenant != tenant:
                continue
            record = self._live(stored)
            for item in pending_view(record.summary.get("pending") or {}):
                if channel is None or item.get("channel") == channel:
                    inbox.append({"run_id": record.run_id, "task": record.spec["task"], **item})
        return inbox

    async def revoke(
        self, writ_id: str, tenant: str | None, *, by: str, reason: str | None
    ) -> dict[str, Any]:
        """Persist a writ's revocation; it voids every writ derived from it."""
        record = await self.store.find_run_by_writ(writ_id) if is_hex64(writ_id) else None
        if record is None or (tenant is not None and record.tenant != tenant):
            raise ThymosError(
                ErrorCode.WRIT_NOT_FOUND, f"no writ {writ_id} is visible to this caller"
            )
        now = rfc3339_from_us(self.clock.now_us())
        newly = await self.store.revoke(
            writ_id, tenant=record.tenant, revoked_at=now, revoked_by=by, reason=reason
        )
        self._revocations = self._revocations | {writ_id}
        # A run waiting for approval re-checks its writ when the vote comes; nothing else to wake.
        return {
            "writ_id": writ_id,
            "run_id": record.run_id,
            "revoked": True,
            "already_revoked": not newly,
        }

    def unpersisted_usage(self) -> dict[str, Usage]:
        """By creating key: what active runs have used beyond what their stored rows say."""
        extra: dict[str, Usage] = {}
        for active in self._active.values():
            creator = active.record.created_by if active.record else None
            if creator is None:
                continue
            trajectory = active.actor.trajectory
            live, stored = trajectory.state.summary.usage, trajectory.persisted_usage
            delta = Usage(
                live.input_tokens - stored.input_tokens,
                live.output_tokens - stored.output_tokens,
                live.tool_calls - stored.tool_calls,
                live.usd_millicents - stored.usd_millicents,
            )
            extra[creator] = extra.get(creator, Usage()).plus(delta)
        return extra

    def root_key(self) -> dict[str, Any]:
        return {
            "algorithm": "ed25519",
            "format": WRIT_FORMAT,
            "public_key": public_key_hex(self.root.public_key),
        }

    # -- reading runs ------------------------------------------------------------------------

    async def visible_record(self, run_id: str, tenant: str | None) -> RunRecord:
        """The run's record if this caller may see it; otherwise 404 exactly as for no run."""
        record = await self.store.get_run(run_id) if is_run_id(run_id) else None
        if record is None or (tenant is not None and record.tenant != tenant):
            raise ThymosError(ErrorCode.RUN_NOT_FOUND, f"no run {run_id} is visible to this caller")
        return self._live(record)

    def _live(self, record: RunRecord) -> RunRecord:
        """An active run's stored row carries its status as of its last change; its counters come
        from the live summary (which may include entries still being written), its status and
        head from what is durable."""
        active = self._active.get(record.run_id)
        if active is None:
            return record
        trajectory = active.actor.trajectory
        summary = trajectory.state.summary.as_dict()
        if trajectory.durable_seq != summary["head_seq"]:
            summary = {
                **summary,
                "head_seq": trajectory.durable_seq,
                "head_id": trajectory.durable_id,
                "status": trajectory.durable_status,
                "pending": trajectory.durable_pending,
            }
            if not RunStatus(trajectory.durable_status).terminal:
                summary.update(terminated_by=None, final_answer=None, error=None)
        log_lines = summary["log"]
        updated_at = log_lines[-1]["at"] if log_lines else record.updated_at
        return replace(record, status=summary["status"], updated_at=updated_at, summary=summary)

    async def get_run(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        return run_view(await self.visible_record(run_id, tenant))

    async def list_runs(
        self,
        *,
        tenant: str | None,
        status: str | None,
        before: str | None,
        limit: int,
        parent_run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        records = await self.store.list_runs(
            tenant=tenant, status=status, before=before, limit=limit, parent_run_id=parent_run_id
        )
        return [run_view(self._live(record)) for record in records]

    async def execution(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        record = await self.visible_record(run_id, tenant)
        active = self._active.get(run_id)
        if active is not None:
            return active.snapshot.value
        summary = RunSummary.from_dict(record.summary)
        # Not active and not finished: parked at shutdown (or not loadable); it resumes on start.
        phase = "finished" if summary.status.terminal else "parked"
        return execution_view(record, summary, phase=phase, active_tool=None, step=None)

    def _execution_of(self, active: ActiveRun) -> dict[str, Any]:
        assert active.record is not None
        view = active.actor.view
        trajectory = active.actor.trajectory
        summary = trajectory.state.summary
        if trajectory.durable_seq != summary.head_seq:
            # Report the run as of what is durable: never finished before its end is stored.
            durable = RunStatus(trajectory.durable_status)
            summary = replace(
                summary,
                status=durable,
                head_seq=trajectory.durable_seq,
                head_id=trajectory.durable_id,
                pending=trajectory.durable_pending,
            )
            if not durable.terminal:
                summary = replace(summary, terminated_by=None, final_answer=None, error=None)
        phase = "finished" if summary.status.terminal else view.phase
        return execution_view(
            active.record,
            summary,
            phase=phase,
            active_tool=view.active_tool,
            step=view.current_step,
            partial_answer=None if summary.status.terminal else view.partial_answer,
        )

    def active(self, run_id: str) -> ActiveRun | None:
        return self._active.get(run_id)

    def subscribe(self, run_id: str) -> _Subscription:
        """Count a stream subscriber against the per-run limit (release with `unsubscribe`)."""
        active = self._active.get(run_id)
        if active is not None:
            if active.subscribers >= SUBSCRIBERS_PER_RUN_MAX:
                raise ThymosError(
                    ErrorCode.CAPACITY_EXHAUSTED,
                    f"run {run_id} already has {SUBSCRIBERS_PER_RUN_MAX} stream subscribers",
                    {"retry_after_s": 5},
                )
            active.subscribers += 1
        return _Subscription(active)

    @staticmethod
    def unsubscribe(subscription: _Subscription) -> None:
        if subscription.active is not None and not subscription.released:
            subscription.active.subscribers -= 1
            subscription.released = True

    # -- world, replay, export ---------------------------------------------------------------

    async def world(self, run_id: str, tenant: str | None, at_seq: int | None) -> dict[str, Any]:
        """The world after entry `seq` (default: the head). For an active run the head is the
        last durable entry: what `/events` and `/ledger` can show, never an entry still being
        written."""
        record = await self.visible_record(run_id, tenant)
        active = self._active.get(run_id)
        trajectory = active.actor.trajectory if active else None
        head = trajectory.durable_seq if trajectory else int(record.summary["head_seq"])
        seq = head if at_seq is None else at_seq
        if seq < 0 or seq > head:
            raise ThymosError(
                ErrorCode.SEQ_OUT_OF_RANGE,
                f"seq must be between 0 and the head, {head}",
                {"head": head},
            )
        if trajectory is not None and seq == trajectory.head_seq:
            world = trajectory.state.world  # everything is durable: the live projection is exact
        else:
            world = await self.world_at(run_id, seq)
        return {
            "run_id": run_id,
            "seq": seq,
            "world_hash": world.hash,
            "resources": [r.as_dict() for r in world.resources()],
        }

    async def world_at(self, run_id: str, seq: int) -> World:
        """The world after entry `seq`, folded from the nearest checkpoint at or before it."""
        checkpoint = await self.store.latest_checkpoint(run_id, at_or_before=seq)
        world = World.restore(checkpoint.world) if checkpoint else World()
        start = checkpoint.seq if checkpoint else -1
        rows = await self.store.read_rows_range(run_id, after_seq=start, upto_seq=seq)
        for row in rows:
            try:
                entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq)
                if entry.kind == EntryKind.COMMIT:
                    world.apply_all(deltas_of(entry.body))
            except (CorruptEntry, ValueError) as exc:
                raise ThymosError(
                    ErrorCode.LEDGER_CORRUPT,
                    f"the ledger of run {run_id} is damaged at seq {row.seq}; GET /runs/{run_id}/replay says more",
                    {"seq": row.seq},
                ) from exc
        return world

    async def replay(
        self,
        run_id: str,
        tenant: str | None,
        *,
        require_compiler: str | None,
        require_policy: str | None,
    ) -> dict[str, Any]:
        await self.visible_record(run_id, tenant)
        # The stored row, not the live summary: replay reads only durable entries, and the row's
        # head (written at every status change) never runs ahead of them.
        record = await self.store.get_run(run_id)
        assert record is not None
        report = await replay_through_source(
            self.store,
            record,
            root=self.root.public_key,
            require_compiler=require_compiler,
            require_policy=require_policy,
        )
        # The projection (live, or from checkpoints) at the very seq the replay reached.
        live_hash: str | None = None
        if report["head_seq"] >= 0:
            active = self._active.get(run_id)
            try:
                if active is not None and report["head_seq"] == active.actor.trajectory.head_seq:
                    live_hash = active.actor.trajectory.state.world.hash
                else:
                    live_hash = (await self.world_at(run_id, report["head_seq"])).hash
            except ThymosError:
                live_hash = None
        report["live_world_hash"] = live_hash
        report["world_matches"] = live_hash is not None and live_hash == report["world_hash"]
        return report

    async def export(
        self, run_id: str, tenant: str | None, after_seq: int, *, proof: bool = False
    ) -> AsyncIterator[bytes]:
        """The run's stored envelopes as JSON Lines, verbatim, in seq order. With `proof`, each
        document a decision names comes (once) before the first entry naming it, and each
        signed head right after the entry it signs (the format is in docs/LEDGER.md)."""
        await self.visible_record(run_id, tenant)
        if proof:
            return self._export_proof(run_id, after_seq)
        return self._export(run_id, after_seq)

    async def _export(self, run_id: str, after_seq: int) -> AsyncIterator[bytes]:
        while True:
            rows = await self.store.read_rows(run_id, after_seq=after_seq, limit=REPLAY_PAGE_ROWS)
            if not rows:
                return
            yield b"".join(row.raw + b"\n" for row in rows)
            after_seq = rows[-1].seq

    async def _export_proof(self, run_id: str, after_seq: int) -> AsyncIterator[bytes]:
        sent: set[str] = set()
        while True:
            rows = await self.store.read_rows(run_id, after_seq=after_seq, limit=REPLAY_PAGE_ROWS)
            if not rows:
                return
            # Read after the rows: a head is stored with the entry it signs, so all are visible.
            heads = {
                h.seq: h
                for h in await self.store.signed_heads(
                    run_id, after_seq=after_seq, upto_seq=rows[-1].seq
                )
            }
            wanted: list[str] = []
            entries: list[Entry | None] = []
            for row in rows:
                try:
                    entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq, entry_id=row.id)
                except CorruptEntry:
                    entry = None  # exported as stored; the verifier names it
                entries.append(entry)
                if entry is not None:
                    wanted.extend(h for h in referenced_documents(entry) if h not in sent)
            found = await self.store.documents(wanted) if wanted else {}
            out: list[bytes] = []
            for row, entry in zip(rows, entries, strict=True):
                for ident in referenced_documents(entry) if entry is not None else ():
                    document = found.get(ident)
                    if ident in sent or document is None:
                        continue
                    sent.add(ident)
                    out.append(
                        b'{"document":{"body":%s,"hash":"%s","kind":"%s"}}\n'
                        % (document.body, ident.encode(), document.kind.encode())
                    )
                out.append(row.raw + b"\n")
                head = heads.pop(row.seq, None)
                if head is not None:
                    out.append(orjson.dumps({"signed_head": head.as_record()}) + b"\n")
            yield b"".join(out)
            after_seq = rows[-1].seq

    async def _load_state(self, record: RunRecord) -> RunState:
        """Fold a stored run's whole ledger into its state, verifying the chain as it goes."""
        spec = RunSpec.from_body(record.spec)
        # A branch's world starts from what it inherited; its entries hold only its own commits.
        state = RunState(spec, world=await starting_world(self.store, record))
        verifier = ChainVerifier(record.run_id)
        after = -1
        while True:
            rows = await self.store.read_rows(
                record.run_id, after_seq=after, limit=REPLAY_PAGE_ROWS
            )
            if not rows:
                break
            for row in rows:
                entry = verifier.check(row)
                if entry is None or not verifier.verified:
                    failure = verifier.failures[0]
                    raise ThymosError(ErrorCode.LEDGER_CORRUPT, failure.message, failure.as_dict())
                state.fold(entry)
            after = rows[-1].seq
        # A signed head beyond the stored ledger, or naming another entry, means the ledger was
        # cut or rewritten: continuing (and signing) would vouch for it.
        for head in await self.store.signed_heads(record.run_id):
            if head.seq > state.summary.head_seq:
                raise ThymosError(
                    ErrorCode.LEDGER_CORRUPT,
                    f"the server signed seq {head.seq} but the ledger ends at seq {state.summary.head_seq}",
                    {"seq": state.summary.head_seq + 1},
                )
        state.last_checkpoint_seq = state.summary.head_seq
        return state

    # -- facts for /health -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "mode": self.config.mode,
            "default_provider": self.config.default_provider,
            "cognition_live": bool(
                (info := provider_info(self.config.default_provider)) and info.live
            ),
            "ledger": self.store.backend,
            "sandbox": None if self.sandbox.support is None else self.sandbox.support.as_dict(),
            "mcp": {} if self.mcp is None else self.mcp.state(),
            "shutdown": not self.accepting,
            "version": __version__,
        }

    async def ready(self) -> bool:
        return self.accepting and await self.store.ping()


def _document(kind: DocumentKind, body: Any) -> Document:
    raw = canonical_bytes(body)
    return Document(blake3_hex(raw), kind.value, raw)


def _provider_factory(
    providers: ProviderEnv, http_client: httpx2.AsyncClient
) -> Callable[[RunSpec], Cognition]:
    def create(spec: RunSpec) -> Cognition:
        return create_provider(
            spec.provider,
            model=spec.model,
            script=spec.script,
            base_url=spec.base_url,
            env=providers,
            stream=spec.stream,
            context_tokens=spec.context_tokens,
            http_client=http_client,
        )

    return create
