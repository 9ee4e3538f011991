"""Branches: a new run whose world starts as another run's world after one of its commits.

`POST /runs/:id/branch` names a commit of the source run. The branch is a run like any other:
its own ledger and its own writ, minted afresh with the source's scopes, effect ceiling and
budget; it can be resumed, cancelled and branched in turn. Its first entry records where it came
from (`branch_of`: the source run, the commit's id and seq, and the world hash after it), and
the world it inherits is stored as its checkpoint at seq 0, so every fold of its world (`world`,
`world/at`, recovery, resume) starts from what it inherited.

Replay verifies a branch through its source: the source is replayed up to the commit (through
its own source first, for a branch of a branch), the entry there must be that commit and the
world there must have the recorded hash; the branch is then replayed from that world. A branch
records nothing in its source, whose ledger may be finished: the branch's first entry is the
record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import biscuit_auth as biscuit

from thymos.core import (
    CorruptEntry,
    EntryKind,
    ErrorCode,
    ReplayFailure,
    RunSpec,
    ThymosError,
    World,
    is_hex64,
    is_run_id,
    parse_envelope,
)
from thymos.storage import LedgerStore, RunRecord

from ._replay import FAILURES_SHOWN_MAX, Replayer, replay_report, replay_stored
from ._requests import StartRun

BRANCH_DEPTH_MAX = 32
"""Branches of branches at most. Replaying a branch replays a prefix of every run it descends
from, so the depth bounds what one replay reads; deeper lineages are not a use anyone has."""


@dataclass(frozen=True, slots=True)
class BranchCognition:
    """A branch request's `cognition`, read exactly as `POST /runs` reads its own."""

    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    stream: bool = True
    context_tokens: int | None = None
    script: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class BranchRun:
    """What `POST /runs/:id/branch` asks: the commit to start from and what to change. The
    task, step limit and cognition are the source's own unless given; its scopes, effect
    ceiling and budget always are."""

    commit_id: str
    task: str | None = None
    max_steps: int | None = None
    cognition: BranchCognition | None = None


@dataclass(frozen=True, slots=True)
class BranchOrigin:
    """Where a branch came from, as its first entry records it (`branch_of`)."""

    run_id: str
    commit_id: str
    seq: int
    world_hash: str
    requested_by: str | None = None
    """Who asked for the branch (the key's name) and the key's id: a control action is on
    record with the key that asked."""
    key_id: str | None = None

    def as_body(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "commit_id": self.commit_id,
            "seq": self.seq,
            "world_hash": self.world_hash,
            "requested_by": self.requested_by,
            "key_id": self.key_id,
        }

    @staticmethod
    def of(spec: Mapping[str, Any]) -> BranchOrigin | None:
        """The origin a run's first entry records; None for a run that is not a branch.
        ValueError for one that is not an origin (a damaged or forged ledger)."""
        raw = spec.get("branch_of")
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ValueError("branch_of is not an object")
        run_id, commit_id, seq, world_hash = (
            raw.get(name) for name in ("run_id", "commit_id", "seq", "world_hash")
        )
        if not (
            isinstance(run_id, str)
            and is_run_id(run_id)
            and isinstance(commit_id, str)
            and is_hex64(commit_id)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and seq >= 0
            and isinstance(world_hash, str)
            and is_hex64(world_hash)
        ):
            raise ValueError("branch_of does not name a run, a commit, its seq and a world hash")
        requested_by, key_id = raw.get("requested_by"), raw.get("key_id")
        return BranchOrigin(
            run_id,
            commit_id,
            seq,
            world_hash,
            requested_by if isinstance(requested_by, str) else None,
            key_id if isinstance(key_id, str) else None,
        )


