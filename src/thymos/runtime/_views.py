"""How runs are shown: the run record view and the execution session, from stored or live data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thymos.core import RunStatus, RunSummary
from thymos.governance import WritRecord
from thymos.storage import RunRecord

from ._branch import branch_view


def _writ_shown(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's writ as the record shows it: everything but the token (None without one)."""
    try:
        return WritRecord.of(spec.get("writ")).shown()
    except ValueError:
        return None


def run_view(record: RunRecord) -> dict[str, Any]:
    """The run record as `GET /runs/:id` and `GET /runs` show it."""
    spec, summary = record.spec, record.summary
    cognition = spec.get("cognition", {})
    view: dict[str, Any] = {
        "run_id": record.run_id,
        "task": spec["task"],
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "tenant": record.tenant,
        "max_steps": summary.get("max_steps") or spec["max_steps"],
        "tool_scopes": spec["tool_scopes"],
        "tools": spec["tools"],
        "cognition": {"provider": cognition.get("provider"), "model": cognition.get("model")},
        "budget": spec.get("budget"),
        "effect_ceiling": spec.get("effect_ceiling"),
        "writ": _writ_shown(spec),
        "usage": summary.get("usage"),
        "parent_run_id": record.parent_run_id,
        "branch_of": branch_view(spec),
        "summary": {
            "steps_executed": summary["steps_executed"],
            "intents_submitted": summary["intents_submitted"],
            "commits": summary["commits"],
            "rejections": summary["rejections"],
            "failures": summary["failures"],
            "final_answer": summary.get("final_answer"),
            "terminated_by": summary.get("terminated_by"),
            "error": summary.get("error"),
            "head_seq": summary["head_seq"],
            "head_id": summary.get("head_id"),
        },
    }
    return view


def pending_view(pending: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Proposals waiting for approval as the execution session and the inbox show them."""
    return [
        {k: v for k, v in item.items() if k != "suspended_at"} | {"since": item.get("suspended_at")}
        for item in pending.values()
    ]


def execution_view(
    record: RunRecord,
    summary: RunSummary,
    *,
    phase: str,
    active_tool: str | None,
    step: int | None,
    partial_answer: str | None = None,
) -> dict[str, Any]:
    """The execution session: the operator-facing truth about a run, live or finished."""
    status = summary.status
    if status.terminal:
        operator_state = "done"
    elif status is RunStatus.WAITING_APPROVAL:
        operator_state = "approval_required"
    else:
        operator_state = "watching"
    return {
        "run_id": record.run_id,
        "task": record.spec["task"],
        "status": status.value,
        "phase": phase,
        "operator_state": operator_state,
        "current_step": step if step is not None else summary.steps_executed,
        "max_steps": record.spec["max_steps"],
        "active_tool": active_tool,
        "final_answer": summary.final_answer,
        "partial_answer": partial_answer,
        "terminated_by": summary.terminated_by,
        "error": summary.error,
        "counters": summary.counters(),
        "usage": summary.usage.as_dict(),
        "pending_approvals": pending_view(
            {key: item.as_dict() for key, item in summary.pending.items()}
        ),
        "head_seq": summary.head_seq,
        "log": list(summary.log),
    }
