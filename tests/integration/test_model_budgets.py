"""Token and spend budgets stop a run at the limit; each turn's spend comes from the price table
and is recorded with its usage, so replay and `/usage` see the same figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thymos.cognition import Prices, PricesError
from thymos.core import Budget
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import all_entries, finish

TURN: dict[str, Any] = {"text": "thinking", "usage": {"input_tokens": 600, "output_tokens": 400}}
"""1,000 tokens a turn; at the price below, 2 USD in, 4 USD out per million: 0.28 cents."""


def _runtime(store: SqliteLedgerStore, workspace: Path) -> Runtime:
    prices = Prices.with_overrides({"mock": {"input": 2.0, "output": 4.0}})
    return Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace, prices=prices),
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("budget", "turns"),
    [(Budget(tokens=2_500), 3), (Budget(usd_millicents=600), 3)],
    ids=["tokens", "spend"],
)
async def test_a_budget_stops_the_run_at_its_limit(
    store: SqliteLedgerStore, workspace: Path, budget: Budget, turns: int
) -> None:
    """After the turn that reaches the limit the run ends `budget_exhausted`: 3 turns reach
    3,000 tokens (over 2,500) and 840 millicents (over 600)."""
    runtime = _runtime(store, workspace)
    record, _ = await runtime.start_run(
        StartRun(task="spend", max_steps=20, script=[TURN] * 10, budget=budget), tenant="t"
    )
    view = await finish(runtime, record.run_id)
    assert view["summary"]["terminated_by"] == "budget_exhausted"
    assert view["summary"]["steps_executed"] == turns
    entries = await all_entries(store, record.run_id)
    spent = [e.body["usage"]["usd_millicents"] for e in entries if e.kind == "turn"]
    assert spent == [280] * turns  # (600 * 2 + 400 * 4) / 1e6 USD = 280 millicents
    assert view["usage"]["usd_millicents"] == 280 * turns
    report = await runtime.replay(record.run_id, None, require_compiler=None, require_policy=None)
    assert report["verified"], report["failures"]
    await runtime.shutdown(5.0)


def test_prices_match_the_most_specific_key_and_refuse_nonsense() -> None:
    prices = Prices.with_overrides(
        {"acme/big": {"input": 10, "output": 20}, "acme": {"input": 1, "output": 1}}
    )
    assert prices.per_million("acme", "big") == (10.0, 20.0)
    assert prices.per_million("acme", "small") == (1.0, 1.0)
    assert prices.per_million("openai", "gpt-4o-mini") == (0.15, 0.6)
    assert prices.per_million("nobody", None) == (0.0, 0.0)
    with pytest.raises(PricesError, match="per million"):
        Prices.with_overrides({"x": {"input": -1, "output": 1}})
