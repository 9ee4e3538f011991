"""The runtime service: starts runs, owns their actors, and answers every read about them.

Route handlers call one method of `Runtime` each. It is split by job: the shared state and reads
(`_base.py`), supervision (`_supervision.py`), approvals and authority (`_approvals.py`) and
reads (`_queries.py`); delegation (`Runtime.delegations`) and stream following
(`Runtime.streams`) are objects of their own. Active runs are held in `_active` (one actor task,
its trajectory and its feeds); finished runs are read from storage.
"""

from __future__ import annotations

from typing import Any

from thymos.core import ErrorCode, ThymosError

from ._approvals import Approvals
from ._base import (
    DEFAULT_TENANT,
    RECOVERY_REQUESTER,
    WRIT_VALIDITY_MS_DEFAULT,
    ActiveRun,
    RuntimeConfig,
)
from ._queries import Queries
from ._supervision import Supervision

__all__ = [
    "DEFAULT_TENANT",
    "RECOVERY_REQUESTER",
    "WRIT_VALIDITY_MS_DEFAULT",
    "ActiveRun",
    "Runtime",
    "RuntimeConfig",
]


class Runtime(Supervision, Approvals, Queries):
    """The one service every route calls (see the module's docstring for how it is split)."""

    async def forwarded(self, run_id: str, action: dict[str, Any]) -> dict[str, Any]:
        """Carry out a control action another node forwarded to this one, which drives the run
        (the sender checked the caller's tenant and role)."""
        match action.get("action"):
            case "vote":
                return await self.approve(
                    run_id,
                    None,
                    channel=action["channel"],
                    approve=action["approve"],
                    proposal_id=action["proposal_id"],
                    reason=action["reason"],
                    approver=action["approver"],
                    key_id=action["key_id"],
                )
            case "cancel":
                return await self.cancel(
                    run_id,
                    None,
                    requested_by=action["requested_by"],
                    key_id=action["key_id"],
                    reason=action["reason"],
                )
        raise ThymosError(ErrorCode.INVALID_REQUEST, "unknown forwarded action")
