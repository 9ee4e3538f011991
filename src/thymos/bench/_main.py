"""Benchmark figures for DESIGN.md's performance targets.

0. The cost of the writ check (as the compiler asks it: Thymos's own checks in Python; and as
   Biscuit's authorizer answers it) and of the policy check (Cedar) alone, and of the whole
   compile with and without them.
1. Governance overhead per intent (compile with writ and policy, execute the mock tool, append,
   projection update), at seq ~100,000 of one run and at seq ~100 of fresh runs measured right
   before and after it: they should be within 20% of each other.
2. Replay rate over that run's ledger of at least 100,000 entries, read from SQLite: (a) the
   chain verified and the usage folded in one lean loop (`ChainFold`), (b) the full replay,
   every decision re-run by the compiler, every commit folded into the world.
3. The runtime's own cost per model turn through a real adapter against an instant stand-in
   (`_model_turns.py`).
4. End-to-end mock runs per second over real HTTP against a real `thymos serve` process, with
   concurrent clients.
5. µs per intent with `synchronous=full` at several counts of concurrent runs (`_concurrency.py`),
   memory per parked run with thousands waiting for approval (`_parked.py`), and the delivery
   time of a live run's entries to many SSE subscribers (`_sse.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from thymos.cognition import CognitionContext, Emit, Turn
from thymos.core import (
    Budget,
    ChainVerifier,
    Effect,
    EntryKind,
    HeadSigner,
    Intent,
    RunSpec,
    StoredRow,
    Usage,
    parse_envelope,
)
from thymos.governance import (
    Authority,
    PolicyCall,
    PolicySet,
    ToolCatalog,
    WritChecks,
    WritFacts,
    WritTerms,
    authorize,
    compile_intent,
    default_policy_files,
    lineage_of,
    mint,
    new_root_key,
    parse,
)
from thymos.runtime import (
    MAX_STEPS_MAX,
    REPLAY_PAGE_ROWS,
    BranchRun,
    ClusterConfig,
    Runtime,
    RuntimeConfig,
    StartRun,
    chain_and_usage,
)
from thymos.storage import ClusterStore, SqliteLedgerStore, Storage, sqlite_storage
from thymos.tools import Sandbox, Workspace, builtin_tools
from thymos.tools._process import run_process

from ._audit import audit_figures
from ._concurrency import full_sync_concurrency
from ._http import BenchConnection
from ._model_turns import TURNS as MODEL_TURNS
from ._model_turns import model_turn_costs
from ._parked import parked_runs as parked_figures
from ._run_control import recovery_figures
from ._sse import LIVE_AFTER, SSE_STEPS, sse_fan_out

KEY_SPACE = 1000
"""kv_set keys of the fill cycle over this many keys, so the world stays a realistic size."""

PROBE_KEY_SPACE = 10
"""Probe turns of every run cycle over their own few keys, so after the first probe turn every
probe is a replace (the same work at seq ~100 and at seq ~100,000)."""

PROBE_TURNS = 30
PROBE_INTENTS = 10
FILL_INTENTS = 500


class _BenchCognition:
    """Cognition that proposes planned batches of kv_set intents and times the gaps between turns.

    The time from one turn's return to the next turn's call is exactly the runtime's governance
    work for the previous turn's intents (recording the turn and intents, compiling, executing the
    mock tool, committing, updating the projection). With a `gate`, the turn at `gate_at` waits
    for it (so other measurements can be taken at that moment)."""

    live = False

    def __init__(self, plan: list[int], gate_at: int | None = None, tool: str = "kv_set") -> None:
        self.plan = plan
        self.tool = tool
        self.returned_at: float | None = None
        self.samples: list[tuple[int, float, int]] = []  # (turn index, seconds, intents)
        self.counter = 0
        self.gate_at = gate_at
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        now = time.perf_counter()
        index = context.turns_taken
        if self.returned_at is not None and index > 0:
            self.samples.append((index - 1, now - self.returned_at, self.plan[index - 1]))
        if index == self.gate_at:
            self.arrived.set()
            await self.gate.wait()
        if index >= len(self.plan):
            self.returned_at = None
            return Turn(final="done")
        intents = []
        probing = self.plan[index] == PROBE_INTENTS
        for i in range(self.plan[index]):
            self.counter += 1
            key = (
                f"p{self.counter % PROBE_KEY_SPACE}" if probing else f"k{self.counter % KEY_SPACE}"
            )
            args: dict[str, Any] = (
                {"key": key, "value": self.counter}
                if self.tool == "kv_set"
                else {"path": f"bench/{key}.txt", "content": f"{self.counter}\n"}
            )
            intents.append(Intent(self.tool, args, f"c{index}_{i}"))
        self.returned_at = time.perf_counter()
        return Turn(intents=tuple(intents))


def _per_intent_us(samples: list[tuple[int, float, int]], turns: range) -> list[float]:
    return [
        seconds / intents * 1e6 for index, seconds, intents in samples if index in turns and intents
    ]


async def _governance_and_replay(
    entries_target: int, data_dir: Path, storage: Storage | None = None
) -> dict[str, Any]:
    """One long run is filled to `entries_target` entries, then probed with small turns; a fresh
    run is probed just before and just after, so the seq ~100 and seq ~100k figures are taken
    at the same time (the speed of a shared VM drifts over a minute).

    In `storage` (not opened yet; opened and closed here), else in a new SQLite file in
    `data_dir`. On shared storage (PostgreSQL) the runtime is a cluster node, as a server is: it
    claims each run's lease when it creates the run."""
    fill_turns = max(
        1, (entries_target - PROBE_TURNS * (2 * PROBE_INTENTS + 1)) // (2 * FILL_INTENTS + 1) + 1
    )
    long_plan = [FILL_INTENTS] * fill_turns + [PROBE_INTENTS] * PROBE_TURNS
    assert len(long_plan) < MAX_STEPS_MAX
    cognitions = {
        "bench-long": _BenchCognition(long_plan, gate_at=fill_turns),
        "bench-fresh-before": _BenchCognition([PROBE_INTENTS] * PROBE_TURNS),
        "bench-fresh-after": _BenchCognition([PROBE_INTENTS] * PROBE_TURNS),
        "bench-branch": _BenchCognition([]),
    }

    def factory(spec: RunSpec) -> _BenchCognition:
        return cognitions[spec.task]

    if storage is None:
        storage = sqlite_storage(data_dir / "bench.sqlite3")
    await storage.open()
    store = storage.ledger
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir),
        provider_factory=factory,
        cluster=ClusterConfig(node_id="bench", shared=True) if storage.shared else None,
    )

    async def run(task: str) -> str:
        record, _ = await runtime.start_run(
            StartRun(task=task, max_steps=MAX_STEPS_MAX, tool_scopes=["kv_set"]), tenant="bench"
        )
        active = runtime.active(record.run_id)
        assert active is not None
        assert active.task is not None
        await active.task
        return record.run_id

    try:
        long = cognitions["bench-long"]
        started = time.perf_counter()
        long_run = asyncio.create_task(run("bench-long"))
        await long.arrived.wait()
        fill_seconds = time.perf_counter() - started
        await run("bench-fresh-before")
        long.gate.set()
        run_id = await long_run
        await run("bench-fresh-after")
        view = await runtime.get_run(run_id, None)
        head = view["summary"]["head_seq"]
        assert view["summary"]["terminated_by"] == "final_answer", view["summary"]
        probes = range(1, PROBE_TURNS)
        early = _per_intent_us(cognitions["bench-fresh-before"].samples, probes)
        early += _per_intent_us(cognitions["bench-fresh-after"].samples, probes)
        late = _per_intent_us(long.samples, range(fill_turns + 1, fill_turns + PROBE_TURNS))
        early_us, late_us = statistics.median(early), statistics.median(late)

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        replay_started, replay_cpu = time.perf_counter(), time.process_time()
        report = await runtime.replay(run_id, None, require_compiler=None, require_policy=None)
        replay_seconds = time.perf_counter() - replay_started
        replay_cpu = time.process_time() - replay_cpu
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert report["verified"], report["failures"][:3]
        assert report["world_matches"]
        assert report["decisions_checked"] > 0
        chain_seconds = await _chain_only(store, run_id)
        fold_seconds, fold_cpu = await _chain_and_fold(store, run_id, head, report)
        heads = await store.signed_heads(run_id)
        branch_ms, branch_seq = await _branch_creation(runtime, store, run_id, head)
        return {
            "ledger_entries": head + 1,
            "overhead_us_per_intent_seq_100": round(early_us, 1),
            "overhead_us_per_intent_seq_100k": round(late_us, 1),
            "overhead_late_over_early": round(late_us / early_us, 3),
            "run_intents_per_s": round(FILL_INTENTS * fill_turns / fill_seconds),
            "replay_entries_per_s": round((head + 1) / replay_seconds),
            "replay_seconds": round(replay_seconds, 3),
            "replay_decisions_checked": report["decisions_checked"],
            "chain_only_entries_per_s": round((head + 1) / chain_seconds),
            "replay_chain_fold_entries_per_s": round((head + 1) / fold_seconds),
            "replay_chain_fold_seconds": round(fold_seconds, 3),
            "replay_chain_fold_entries_per_cpu_s": round((head + 1) / fold_cpu),
            "replay_entries_per_cpu_s": round((head + 1) / replay_cpu),
            "signed_heads_in_long_run": len(heads),
            "replay_peak_rss_growth_mib": round(max(0, rss_after - rss_before) / 1024, 1),
            "branch_creation_ms": branch_ms,
            "branch_from_seq": branch_seq,
        }
    finally:
        await runtime.shutdown(1.0)
        await storage.close()


