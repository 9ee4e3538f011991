"""The runtime service: starts runs, owns their actors, and answers every read about them.

Route handlers call one method of `Runtime` each. It is split by job: the shared state and reads
(`_base.py`), supervision (`_supervision.py`), approvals and authority (`_approvals.py`) and
reads (`_queries.py`); delegation (`Runtime.delegations`) and stream following
(`Runtime.streams`) are objects of their own. Active runs are held in `_active` (one actor task,
its trajectory and its feeds); finished runs are read from storage.
"""

from __future__ import annotations

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
