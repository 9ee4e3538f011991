"""Governed runs for tests: a policy with a quorum, a veto channel and a forbid, and a driver that
votes on each proposal as a plan says (waiting on the run's own entry feed, never on time)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.policies import GOVERNED_POLICY
from thymos.core import EntryKind
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
    Each list must decide its proposal (a quorum of approvals, or a denial)."""
    plans = iter(plan)
    active = runtime.active(run_id)
    if active is None:
        return
    async for batch in active.entries.follow(-1, timeout_s=3600, strict=False):
        for _, entry in batch:
            if entry.kind != EntryKind.SUSPENSION:
                continue
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
                    break
            else:
                raise AssertionError(f"the votes {votes} did not decide the proposal")
    if active.task is not None:
        await active.task