async def _branch_creation(
    runtime: Runtime, store: ClusterStore, run_id: str, head: int
) -> tuple[float, int]:
    """Time `POST /runs/:id/branch`'s work (find the commit, fold the world at it from the
    nearest checkpoint, mint, create and launch the branch) from the long run's last commit."""
    rows = await store.read_rows(run_id, after_seq=head - 64, limit=64)
    commits = [
        entry
        for entry in (parse_envelope(row.raw, run_id=run_id, seq=row.seq) for row in rows)
        if entry.kind == EntryKind.COMMIT
    ]
    source = commits[-1]
    started = time.perf_counter()
    record = await runtime.branch(
        run_id, None, BranchRun(commit_id=source.id, task="bench-branch"), created_by=None
    )
    seconds = time.perf_counter() - started
    active = runtime.active(record.run_id)
    if active is not None and active.task is not None:
        await active.task
    return round(seconds * 1000, 2), source.seq


async def _chain_only(store: ClusterStore, run_id: str) -> float:
    """Seconds to verify the run's hash chain alone (what replay did before it re-ran
    decisions): the same pages, hashed and parsed, nothing decided or folded."""
    verifier = ChainVerifier(run_id)

    def check(rows: list[StoredRow]) -> None:
        for row in rows:
            verifier.check(row)

    started = time.perf_counter()
    after = -1
    while rows := await store.read_rows(run_id, after_seq=after, limit=REPLAY_PAGE_ROWS):
        await asyncio.to_thread(check, rows)
        after = rows[-1].seq
    seconds = time.perf_counter() - started
    assert verifier.verified, verifier.failures[:3]
    return seconds


