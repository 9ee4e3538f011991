"""The runtime: run actors, their trajectories and the service every surface calls.

**Architecture Invariant:** only a run's actor appends to its ledger (one writer per run), and
only through `Trajectory.append`, which folds each entry into the run's state as it writes it.
"""

from ._audit import Audit, AuditFilters
from ._branch import BRANCH_DEPTH_MAX, BranchCognition, BranchRun
from ._clock import Clock, SystemClock, system_random
from ._cluster import Cluster, ClusterConfig
from ._feeds import Cell, Feed, FellBehind
from ._limits import (
    KEEPALIVE_S,
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    REPLAY_PAGE_ROWS,
    RUNS_ACTIVE_MAX,
    SUBSCRIBERS_PER_RUN_MAX,
)
from ._marketplace import KeyRef, Marketplace
from ._replay import chain_and_usage
from ._requests import (
    MAX_STEPS_DEFAULT,
    MAX_STEPS_LIMIT,
    MAX_STEPS_MAX,
    SKILLS_PER_RUN_MAX,
    TASK_CHARS_MAX,
    StartRun,
)
from ._service import DEFAULT_TENANT, ActiveRun, Runtime, RuntimeConfig
from ._state import CHECKPOINT_INTERVAL, CONTEXT_HISTORY_MAX, RunState
from ._streams import KEEPALIVE, Damaged, KeepAlive, Snapshot, Streams
from ._views import execution_view, run_view

__all__ = [
    "BRANCH_DEPTH_MAX",
    "CHECKPOINT_INTERVAL",
    "CONTEXT_HISTORY_MAX",
    "DEFAULT_TENANT",
    "KEEPALIVE",
    "KEEPALIVE_S",
    "MAX_STEPS_DEFAULT",
    "MAX_STEPS_LIMIT",
    "MAX_STEPS_MAX",
    "PAGE_LIMIT_DEFAULT",
    "PAGE_LIMIT_MAX",
    "REPLAY_PAGE_ROWS",
    "RUNS_ACTIVE_MAX",
    "SKILLS_PER_RUN_MAX",
    "SUBSCRIBERS_PER_RUN_MAX",
    "TASK_CHARS_MAX",
    "ActiveRun",
    "Audit",
    "AuditFilters",
    "BranchCognition",
    "BranchRun",
    "Cell",
    "Clock",
    "Cluster",
    "ClusterConfig",
    "Damaged",
    "Feed",
    "FellBehind",
    "KeepAlive",
    "KeyRef",
    "Marketplace",
    "RunState",
    "Runtime",
    "RuntimeConfig",
    "Snapshot",
    "StartRun",
    "Streams",
    "SystemClock",
    "chain_and_usage",
    "execution_view",
    "run_view",
    "system_random",
]
