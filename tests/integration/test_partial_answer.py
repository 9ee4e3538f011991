"""While a turn streams, the execution session shows the text so far as `partial_answer`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from thymos.cognition import CognitionContext, CognitionEvent, Emit, Turn
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import finish


class Streaming:
    live = True

    def __init__(self) -> None:
        self.halfway = asyncio.Event()
        self.go_on = asyncio.Event()

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        for piece in ("Hel", "lo"):
            emit(CognitionEvent("token", {"text": piece}))
        self.halfway.set()
        await self.go_on.wait()
        emit(CognitionEvent("token", {"text": "!"}))
        return Turn(final="Hello!")


@pytest.mark.anyio
async def test_the_execution_session_shows_the_streamed_text_so_far(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    cognition = Streaming()
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        provider_factory=lambda spec: cognition,
    )
    record, _ = await runtime.start_run(StartRun(task="greet"), tenant="t")
    await cognition.halfway.wait()
    session = await runtime.execution(record.run_id, None)
    assert session["partial_answer"] == "Hello"
    cognition.go_on.set()
    await finish(runtime, record.run_id)
    done = await runtime.execution(record.run_id, None)
    assert done["final_answer"] == "Hello!"
    assert done.get("partial_answer") is None
    await runtime.shutdown(5.0)