async def _chain_and_fold(
    store: ClusterStore, run_id: str, head: int, report: Mapping[str, Any]
) -> tuple[float, float]:
    """Seconds to verify the run's chain and fold its usage (`chain_and_usage`: `ChainFold`, one
    lean loop that decodes only the bodies the fold reads, over the same pages from storage, the
    next page read while one is checked); its counts must be the full replay's. Wall-clock and
    CPU seconds (of every thread of the process: on a shared machine the CPU figure is the one
    that other work does not move)."""
    started, cpu = time.perf_counter(), time.process_time()
    fold = await chain_and_usage(store, run_id)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert fold.verified, fold.failures[:3]
    assert fold.usage.head_seq == head
    assert fold.usage.commits == report["kinds"].get("commit", 0)
    assert fold.usage.intents_submitted == report["kinds"].get("intent", 0)
    return seconds, cpu


async def _tool_overheads(data_dir: Path, rounds: int = 3) -> dict[str, Any]:
    """Governance overhead per intent of `fs_write` (a real file written atomically, a `file`
    resource committed) next to `kv_set`, on fresh runs taken in alternation."""
    workspace = data_dir / "tools-workspace"
    workspace.mkdir()
    store = SqliteLedgerStore(data_dir / "tools.sqlite3")
    await store.open()
    samples: dict[str, list[float]] = {"kv_set": [], "fs_write": []}
    current: dict[str, _BenchCognition] = {}
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        provider_factory=lambda spec: current[spec.task],
    )
    try:
        for _ in range(rounds):
            for tool in samples:
                cognition = _BenchCognition([PROBE_INTENTS] * PROBE_TURNS, tool=tool)
                current[tool] = cognition
                record, _ = await runtime.start_run(
                    StartRun(task=tool, max_steps=MAX_STEPS_MAX, tool_scopes=[tool]), tenant="bench"
                )
                active = runtime.active(record.run_id)
                assert active is not None and active.task is not None
                await active.task
                samples[tool] += _per_intent_us(cognition.samples, range(1, PROBE_TURNS))
    finally:
        await runtime.shutdown(1.0)
        await store.close()
    return {
        "overhead_us_per_intent_kv_set": round(statistics.median(samples["kv_set"]), 1),
        "overhead_us_per_intent_fs_write": round(statistics.median(samples["fs_write"]), 1),
    }


