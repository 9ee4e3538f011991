"""Governed runs for tests: a policy with a quorum, a veto channel and a forbid, and a driver that
votes on each proposal as a plan says (waiting on the run's own entry feed, never on time)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.policies import GOVERNED_POLICY
from thymos.core import Entry, EntryKind, RunStatus, parse_envelope
from thymos.governance import PolicyFile, PolicySet, default_policy_files
from thymos.runtime import Runtime


def governed_policy() -> PolicySet:
    return PolicySet([PolicyFile("governed.cedar", GOVERNED_POLICY)])


def default_policy() -> PolicySet:
    return PolicySet(default_policy_files())


Vote = tuple[str, bool]
"""(approver, approve)."""


async def drive(runtime: Runtime, run_id: str, plan: Iterable[list[Vote]] = ()) -> None:
    """Let the run finish, casting the next planned list of votes on each proposal it suspends.
    Each list must decide its proposal (a quorum of approvals, or a denial). A run waiting for
    votes parks (its actor ends) and a vote wakes it with a new actor: the entries are followed
    on each actor's feed in turn, and read from storage while the run is parked."""
    plans = iter(plan)
    last = -1

    async def take(entry: Entry) -> None:
        if entry.kind != EntryKind.SUSPENSION:
            return
        votes = next(plans)
        for approver, approve in votes:
            result: dict[str, Any] = await runtime.approve(
                run_id,
                None,
                channel=entry.body["channel"],
                approve=approve,
                proposal_id=entry.body["intent"],
                reason=None if approve else "not now",
                approver=approver,
                key_id=None,
            )
            if result["decided"]:
                return
        raise AssertionError(f"the votes {votes} did not decide the proposal")

    while True:
        active = runtime.active(run_id)
        if active is None:
            record = await runtime.store.get_run(run_id)
            if record is None or RunStatus(record.status).terminal:
                return
            rows = await runtime.store.read_rows(run_id, after_seq=last, limit=10_000)
            if not rows:
                raise AssertionError(f"run {run_id} is {record.status} with nothing to vote on")
            for row in rows:
                last = row.seq
                await take(parse_envelope(row.raw, run_id=run_id, seq=row.seq))
            continue
        async for batch in active.entries.follow(last, timeout_s=3600, strict=False):
            for seq, entry in batch:
                if seq <= last:
                    continue
                last = seq
                await take(entry)
        if active.task is not None:
            await active.task
