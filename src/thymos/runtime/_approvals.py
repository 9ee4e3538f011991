"""The runtime's authority job: votes sent to the run that waits for them, the inbox of every
waiting proposal, writ revocation, the root public key, and usage not yet stored."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from thymos.core import ErrorCode, RunStatus, ThymosError, Usage, is_hex64, rfc3339_from_us
from thymos.governance import WRIT_FORMAT, public_key_hex
from thymos.storage import RunRecord

from ._actor import Vote
from ._base import RuntimeBase, log
from ._views import pending_view

if TYPE_CHECKING:
    from ._service import Runtime


class Approvals(RuntimeBase):
    """Votes, the approvals inbox, revocation and the root key."""

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
        active = await cast("Runtime", self)._control(record, "voted on")
        if isinstance(active, str):
            # Another node drives the run: the vote goes to its actor there.
            vote = {
                "action": "vote",
                "channel": channel,
                "approve": approve,
                "proposal_id": chosen["proposal_id"],
                "reason": reason,
                "approver": approver,
                "key_id": key_id,
            }
            return await self.cluster.forward(active, run_id, vote)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        active.actor.post(
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
        await self._refuse_waiting(record)
        return {
            "writ_id": writ_id,
            "run_id": record.run_id,
            "revoked": True,
            "already_revoked": not newly,
        }

    async def _refuse_waiting(self, record: RunRecord) -> None:
        """A run of a revoked writ that waits for votes decides again at once (and refuses what
        it waited for, `revoked`): its actor here is told, a parked run is woken. One another
        node drives decides again at its next vote there."""
        active = self._active.get(record.run_id)
        if active is not None:
            active.actor.recheck()
            return
        if record.status != RunStatus.WAITING_APPROVAL.value:
            return
        try:
            await cast("Runtime", self)._wake(record.run_id)
        except ThymosError as exc:
            # Still refused at its next vote or its deadline: the revocation is stored.
            log.warning("run %s of a revoked writ was not woken: %s", record.run_id, exc.message)

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