async def _sandbox_start(data_dir: Path, calls: int = 20) -> dict[str, Any]:
    """What the sandbox adds to starting a command: `/bin/true` run confined (a fresh
    interpreter sets up namespaces and Landlock, then becomes the command) and run bare."""
    folder = data_dir / "sandbox-workspace"
    folder.mkdir()
    sandbox = Sandbox(Workspace.of(folder))
    support = await sandbox.probe()
    bare: list[float] = []
    confined: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        await run_process(["/bin/true"], cwd=folder, env={}, timeout_s=30)
        bare.append(time.perf_counter() - started)
        if support.usable:
            started = time.perf_counter()
            done = await sandbox.run(
                ["/bin/true"], write=False, network=False, timeout_s=30, output_max=1024
            )
            confined.append(time.perf_counter() - started)
            assert done.exit_code == 0, done.stderr
    return {
        "process_start_us": round(statistics.median(bare) * 1e6),
        "sandbox_start_us": round(statistics.median(confined) * 1e6) if confined else None,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_ready(
    client: httpx.AsyncClient, deadline_s: float, alive: Callable[[], bool] = lambda: True
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise RuntimeError("the server exited before it became ready")
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not become ready")


async def _one_run(connection: BenchConnection, index: int) -> None:
    body = {
        "task": f"bench run {index}",
        "tool_scopes": ["kv_*"],
        "cognition": {
            "provider": "mock",
            "script": [{"tool": "kv_set", "args": {"key": "k", "value": index}}, {"final": "ok"}],
        },
    }
    status, data = await connection.request("POST", "/runs", body)
    if status != 202:
        raise RuntimeError(f"POST /runs answered {status}: {data[:200]!r}")
    run_id = orjson.loads(data)["run_id"]
    # Follow the ledger stream to the end: it closes once the run is terminal.
    status, stream = await connection.request("GET", f"/runs/{run_id}/events")
    last = stream.rstrip().rsplit(b"\nevent: ", 1)[-1].split(b"\n", 1)[0]
    if status != 200 or last != b"run_ended":
        raise RuntimeError(f"run {run_id} stream ended with {last!r}")


async def _drive_http(
    ports: Sequence[int],
    runs: int,
    clients: int,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Seconds for `clients` concurrent clients to carry out `runs` runs, after one warm-up run
    each; client i talks to the node at `ports[i % len(ports)]` (keep-alive, one connection)."""
    for port in ports:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await _wait_ready(client, 30, alive)
    connections = [BenchConnection("127.0.0.1", ports[i % len(ports)]) for i in range(clients)]
    try:
        await asyncio.gather(*(_one_run(c, -i) for i, c in enumerate(connections)))  # warm-up
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(runs):
            queue.put_nowait(i)

        async def worker(connection: BenchConnection) -> None:
            while not queue.empty():
                await _one_run(connection, queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()


SERVER_LOG_TAIL = 2000
"""Characters of a failed server's log quoted in the error."""


def _serve_and_drive(
    runs: int, clients: int, nodes: Sequence[Mapping[str, str]], log_dir: Path
) -> float:
    """Start one `thymos serve` process per entry of `nodes` (its extra environment: at least
    its own `THYMOS_DATA_DIR` and `THYMOS_WORKSPACE`), drive them with `_drive_http` and stop
    them; the seconds it took. A node is on SQLite unless its environment names
    `THYMOS_POSTGRES_URL` (one inherited from this process is not passed on). Each node's
    stderr goes to `log_dir`; a failure quotes the end of it."""
    base = {key: value for key, value in os.environ.items() if key != "THYMOS_POSTGRES_URL"}
    ports: list[int] = []
    while len(ports) < len(nodes):
        if (port := _free_port()) not in ports:
            ports.append(port)
    logs = [log_dir / f"server-{port}.log" for port in ports]
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for port, extra, log_path in zip(ports, nodes, logs, strict=True):
            env = {**base, "THYMOS_LOG_LEVEL": "warning", **extra}
            command = [sys.executable, "-m", "thymos", "serve", "--addr", f"127.0.0.1:{port}"]
            with log_path.open("wb") as log:
                servers.append(subprocess.Popen(command, env=env, stderr=log))

        def alive() -> bool:
            return all(server.poll() is None for server in servers)

        try:
            return asyncio.run(_drive_http(ports, runs, clients, alive))
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            tails = []
            for server, log_path in zip(servers, logs, strict=False):
                text = log_path.read_text(errors="replace")[-SERVER_LOG_TAIL:].strip()
                state = "running" if server.poll() is None else f"exited {server.returncode}"
                tails.append(f"--- {log_path.name} ({state}) ---\n{text or '(empty)'}")
            raise RuntimeError(f"{exc}\n" + "\n".join(tails)) from exc
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(30)


def _http_runs(runs: int, clients: int, data_dir: Path) -> dict[str, Any]:
    node = {"THYMOS_DATA_DIR": str(data_dir / "http"), "THYMOS_WORKSPACE": str(data_dir)}
    seconds = _serve_and_drive(runs, clients, [node], data_dir)
    return {"http_runs": runs, "http_clients": clients, "http_runs_per_s": round(runs / seconds, 1)}


def _median_us(call: Callable[[], object], repeat: int = 2000) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def _authority_costs() -> dict[str, Any]:
    """What writ and policy checks add per intent: each measured alone, and the whole compile
    with and without them (the foundation's compiler had only the catalog and schema stages).
    The writ check is measured as the compiler asks it (`Authority.authorize`: the writ's own
    checks in Python) and as Biscuit's authorizer answers it, each call with the next usage as
    a run's calls have it, and the one-off cost of reading the checks from the token when a
    run's authority is built."""
    specs = builtin_tools().specs()
    catalog = ToolCatalog(specs)
    root = new_root_key()
    now = datetime.now(UTC)
    terms = WritTerms(
        "bench",
        ("kv_*",),
        Effect.WRITE,
        Budget(tool_calls=10**9),
        now - timedelta(minutes=1),
        now + timedelta(hours=1),
    )
    token = parse(mint(root.private_key, terms).token, root.public_key)
    policy = PolicySet(default_policy_files())
    entities = policy.entities(run_id="r", tenant="bench", task="t", tools=list(specs.values()))
    authority = Authority("r", "bench", token, lineage_of(token), policy, entities)
    intent = Intent("kv_set", {"key": "k", "value": 1}, "c")
    usage = Usage(tool_calls=3)
    # A run's calls each bring new usage (and a new second now and then): each measured call
    # asks about the next tool call, as the run's next intent would (Biscuit's facts are then
    # not all cached). 4000 calls: the two measurements' 2000 each, built beforehand.
    calls = iter([WritFacts("bench", "kv_set", Effect.WRITE, now, n, 0, 0) for n in range(4000)])
    writ_us = _median_us(lambda: authority.authorize(next(calls)))
    writ_biscuit_us = _median_us(lambda: authorize(token, next(calls)))
    writ_read_us = _median_us(lambda: WritChecks.of(token), 200)
    policy_us = _median_us(
        lambda: policy.evaluate(
            PolicyCall("r", specs["kv_set"], '{"key":"k","value":1}', 3, 0, 0), entities
        )
    )
    compile_us = _median_us(
        lambda: compile_intent(
            intent,
            catalog=catalog,
            authority=authority,
            usage=usage,
            now=now,
            revocations=frozenset(),
        )
    )
    schema_only_us = _median_us(lambda: catalog.argument_errors("kv_set", intent.args))
    signer = HeadSigner(bytes(root.private_key.to_bytes()))
    sign_us = _median_us(lambda: signer.sign("r", 41, "0" * 64, "2026-12-01T00:00:00Z"), 500)
    return {
        "head_sign_us": round(sign_us, 1),
        "writ_check_us": round(writ_us, 1),
        "writ_check_biscuit_us": round(writ_biscuit_us, 1),
        "writ_read_us": round(writ_read_us, 1),
        "policy_check_us": round(policy_us, 1),
        "compile_us": round(compile_us, 1),
        "compile_without_authority_us": round(schema_only_us, 1),
    }


def main(
    *,
    entries: int,
    runs: int,
    clients: int,
    audit_entries: int = 0,
    parked_runs: int = 0,
    subscribers: int = 0,
    full_sync_counts: tuple[int, ...] = (),
    sse_steps: int = SSE_STEPS,
) -> None:
    with tempfile.TemporaryDirectory(prefix="thymos-bench-") as tmp:
        data_dir = Path(tmp)
        figures = _authority_costs()
        print(f"writ check (the compiler's, in Python):   {figures['writ_check_us']} us")
        print(f"writ check (Biscuit authorizer):          {figures['writ_check_biscuit_us']} us")
        print(f"reading a writ's checks (once a run):     {figures['writ_read_us']} us")
        print(f"policy check (Cedar, not memoised):       {figures['policy_check_us']} us")
        print(f"compile, all stages:                      {figures['compile_us']} us")
        print(
            f"compile without writ and policy:          {figures['compile_without_authority_us']} us"
        )
        figures.update(asyncio.run(_governance_and_replay(entries, data_dir)))
        figures.update(asyncio.run(_tool_overheads(data_dir)))
        figures.update(asyncio.run(_sandbox_start(data_dir)))
        figures.update(asyncio.run(model_turn_costs(data_dir)))
        figures.update(asyncio.run(recovery_figures(data_dir)))
        print(f"ledger entries in the benchmark run:      {figures['ledger_entries']}")
        print(
            f"governance overhead per intent, seq ~100: {figures['overhead_us_per_intent_seq_100']} us"
        )
        print(
            f"governance overhead per intent, seq ~100k:{figures['overhead_us_per_intent_seq_100k']} us"
        )
        print(f"late / early ratio (flat = 1.0):          {figures['overhead_late_over_early']}")
        print(
            f"replay, every decision re-run:            {figures['replay_entries_per_s']} entries/s"
            f" ({figures['replay_entries_per_cpu_s']} per CPU second;"
            f" {figures['replay_decisions_checked']} decisions)"
        )
        print(
            f"replay, chain + usage fold (lean loop):   "
            f"{figures['replay_chain_fold_entries_per_s']} entries/s"
            f" ({figures['replay_chain_fold_entries_per_cpu_s']} per CPU second)"
        )
        print(
            f"chain-only verification:                  {figures['chain_only_entries_per_s']} entries/s"
        )
        print(
            f"branch creation from a commit at seq {figures['branch_from_seq']}: "
            f"{figures['branch_creation_ms']} ms"
        )
        print(
            f"signing a head:                           {figures['head_sign_us']} us"
            f" (a short run signs 1 to 3; the long run signed {figures['signed_heads_in_long_run']})"
        )
        print(
            f"governance overhead per intent, kv_set / fs_write: "
            f"{figures['overhead_us_per_intent_kv_set']} / "
            f"{figures['overhead_us_per_intent_fs_write']} us"
        )
        print(
            f"starting a command bare / in the sandbox:  {figures['process_start_us']} / "
            f"{figures['sandbox_start_us']} us"
        )
        print(
            f"a model turn, handed over / through the OpenAI adapter streamed / whole "
            f"({MODEL_TURNS}-turn runs): {figures['model_turn_us_direct']} / "
            f"{figures['model_turn_us_streamed']} / {figures['model_turn_us_whole']} us"
        )
        print(
            f"runtime overhead per model turn, streamed / whole: "
            f"{figures['model_turn_overhead_us_streamed']} / "
            f"{figures['model_turn_overhead_us_whole']} us"
        )
        print(
            f"restart to the first / last resumed step ({figures['recovery_runs']} runs "
            f"interrupted): {figures['recovery_first_step_ms']} / "
            f"{figures['recovery_all_steps_ms']} ms"
        )
        if audit_entries > 0:
            figures.update(asyncio.run(audit_figures(data_dir, audit_entries)))
            print(
                f"audit, a ledger of {figures['audit_ledger_entries']} entries "
                f"({figures['audit_tenant_entries']} the tenant's): first / middle page "
                f"{figures['audit_first_page_ms']} / {figures['audit_middle_page_ms']} ms; "
                f"count all / one kind / a window {figures['audit_count_ms']} / "
                f"{figures['audit_count_kind_ms']} / {figures['audit_count_window_ms']} ms"
            )
            print(
                f"audit CSV export of the tenant's entries:  {figures['audit_csv_s']} s "
                f"({figures['audit_csv_rows_per_s']} rows/s, {figures['audit_csv_mib']} MiB), "
                f"peak Python memory {figures['audit_csv_peak_mib']} MiB"
            )
        if full_sync_counts:
            figures.update(full_sync_concurrency(data_dir, full_sync_counts))
            print(
                "per intent with synchronous=full, "
                + " / ".join(str(n) for n in full_sync_counts)
                + " concurrent runs: "
                + " / ".join(
                    str(figures[f"full_sync_us_per_intent_{n}_runs"]) for n in full_sync_counts
                )
                + " us"
            )
        if parked_runs > 0:
            figures.update(parked_figures(data_dir, parked_runs))
            print(
                f"parked runs ({figures['parked_waiting_total']} waiting, no actor): "
                f"{figures['parked_bytes_per_run']} bytes of memory each "
                f"(resident {figures['parked_rss_mib']} MiB); a vote to the run's end "
                f"{figures['parked_wake_to_end_ms']} ms"
            )
        if subscribers > 0:
            figures.update(sse_fan_out(data_dir, subscribers, sse_steps))
            print(
                f"SSE, {subscribers} subscribers of one live run ({figures['sse_entries_each']} "
                f"entries each, {figures['sse_complete_streams']} streams complete): delivery "
                f"p50 / p99 {figures['sse_delivery_p50_ms']} / {figures['sse_delivery_p99_ms']} ms "
                f"(past the first {LIVE_AFTER} entries after the wake: "
                f"{figures['sse_live_delivery_p50_ms']} / {figures['sse_live_delivery_p99_ms']} ms)"
            )
        if runs > 0:
            figures.update(_http_runs(runs, clients, data_dir))
            print(
                f"end-to-end mock runs over HTTP:           {figures['http_runs_per_s']} runs/s ({clients} clients)"
            )
        print(json.dumps({"bench": "thymos", **figures}, sort_keys=True))