def branch_view(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """`branch_of` as `GET /runs/:id` shows it: the source run, the commit and its seq."""
    raw = spec.get("branch_of")
    if not isinstance(raw, Mapping):
        return None
    return {name: raw.get(name) for name in ("run_id", "commit_id", "seq")}


def branch_start(source: RunSpec, request: BranchRun) -> StartRun:
    """The start of a branch as a `POST /runs` request would ask it, so the runtime checks and
    records it through the very path every run takes (`Runtime._spec`)."""
    cognition = request.cognition or BranchCognition(
        provider=source.provider,
        model=source.model,
        base_url=source.base_url,
        stream=source.stream,
        context_tokens=source.context_tokens,
        script=source.script,
    )
    ceiling = source.extra.get("effect_ceiling")
    return StartRun(
        task=source.task if request.task is None else request.task,
        max_steps=source.max_steps if request.max_steps is None else request.max_steps,
        tool_scopes=source.tool_scopes,
        provider=cognition.provider,
        model=cognition.model,
        base_url=cognition.base_url,
        stream=cognition.stream,
        context_tokens=cognition.context_tokens,
        script=cognition.script,
        budget=source.budget,
        effect_ceiling=ceiling if isinstance(ceiling, str) else None,
    )


async def find_commit(store: LedgerStore, source: RunRecord, commit_id: str) -> int:
    """The seq of the source run's commit `commit_id`. Anything else (an id of no entry, of
    another run's entry, of an entry that is not a commit) is 422 `commit_not_in_run`."""
    run_id = source.run_id
    row = await store.find_entry(run_id, commit_id) if is_hex64(commit_id) else None
    kind: str | None = None
    if row is not None:
        try:
            entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq)
        except CorruptEntry as exc:
            entry = None
            cause: Exception | None = exc
        else:
            cause = None
        if entry is None or entry.id != commit_id:
            raise ThymosError(
                ErrorCode.LEDGER_CORRUPT,
                f"the ledger of run {run_id} is damaged at seq {row.seq}; "
                f"GET /runs/{run_id}/replay says more",
                {"seq": row.seq},
            ) from cause
        kind = entry.kind
    if kind != EntryKind.COMMIT:
        # A malformed id is not echoed back: it may be anything up to the body limit.
        well_formed = is_hex64(commit_id)
        details: dict[str, Any] = {
            "field": "commit_id",
            "commit_id": commit_id if well_formed else None,
            "run_id": run_id,
        }
        if kind is not None:
            details["kind"] = kind
            message = f"entry {commit_id} of run {run_id} is a {kind} entry, not a commit"
        elif well_formed:
            message = f"run {run_id} has no commit {commit_id}"
        else:
            message = "commit_id must be the id of a commit: 64 lowercase hex characters"
        raise ThymosError(ErrorCode.COMMIT_NOT_IN_RUN, message, details)
    assert row is not None
    return row.seq


async def check_depth(store: LedgerStore, source: RunRecord) -> None:
    """422 when a branch of `source` would descend from more than `BRANCH_DEPTH_MAX` runs."""
    depth, spec = 1, source.spec
    while depth <= BRANCH_DEPTH_MAX:
        origin = BranchOrigin.of(spec)
        ancestor = await store.get_run(origin.run_id) if origin is not None else None
        if ancestor is None:
            return
        depth, spec = depth + 1, ancestor.spec
    raise ThymosError(
        ErrorCode.INVALID_REQUEST,
        f"run {source.run_id} is a branch {BRANCH_DEPTH_MAX} levels deep; branch an ancestor",
        {"branch_depth_max": BRANCH_DEPTH_MAX},
    )


async def starting_world(store: LedgerStore, record: RunRecord) -> World:
    """The world a stored run starts from: what a branch inherited (its checkpoint at seq 0,
    checked against the hash its first entry records), else an empty one."""
    try:
        origin = BranchOrigin.of(record.spec)
    except ValueError as exc:
        raise ThymosError(ErrorCode.LEDGER_CORRUPT, f"run {record.run_id}: {exc}") from exc
    if origin is None:
        return World()
    checkpoint = await store.latest_checkpoint(record.run_id, at_or_before=0)
    world = World.restore(checkpoint.world) if checkpoint is not None else None
    if world is None or world.hash != origin.world_hash:
        raise ThymosError(
            ErrorCode.LEDGER_CORRUPT,
            f"branch {record.run_id} does not hold the world it inherited from run {origin.run_id}",
            {"seq": 0},
        )
    return world


