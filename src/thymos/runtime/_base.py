"""What the runtime's jobs share: its state (the store, the root key, the policy, the tools,
the active runs), its configuration, and the reads every job needs (a visible record, the live
view of an active run, a world at a seq, a run's state folded from its ledger).

`Runtime` (`_service.py`) is this plus one mixin per job: `Supervision` (starting, resuming,
cancelling, recovering and stopping runs), `Approvals` (votes, the inbox, revocation) and
`Queries` (what routes read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import biscuit_auth as biscuit
import httpx2

from thymos.cognition import (
    SCRIPT_ELEMENTS_MAX,
    Cognition,
    CognitionEvent,
    Prices,
    ProviderEnv,
    create_provider,
    model_http_client,
)
from thymos.core import (
    ChainVerifier,
    CorruptEntry,
    DocumentKind,
    Entry,
    ErrorCode,
    HeadSigner,
    Redactor,
    RunSpec,
    RunStatus,
    RunSummary,
    ThymosError,
    World,
    apply_to_world,
    blake3_hex,
    canonical_bytes,
    is_run_id,
    parse_envelope,
)
from thymos.governance import (
    MAX_DELEGATION_DEPTH_DEFAULT,
    PolicySet,
    ToolCatalog,
    default_policy_files,
    new_root_key,
)
from thymos.observability import Observer
from thymos.storage import REGISTRY_STATUS, ClusterStore, Document, RunRecord
from thymos.tools import McpHub, Sandbox, ToolPool, ToolRegistry, Workspace

from ._actor import RunActor
from ._audit import Audit
from ._branch import starting_world
from ._clock import Clock, SystemClock, system_random
from ._cluster import Cluster, ClusterConfig
from ._delegation import Delegations
from ._feeds import Cell, Feed
from ._limits import REPLAY_PAGE_ROWS, RUNS_ACTIVE_MAX, SUBSCRIBERS_PER_RUN_MAX
from ._marketplace import Marketplace
from ._parking import Parking
from ._registry import TenantViews
from ._requests import MAX_STEPS_MAX
from ._state import RunState
from ._streams import Streams
from ._trajectory import Trajectory
from ._views import execution_view

if TYPE_CHECKING:
    from ._service import Runtime

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
    max_steps_max: int = MAX_STEPS_MAX
    """The most steps a run may be given (`THYMOS_MAX_STEPS_MAX`), at start, branch or resume."""
    script_elements_max: int = SCRIPT_ELEMENTS_MAX
    """The longest mock script a run may carry (`THYMOS_SCRIPT_ELEMENTS_MAX`)."""
    subscribers_per_run_max: int = SUBSCRIBERS_PER_RUN_MAX
    """Stream subscribers per run, all streams together (`THYMOS_SUBSCRIBERS_PER_RUN_MAX`)."""
    max_delegation_depth: int = MAX_DELEGATION_DEPTH_DEFAULT
    """How deep child runs may nest (`THYMOS_MAX_DELEGATION_DEPTH`); each run records the bound
    it started under, so its `delegate` calls are decided (and replayed) against that."""


@dataclass(slots=True)
class _Subscription:
    active: ActiveRun | None
    released: bool = field(default=False)


class RuntimeBase:
    def __init__(
        self,
        *,
        store: ClusterStore,
        tools: ToolRegistry,
        config: RuntimeConfig,
        clock: Clock | None = None,
        root: biscuit.KeyPair | None = None,
        policy: PolicySet | None = None,
        random: Callable[[int], bytes] = system_random,
        provider_factory: Callable[[RunSpec], Cognition] | None = None,
        mcp: McpHub | None = None,
        cluster: ClusterConfig | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer = observer or Observer()
        """Metrics (and spans, when tracing is on) of this runtime: the app passes the one it
        serves at /metrics; tests and the benchmark get a fresh one."""
        # The root key signs every run's writ. Tests and the benchmark may let it be generated;
        # the server passes the persistent one.
        self.root = root or new_root_key()
        self.policy = policy or PolicySet(default_policy_files())
        # The root key also signs run heads (the same Ed25519 key, published at /writs/root-key).
        self._signer = HeadSigner(bytes(self.root.private_key.to_bytes()))
        self._documents_kept = False
        self._revocations: frozenset[str] = frozenset()
        self._unloadable: set[str] = set()
        self._waking: dict[str, asyncio.Lock] = {}
        """Parked runs being woken (a second vote waits for the first's wake)."""
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
        self.cluster = Cluster(store, self.clock, cluster or ClusterConfig())
        """This node among others on shared storage: leases, forwarded actions, notices."""
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
        self.streams = Streams(cast("Runtime", self))
        """How observers follow a run (the SSE routes format what it yields)."""
        self.accepting = True
        self.closed = asyncio.Event()
        self.audit = Audit(store)
        """Entries across a tenant's runs: listed, counted, exported as CSV."""
        self.views = TenantViews(
            store,
            self.clock,
            tools=tools,
            policy=self.policy,
            sandbox=self.sandbox,
            keep=self._keep_view,
            shared=self.cluster.shared,
        )
        """What each tenant's runs may use: the server's tools and policies, and the packages
        the tenant installed and activated (its registry ledger)."""
        self.marketplace = Marketplace(store, self.clock, self.views)
        """The package registry: trusted publishers, published packages."""
        self.parking = Parking(self.clock, self._wake_due)
        """Runs waiting for votes with no actor, by their writ's deadline."""
        self.delegations = Delegations(cast("Runtime", self))
        """Child runs started by `delegate`: started, followed, cancelled and listed there."""
        self.observer.watch(
            runs_active=lambda: len(self._active), approvals_waiting=self._approvals_waiting
        )

    def _approvals_waiting(self) -> int:
        """Proposals waiting for a vote in the active runs (as durable: what approvers see) and
        in the parked ones."""
        active = sum(len(a.actor.trajectory.durable_pending) for a in list(self._active.values()))
        return active + self.parking.proposals

    async def _keep_view(self, policy: PolicySet, catalog: ToolCatalog) -> None:
        """Store a tenant view's policy set and tool catalog by hash, before a decision names
        them."""
        await self.store.put_documents(
            [
                _document(DocumentKind.POLICY_SET, policy.document()),
                _document(DocumentKind.TOOL_CATALOG, catalog.document()),
            ]
        )

    async def visible_record(self, run_id: str, tenant: str | None) -> RunRecord:
        """The run's record if this caller may see it; otherwise 404 exactly as for no run."""
        record = await self.store.get_run(run_id) if is_run_id(run_id) else None
        if (
            record is None
            or record.status == REGISTRY_STATUS  # a tenant's registry ledger, not a run
            or (tenant is not None and record.tenant != tenant)
        ):
            raise ThymosError(ErrorCode.RUN_NOT_FOUND, f"no run {run_id} is visible to this caller")
        if (
            self.cluster.shared
            and record.run_id not in self._active
            and not RunStatus(record.status).terminal
        ):
            return await self._remote(record)
        return self._live(record)

    async def _remote(self, record: RunRecord) -> RunRecord:
        """A run another node drives: its stored row is written only when its status changes,
        so the entries stored since are folded onto the row's summary (a few, typically: the
        cost follows what happened since the last status change, not the run's length)."""
        folded = RunSummary.from_dict(record.summary)
        while True:
            rows = await self.store.read_rows(
                record.run_id, after_seq=folded.head_seq, limit=REPLAY_PAGE_ROWS
            )
            for row in rows:
                try:
                    folded.fold(parse_envelope(row.raw, run_id=record.run_id, seq=row.seq))
                except (CorruptEntry, ValueError):
                    return record  # damaged: the stored row, and replay says where
            if len(rows) < REPLAY_PAGE_ROWS:
                break
        summary = folded.as_dict()
        log_lines = summary["log"]
        updated_at = log_lines[-1]["at"] if log_lines else record.updated_at
        return replace(record, status=summary["status"], updated_at=updated_at, summary=summary)

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
                "pending": {k: v.as_dict() for k, v in trajectory.durable_pending.items()},
            }
            if not RunStatus(trajectory.durable_status).terminal:
                summary.update(terminated_by=None, final_answer=None, error=None)
        log_lines = summary["log"]
        updated_at = log_lines[-1]["at"] if log_lines else record.updated_at
        return replace(record, status=summary["status"], updated_at=updated_at, summary=summary)

    async def _wake_due(self, run_id: str) -> bool:
        raise NotImplementedError  # Supervision's

    def _running(self, record: RunRecord, action: str) -> ActiveRun:
        """The active run a control action (a vote, a cancel) is sent to: 409 `run_not_active`
        for one that has ended or could not be loaded at start-up, 503 `not_ready` (retry) for
        one not loaded yet."""
        active = self._active.get(record.run_id)
        if active is not None:
            return active
        if record.run_id in self._unloadable:
            raise ThymosError(
                ErrorCode.RUN_NOT_ACTIVE,
                "the run could not be loaded at start-up; the server log says why",
            )
        if not RunStatus(record.status).terminal:
            raise ThymosError(
                ErrorCode.NOT_READY,
                "the run is not loaded yet; retry shortly",
                {"retry_after_s": 1},
            )
        raise ThymosError(
            ErrorCode.RUN_NOT_ACTIVE,
            f"the run is {record.status}: only an active run can be {action}",
            {"status": record.status},
        )

    def active(self, run_id: str) -> ActiveRun | None:
        return self._active.get(run_id)

    async def world_at(self, run_id: str, seq: int) -> World:
        """The world after entry `seq`, folded from the nearest checkpoint at or before it."""
        checkpoint = await self.store.latest_checkpoint(run_id, at_or_before=seq)
        world = World.restore(checkpoint.world) if checkpoint else World()
        start = checkpoint.seq if checkpoint else -1
        rows = await self.store.read_rows_range(run_id, after_seq=start, upto_seq=seq)
        for row in rows:
            try:
                apply_to_world(world, parse_envelope(row.raw, run_id=run_id, seq=row.seq))
            except (CorruptEntry, ValueError) as exc:
                raise ThymosError(
                    ErrorCode.LEDGER_CORRUPT,
                    f"the ledger of run {run_id} is damaged at seq {row.seq}; GET /runs/{run_id}/replay says more",
                    {"seq": row.seq},
                ) from exc
        return world

    async def _load_state(self, record: RunRecord) -> RunState:
        """Fold a stored run's whole ledger into its state, verifying the chain as it goes (and
        read what its tenant installed, which its actor will use)."""
        await self.views.view(record.tenant)
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
            observer=self.observer,
        )

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

    def revocations(self) -> frozenset[str]:
        return self._revocations


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
