"""Stream fan-out: many subscribers of one live run's ledger stream, over real HTTP.

A `thymos serve` process (its policy makes `kv_set` wait for an approval on channel `ops`)
runs one mock run whose first call waits; `subscribers` clients connect to its
`/runs/:id/events` stream and read what is stored so far. Once all are connected, the call is
approved and the run goes on through `steps` turns. Each subscriber notes when each later entry
arrives; an entry's delivery time is that moment minus the entry's own `created_at` (the
server's clock when it was recorded: the same machine's clock). The figures are the median and
the 99th percentile over every (subscriber, entry) pair. The clients are plain sockets in one
process, so their own reading is part of what is measured.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from thymos.core import us_from_rfc3339

from ._http import BenchConnection

APPROVE_KV_SET = (
    '@id("permit-all")\npermit(principal, action, resource);\n'
    '@id("kv-set-needs-ops")\n@approval("ops")\n'
    'permit(principal, action, resource == Thymos::Tool::"kv_set");\n'
)
SSE_STEPS = 50
"""Turns of the followed run after its approval."""
TURN_SLEEP_MS = 20
LIVE_AFTER = 3
"""Entries after the approval left out of the `live` figures (see `_fan_out`)."""
"""Each later turn takes this long, so entries arrive spread out as a live run's do."""


async def _subscriber(
    port: int, run_id: str, received: dict[int, float], ready: asyncio.Event
) -> None:
    """Follow the run's ledger stream to its end, noting when each entry id arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"the stream answered {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        # Whatever has arrived is scanned for `id:` lines as it is: every event is one chunk,
        # so an `id:` line always follows the CRLF of a chunk's size line. The stream ends with
        # the last chunk (`0`), or when the server closes it.
        tail = b""
        while True:
            data = await reader.read(65536)
            now = time.time()
            if not data:
                return
            text = tail + data
            position, keep = 0, max(0, len(text) - 8)
            while (found := text.find(b"\nid: ", position)) >= 0:
                end = text.find(b"\n", found + 5)
                if end < 0:
                    keep = found  # a line cut by the read: kept for the next one
                    break
                received[int(text[found + 5 : end])] = now
                position = keep = end
            tail = text[keep:]
            if not ready.is_set():
                ready.set()
            if text.endswith(b"\r\n0\r\n\r\n"):
                return
    finally:
        writer.close()


async def _fan_out(port: int, subscribers: int, steps: int) -> dict[str, Any]:
    connection = BenchConnection("127.0.0.1", port)
    script: list[dict[str, Any]] = [{"tool": "kv_set", "args": {"key": "k", "value": 1}}]
    script += [{"text": f"step {i}", "sleep_ms": TURN_SLEEP_MS} for i in range(steps)]
    script.append({"final": "done"})
    body = {
        "task": "fan out",
        "tool_scopes": ["kv_set"],
        "max_steps": steps + 2,
        "cognition": {"provider": "mock", "script": script},
    }
    status, data = await connection.request("POST", "/runs", body)
    if status != 202:
        raise RuntimeError(f"POST /runs answered {status}: {data[:200]!r}")
    run_id = orjson.loads(data)["run_id"]
    while True:
        status, data = await connection.request("GET", f"/runs/{run_id}")
        if orjson.loads(data)["status"] == "waiting_approval":
            break
        await asyncio.sleep(0.02)
    waiting_head = orjson.loads(data)["summary"]["head_seq"]
    received: list[dict[int, float]] = [{} for _ in range(subscribers)]
    ready = [asyncio.Event() for _ in range(subscribers)]
    tasks = [
        asyncio.create_task(_subscriber(port, run_id, received[i], ready[i]))
        for i in range(subscribers)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 120)
    status, data = await connection.request(
        "POST", f"/runs/{run_id}/approvals/ops", {"approve": True}
    )
    if status != 200:
        raise RuntimeError(f"the approval answered {status}: {data[:200]!r}")
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    await connection.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        ledger = (await client.get(f"/runs/{run_id}/ledger")).content
    created = {}
    for line in ledger.splitlines():
        envelope = orjson.loads(line)
        created[envelope["seq"]] = us_from_rfc3339(envelope["time"]) / 1e6
    delays = [
        (at - created[seq]) * 1000
        for seen in received
        for seq, at in seen.items()
        if seq > waiting_head
    ]
    # Once the run is live again each subscriber follows its feed; the first entries after the
    # approval also carry the switch from following the parked run through storage.
    live = sorted(
        (at - created[seq]) * 1000
        for seen in received
        for seq, at in seen.items()
        if seq > waiting_head + LIVE_AFTER
    )
    complete = sum(1 for seen in received if max(seen, default=-1) == max(created))
    delays.sort()
    return {
        "sse_subscribers": subscribers,
        "sse_entries_each": len(created) - waiting_head - 1,
        "sse_complete_streams": complete,
        "sse_delivery_p50_ms": round(statistics.median(delays), 1),
        "sse_delivery_p99_ms": round(delays[int(len(delays) * 0.99) - 1], 1),
        "sse_live_delivery_p50_ms": round(statistics.median(live), 1),
        "sse_live_delivery_p99_ms": round(live[int(len(live) * 0.99) - 1], 1),
    }


def sse_fan_out(data_dir: Path, subscribers: int, steps: int) -> dict[str, Any]:
    from ._main import _free_port, _wait_ready

    policies = data_dir / "sse-policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "ops.cedar").write_text(APPROVE_KV_SET)
    port = _free_port()
    base = {key: value for key, value in os.environ.items() if key != "THYMOS_POSTGRES_URL"}
    env = {
        **base,
        "THYMOS_LOG_LEVEL": "warning",
        "THYMOS_DATA_DIR": str(data_dir / "sse"),
        "THYMOS_WORKSPACE": str(data_dir),
        "THYMOS_POLICY_DIR": str(policies),
        "THYMOS_CONNECTIONS_PER_CLIENT_MAX": str(subscribers + 16),
        "THYMOS_CONNECTIONS_MAX": str(subscribers + 64),
    }
    command = [sys.executable, "-m", "thymos", "serve", "--addr", f"127.0.0.1:{port}"]
    log_path = data_dir / "sse-server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stderr=log)
    try:

        async def drive() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                await _wait_ready(c, 30, lambda: server.poll() is None)
            return await _fan_out(port, subscribers, steps)

        try:
            return asyncio.run(drive())
        except (RuntimeError, OSError, TimeoutError, httpx.HTTPError) as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n--- server log ---\n{tail}") from exc
    finally:
        server.terminate()
        server.wait(30)
