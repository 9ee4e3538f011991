"""Replay of delegation: what replay checks of a delegating parent's ledger and of a child's.

A parent's `delegate` calls are decided by the compiler like any call (its delegation stage
included), and `Replayer` re-runs those decisions; here, the entries delegation adds:

- a `delegation` entry is about a pending `delegate` intent, only one per intent, and says what
  the intent asked (its task and scopes) and no more than the run had to give when it was
  recorded: tools the run has, an effect ceiling no higher, a budget within what the run had
  left in each dimension it limits, a validity no longer than the run's writ, the next depth
  within the run's bound;
- a `delegate` commit follows its `delegation` entry, reports that very child and carries what
  it spent (`delegated_usage`, folded into the run's usage); no other commit carries any;
- a child's `run_started` names its `parent` (run, intent, depth, the delegation's seq) and its
  writ has one block more than its depth: it was attenuated, not minted. Against the store
  (`check_parent`), the parent run is held for the same tenant, its writ's lineage is the
  child's without its last block, and the parent's entry at that seq is the `delegation` that
  names this child and its writ.

Failures are `delegation_invalid`, naming the seq (0 for a child's link).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from thymos.core import (
    CorruptEntry,
    Effect,
    Entry,
    EntryKind,
    ReplayFailure,
    delegated_usage,
    is_hex64,
    is_run_id,
    parse_envelope,
)
from thymos.governance import (
    DELEGATE_TOOL,
    DelegationBounds,
    remaining,
)
from thymos.storage import LedgerStore

if TYPE_CHECKING:
    from ._replay import Replayer


@dataclass(slots=True)
class DelegationReplay:
    """What replay keeps about delegation while it folds one run."""

    bounds: DelegationBounds | None = None
    """What the run may hand on (from its `run_started`); compile_intent's delegation stage
    reads it through the replayed `Authority`."""
    parent: dict[str, Any] | None = None
    """The run's own `parent` link, when it is a child."""
    delegated: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`delegation` bodies by the intent they carry out."""


def _is_run_id(value: Any) -> bool:
    return isinstance(value, str) and is_run_id(value)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and is_hex64(value)


def _fail(replayer: Replayer, seq: int, message: str) -> None:
    replayer._fail(seq, ReplayFailure.DELEGATION_INVALID, message)


def replay_run_started(replayer: Replayer, entry: Entry) -> None:
    """The run's start, then its delegation bounds and, for a child, its link."""
    replayer._run_started(entry)
    side = replayer.delegation
    body = entry.body
    try:
        side.bounds = DelegationBounds.of_run(body)
    except (ValueError, KeyError) as exc:
        _fail(replayer, entry.seq, f"entry {entry.seq} records unreadable authority: {exc}")
        return
    link = body.get("parent")
    if link is None:
        return
    if (
        not isinstance(link, dict)
        or set(link) != {"run_id", "intent", "depth", "seq"}
        or not _is_run_id(link.get("run_id"))
        or not _is_hex64(link.get("intent"))
        or type(link.get("depth")) is not int
        or link["depth"] < 1
        or type(link.get("seq")) is not int
        or link["seq"] < 0
    ):
        _fail(replayer, entry.seq, f"entry {entry.seq} names its parent in a malformed link")
        return
    if replayer._writ is not None and len(replayer._lineage) != link["depth"] + 1:
        _fail(
            replayer,
            entry.seq,
            f"entry {entry.seq} starts a child at depth {link['depth']} whose writ has "
            f"{len(replayer._lineage)} blocks, not {link['depth'] + 1}: it is not its "
            "parent's writ attenuated",
        )
        return
    side.parent = link


def replay_delegation(replayer: Replayer, entry: Entry) -> None:
    """A `delegation` entry: consistent with a pending `delegate` intent and within the run's
    authority as the ledger's fold has it."""
    side = replayer.delegation
    body = entry.body
    ref = body.get("intent")
    intent = replayer._undecided.get(ref) if isinstance(ref, str) else None
    problem: str | None
    if intent is None:
        problem = "carries out an intent that is not pending"
    elif intent.tool != DELEGATE_TOOL:
        problem = f"carries out a {intent.tool!r} intent, not a delegation"
    elif ref in side.delegated:
        problem = "is a second delegation of one intent"
    elif not _is_run_id(body.get("child_run_id")) or not _is_hex64(body.get("writ_id")):
        problem = "names its child run or the child's writ in a malformed way"
    elif body.get("task") != intent.args.get("task") or body.get("tool_scopes") != list(
        intent.args.get("tool_scopes") or ()
    ):
        problem = "records another task or other tool scopes than its intent asked"
    elif side.bounds is None or not replayer._checkable:
        problem = None  # the run's authority is unreadable: that failure is already recorded
    else:
        problem = _beyond(side.bounds, body, replayer)
    if problem is not None:
        _fail(replayer, entry.seq, f"entry {entry.seq} {problem}")
        return
    assert isinstance(ref, str)
    side.delegated[ref] = dict(body)