async def replay_through_source(
    store: LedgerStore,
    record: RunRecord,
    *,
    root: biscuit.PublicKey,
    require_compiler: str | None,
    require_policy: str | None,
) -> dict[str, Any]:
    """`replay_report`, with a branch replayed from the world its sources give it: a source
    that does not verify up to the commit, or whose commit or world there is not the one the
    branch records, is a `branch_source_mismatch` at seq 0 (the branch is then replayed from the
    world it recorded, so its own entries are still checked)."""
    if "branch_of" not in await _first_body(store, record.run_id):
        return await replay_report(
            store,
            record,
            root=root,
            require_compiler=require_compiler,
            require_policy=require_policy,
        )
    world, problem = await _inherited(store, record, root)
    if problem is not None:
        world = await _recorded(store, record)
    report = await replay_report(
        store,
        record,
        root=root,
        require_compiler=require_compiler,
        require_policy=require_policy,
        world=world,
    )
    if problem is not None:
        failure = {"seq": 0, "code": ReplayFailure.BRANCH_SOURCE_MISMATCH.value, "message": problem}
        report["failures"] = [failure, *report["failures"]][:FAILURES_SHOWN_MAX]
        report["verified"] = False
    return report


async def _inherited(
    store: LedgerStore, record: RunRecord, root: biscuit.PublicKey
) -> tuple[World, str | None]:
    """The world a branch starts from, replayed from the first run of its lineage through each
    source up to its commit, and the first thing that did not check out (None: everything did)."""
    lineage: list[BranchOrigin] = []
    seen = {record.run_id}
    current = record
    while True:
        try:
            origin = BranchOrigin.of(await _first_body(store, current.run_id))
        except ValueError as exc:
            return World(), f"run {current.run_id}: {exc}"
        if origin is None:
            break
        if len(lineage) >= BRANCH_DEPTH_MAX or origin.run_id in seen:
            return World(), f"run {record.run_id} descends from more than {BRANCH_DEPTH_MAX} runs"
        source = await store.get_run(origin.run_id)
        if source is None or source.tenant != current.tenant:
            return World(), (
                f"run {current.run_id} is branched from run {origin.run_id}, which this server "
                "does not hold for its tenant"
            )
        lineage.append(origin)
        seen.add(origin.run_id)
        current = source
    world = World(lazy_hash=True)
    for origin in reversed(lineage):
        replayer = Replayer(origin.run_id, root, {})
        replayer.world = world
        await replay_stored(store, replayer, upto_seq=origin.seq)
        where = f"run {origin.run_id} up to seq {origin.seq}"
        if replayer.verifier.failures:
            first = min(replayer.verifier.failures, key=lambda f: f.seq)
            return world, f"the source {where} does not verify: {first.message}"
        if replayer.head_seq != origin.seq or replayer.head_id != origin.commit_id:
            return world, f"the entry at seq {origin.seq} of run {origin.run_id} is not the commit"
        if await _kind_at(store, origin.run_id, origin.seq) != EntryKind.COMMIT:
            return world, f"entry {origin.commit_id} of run {origin.run_id} is not a commit"
        if replayer.world.hash != origin.world_hash:
            return world, f"the world of {where} is not the world the branch records"
        world = replayer.world
    return world, None


async def _recorded(store: LedgerStore, record: RunRecord) -> World:
    """The world a branch recorded as inherited (its checkpoint at seq 0), or an empty one."""
    checkpoint = await store.latest_checkpoint(record.run_id, at_or_before=0)
    return World.restore(checkpoint.world) if checkpoint is not None else World(lazy_hash=True)


async def _first_body(store: LedgerStore, run_id: str) -> Mapping[str, Any]:
    """The body of the run's first entry as the ledger holds it (empty when it does not parse:
    replay names that)."""
    rows = await store.read_rows(run_id, after_seq=-1, limit=1)
    if not rows or rows[0].seq != 0:
        return {}
    try:
        return parse_envelope(rows[0].raw, run_id=run_id, seq=0).body
    except CorruptEntry:
        return {}


async def _kind_at(store: LedgerStore, run_id: str, seq: int) -> str | None:
    rows = await store.read_rows_range(run_id, after_seq=seq - 1, upto_seq=seq)
    try:
        return parse_envelope(rows[0].raw, run_id=run_id, seq=seq).kind if rows else None
    except CorruptEntry:
        return None