def _beyond(bounds: DelegationBounds, body: Mapping[str, Any], replayer: Replayer) -> str | None:
    """What a delegation records beyond the run's authority, if anything."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not all(isinstance(t, str) for t in tools):
        return "records no tools for its child"
    outside = sorted(set(tools) - bounds.tools)
    if outside:
        return f"gives its child tools the run does not have: {', '.join(outside)}"
    try:
        ceiling = Effect(str(body.get("effect_ceiling")))
    except ValueError:
        return "records no effect ceiling"
    if ceiling.rank > bounds.effect_ceiling.rank:
        return f"gives its child the effect ceiling {ceiling.value}, above the run's"
    depth = body.get("depth")
    if depth != bounds.depth + 1 or depth > bounds.max_depth:
        return f"records depth {depth!r}; the run's child is at {bounds.depth + 1} (at most {bounds.max_depth})"
    budget = body.get("budget")
    if not isinstance(budget, dict):
        return "records no budget"
    expires_text = body.get("expires")
    try:
        expires = datetime.fromisoformat(str(expires_text).replace("Z", "+00:00"))
    except ValueError:
        return "records no expiry for its child's writ"
    if bounds.expires is not None and expires > bounds.expires:
        return "gives its child a writ valid longer than the run's"
    # Only the counted dimensions are compared (they do not depend on the time); the wall
    # clock is bounded by the expiry, checked above.
    left = remaining(bounds, replayer.summary.usage, expires)
    for name in ("tokens", "tool_calls", "usd_millicents"):
        limit, given = getattr(left, name), budget.get(name)
        if limit is None:
            continue
        if type(given) is not int or given > limit:
            return f"gives its child {given!r} {name}; the run had {limit} left"
    return None


def replay_commit(replayer: Replayer, entry: Entry) -> None:
    """A commit, then what delegation adds to it: a `delegate` commit reports the child its
    `delegation` named and what it spent; no other commit carries delegated usage."""
    replayer._execution(entry)
    body = entry.body
    side = replayer.delegation
    ref = body.get("intent")
    link = side.delegated.get(ref) if isinstance(ref, str) else None
    if body.get("tool") != DELEGATE_TOOL:
        if "delegated_usage" in body:
            _fail(
                replayer,
                entry.seq,
                f"entry {entry.seq} records delegated usage for a call that delegates nothing",
            )
        return
    output = body.get("output")
    if link is None:
        problem = "commits a delegation that no delegation entry records"
    elif not isinstance(output, dict) or output.get("run_id") != link.get("child_run_id"):
        problem = "reports another child than its delegation names"
    elif delegated_usage(body) is None or output.get("usage") != body.get("delegated_usage"):
        problem = "does not record, as four counts, what its child spent"
    else:
        return
    _fail(replayer, entry.seq, f"entry {entry.seq} {problem}")


async def check_parent(store: LedgerStore, replayer: Replayer) -> None:
    """A child's link, against its parent's stored ledger: the parent is held for the child's
    tenant, the child's writ is the parent's with one block more, and the parent's entry at the
    link's seq is the `delegation` naming this child, its intent and its writ."""
    link = replayer.delegation.parent
    if link is None or replayer._writ is None:
        return
    parent_id, seq = link["run_id"], link["seq"]
    record = await store.get_run(parent_id)
    first = await store.read_rows_range(parent_id, after_seq=-1, upto_seq=0)
    rows = await store.read_rows_range(parent_id, after_seq=seq - 1, upto_seq=seq)
    where = f"its parent run {parent_id}"
    try:
        if record is None or record.tenant != replayer._tenant or not first or not rows:
            raise ValueError(f"{where} is not held for this run's tenant")
        started = parse_envelope(first[0].raw, run_id=parent_id, seq=0)
        entry = parse_envelope(rows[0].raw, run_id=parent_id, seq=seq)
    except (ValueError, CorruptEntry) as exc:
        _fail(replayer, 0, f"the run's link to {where} does not hold: {exc}")
        return
    lineage = (started.body.get("writ") or {}).get("lineage")
    if started.body.get("tenant") != replayer._tenant or lineage != list(replayer._lineage[:-1]):
        _fail(replayer, 0, f"the run's writ is not the writ of {where} attenuated")
        return
    body = entry.body
    if (
        entry.kind != EntryKind.DELEGATION
        or body.get("child_run_id") != replayer.run_id
        or body.get("intent") != link["intent"]
        or body.get("writ_id") != replayer._lineage[-1]
        or body.get("depth") != link["depth"]
    ):
        _fail(
            replayer,
            0,
            f"entry {seq} of {where} is not the delegation that started this run with its writ",
        )
