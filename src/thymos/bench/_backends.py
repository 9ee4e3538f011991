"""PostgreSQL next to SQLite: `thymos bench --backend postgres`.

Every figure is taken for both backends in the same invocation, on the same machine, because the
speed of a shared VM drifts by tens of percent over minutes; where it is practical the two are
measured in alternation. PostgreSQL is measured in a fresh database the bench creates on the
server it is given (`thymos_bench_<random>`) and drops at the end, even on failure; SQLite in
files in a temporary folder, with the server's default durability (WAL, `synchronous=NORMAL`).
PostgreSQL runs with the server's own settings (`synchronous_commit` and `fsync` are reported).

1. Append throughput (entries/s), the raw storage append, nothing else: `APPEND_RUNS` runs
   append concurrently into one open store, each its share of `append_entries_per_round`
   pre-sealed entries of about `append_entry_bytes` bytes (a commit's size), in three ways:
   - `single_awaited`: one-entry appends, each awaited before the next (a run that waits for
     every write);
   - `single_pipelined`: one-entry appends submitted without waiting (`append()` returns an
     awaitable, as `Trajectory.stage` does), awaited `APPEND_PIPELINE` at a time (the runtime
     waits once per turn, in `flush`);
   - `batch_8`: eight-entry appends, each awaited before the next.
   Timed from the first submission to the last acknowledgement; run creation and sealing are
   not timed. `APPEND_ROUNDS` rounds, the backends' order reversed each round; the figure is
   the median round (every round is listed in the JSON line).
2. Governance overhead per intent (µs): the default bench's measurement
   (`_main._governance_and_replay`: compile with writ and policy, execute the mock `kv_set`,
   append, projection update) on fresh runs (seq ~100) and at the end of one long run of
   `--entries` entries (seq ~N), the runtime holding each run's lease on PostgreSQL as a server
   node does. Kept from the same run as the default bench has them: intents/s while the long
   run is filled (500-intent turns), and the time to branch from its last commit.
3. Replay rate (entries/s): `runtime.replay` of that long run (verify every hash and link,
   re-run every decision, fold every commit), and the hash chain alone.
   2 and 3 are taken in four passes, SQLite, PG, PG, SQLite; each figure is the mean of a
   backend's two passes (the late / early ratio is that of the means), each pass's headline
   figures are listed in the JSON line (`*_passes`).
4. End-to-end mock runs per second over real HTTP (`_main._drive_http`: `--clients` keep-alive
   clients each creating a one-`kv_set` mock run and following its event stream to the end):
   one `thymos serve` on SQLite, one on PostgreSQL, and two on the same PostgreSQL database
   (same root key, distinct node ids, clients spread evenly over both). Each is measured twice,
   in the order SQLite, PG x1, PG x2, PG x2, PG x1, SQLite, over `--runs` runs each time; the
   figure is all runs over all seconds of that setup. A SQLite node starts on a fresh file
   each time; the PostgreSQL nodes use the bench's database.

All in-process figures (1 to 3) of a backend use one store, the SQLite file or the PostgreSQL
database, so each holds what the earlier ones wrote, as the other does. The bench's own runs
are recorded `completed`, so no node ever recovers them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pg_sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from thymos.core import Entry, EntryKind, RunStatus, rfc3339_from_us, seal, uuid7
from thymos.storage import LedgerStore, RunRecord, Storage, sqlite_storage
from thymos.storage._postgres import postgres_storage

from ._main import _governance_and_replay, _serve_and_drive

BACKENDS = ("sqlite", "postgres")
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
LABEL = 62
"""Width of the label column of the printed table."""

APPEND_RUNS = 32
APPEND_PIPELINE = 8
APPEND_BATCH = 8
APPEND_ROUNDS = 3
APPEND_VARIANTS = ("single_awaited", "single_pipelined", "batch_8")
APPEND_LABELS = {
    "single_awaited": f"{APPEND_RUNS} runs, 1-entry appends, each awaited",
    "single_pipelined": (
        f"{APPEND_RUNS} runs, 1-entry appends, {APPEND_PIPELINE} in flight per await"
    ),
    "batch_8": f"{APPEND_RUNS} runs, {APPEND_BATCH}-entry appends, each awaited",
}

HTTP_ORDER = ("sqlite_1", "postgres_1", "postgres_2", "postgres_2", "postgres_1", "sqlite_1")
HTTP_LABELS = {
    "sqlite_1": "SQLite, 1 node",
    "postgres_1": "PostgreSQL, 1 node",
    "postgres_2": "PostgreSQL, 2 nodes",
}
HTTP_KEYS = {
    "sqlite_1": "sqlite_http_runs_per_s_1_node",
    "postgres_1": "postgres_http_runs_per_s_1_node",
    "postgres_2": "postgres_http_runs_per_s_2_nodes",
}

GOVERNANCE_KEYS = {
    "ledger_entries": "ledger_entries",
    "overhead_us_per_intent_seq_100": "overhead_us_per_intent_seq_100",
    "overhead_us_per_intent_seq_100k": "overhead_us_per_intent_seq_n",
    "overhead_late_over_early": "overhead_late_over_early",
    "run_intents_per_s": "run_intents_per_s",
    "replay_entries_per_s": "replay_entries_per_s",
    "replay_seconds": "replay_seconds",
    "replay_decisions_checked": "replay_decisions_checked",
    "chain_only_entries_per_s": "chain_only_entries_per_s",
    "signed_heads_in_long_run": "signed_heads_in_long_run",
    "branch_creation_ms": "branch_creation_ms",
    "branch_from_seq": "branch_from_seq",
}
"""The default bench's governance figures kept here, and their names (`seq_n`: the long run's
end, `ledger_entries` says where). Its peak-RSS figure is left out: the process's peak is
shared by both backends' replays."""

GOVERNANCE_ORDER = ("sqlite", "postgres", "postgres", "sqlite")
GOVERNANCE_PASSES_LISTED = frozenset(
    {
        "overhead_us_per_intent_seq_100",
        "overhead_us_per_intent_seq_n",
        "run_intents_per_s",
        "replay_entries_per_s",
    }
)


class BenchSetupError(Exception):
    """The PostgreSQL server cannot be used for the bench (a bad URL, refused, no rights); the
    message says which. `thymos bench` exits 2 on it."""


# -- the database -------------------------------------------------------------------------


def _describe(url: str) -> str:
    """host:port/dbname of a connection string, without user or password."""
    params = conninfo_to_dict(url)
    host = params.get("host") or "the local socket"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or 'postgres'}"


def _scrub(text: str, url: str) -> str:
    password = conninfo_to_dict(url).get("password")
    return text.replace(str(password), "***") if password else text


def _with_database(url: str, name: str) -> str:
    """The same server and parameters, database `name`."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    return make_conninfo(url, dbname=name)


def check_url(url: str) -> None:
    """Raise `BenchSetupError` unless `url` parses as a PostgreSQL connection string."""
    try:
        conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).replace(url, "<the URL>").split())  # it may hold a password
        raise BenchSetupError(f"--postgres-url is not a valid PostgreSQL URL: {reason}") from None


@contextmanager
def _fresh_database(server_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Create `thymos_bench_<random>` on the server, yield (its URL, the server's settings
    that bear on the figures), and drop it afterwards even if servers still hold it."""
    name = f"thymos_bench_{secrets.token_hex(6)}"
    where = _describe(server_url)
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            settings = {}
            for setting in ("server_version", "synchronous_commit", "fsync"):
                row = conn.execute(pg_sql.SQL("SHOW {}").format(pg_sql.Identifier(setting)))
                settings[setting] = str(next(iter(row.fetchone() or ("?",))))
            conn.execute(pg_sql.SQL("CREATE DATABASE {}").format(pg_sql.Identifier(name)))
    except psycopg.Error as exc:
        reason = _scrub(" ".join(str(exc).split()), server_url)
        raise BenchSetupError(
            f"cannot create a database on the PostgreSQL server at {where}: {reason}"
        ) from None
    try:
        yield _with_database(server_url, name), settings
    finally:
        try:
            with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(
                    pg_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        pg_sql.Identifier(name)
                    )
                )
        except psycopg.Error as exc:
            reason = _scrub(" ".join(str(exc).split()), server_url)
            warnings.warn(
                f"could not drop the bench database {name} at {where}: {reason}", stacklevel=1
            )


# -- 1. append throughput -----------------------------------------------------------------


def _commit_body(index: int) -> dict[str, Any]:
    """About the body of a `kv_set` commit."""
    return {
        "intent_id": secrets.token_hex(32),
        "tool": "kv_set",
        "effect": "write",
        "output": {"key": f"k{index % 1000}", "version": index},
        "resources": [{"kind": "kv", "key": f"k{index % 1000}", "version": index}],
        "duration_us": 150 + index % 100,
        "step": index // 8 + 1,
    }


def _seal_run(count: int) -> tuple[RunRecord, Entry, list[Entry]]:
    """A new run (recorded as completed, so no server ever recovers it), its first entry and
    `count` entries to append after it."""
    now_us = time.time_ns() // 1000
    run_id = uuid7(now_us // 1000, secrets.token_bytes(10))
    now = rfc3339_from_us(now_us)
    first = seal(
        run_id=run_id,
        seq=0,
        parent=None,
        kind=EntryKind.RUN_STARTED,
        time=now,
        body={"task": "append bench"},
    )
    entries: list[Entry] = []
    parent = first
    for seq in range(1, count + 1):
        parent = seal(
            run_id=run_id,
            seq=seq,
            parent=parent.id,
            kind=EntryKind.COMMIT,
            time=now,
            body=_commit_body(seq),
        )
        entries.append(parent)
    record = RunRecord(
        run_id, "bench-appends", RunStatus.COMPLETED.value, now, now, {"task": "append bench"}, {}
    )
    return record, first, entries


async def _append_all(store: LedgerStore, run_id: str, entries: list[Entry], variant: str) -> None:
    if variant == "single_awaited":
        for entry in entries:
            await store.append(run_id, [entry], None)
    elif variant == "single_pipelined":
        in_flight: list[asyncio.Future[None]] = []
        for entry in entries:
            in_flight.append(asyncio.ensure_future(store.append(run_id, [entry], None)))
            if len(in_flight) == APPEND_PIPELINE:
                await asyncio.gather(*in_flight)
                in_flight.clear()
        await asyncio.gather(*in_flight)
    else:
        for start in range(0, len(entries), APPEND_BATCH):
            await store.append(run_id, entries[start : start + APPEND_BATCH], None)


async def _append_round(store: LedgerStore, total: int, variant: str) -> float:
    """Entries/s of `APPEND_RUNS` runs appending `total` entries between them."""
    runs = [_seal_run(total // APPEND_RUNS) for _ in range(APPEND_RUNS)]
    for record, first, _ in runs:
        await store.create_run(record, first)
    started = time.perf_counter()
    await asyncio.gather(
        *(_append_all(store, record.run_id, entries, variant) for record, _, entries in runs)
    )
    seconds = time.perf_counter() - started
    return sum(len(entries) for _, _, entries in runs) / seconds


async def _append_throughput(
    storages: dict[str, Storage], total: int
) -> dict[str, dict[str, list[float]]]:
    """Per backend and variant, entries/s of each round (backends alternated, their order
    reversed every round)."""
    samples: dict[str, dict[str, list[float]]] = {
        backend: {variant: [] for variant in APPEND_VARIANTS} for backend in storages
    }
    for storage in storages.values():
        await storage.open()
    try:
        order = list(storages)
        for _ in range(APPEND_ROUNDS):
            for variant in APPEND_VARIANTS:
                for backend in order:
                    rate = await _append_round(storages[backend].ledger, total, variant)
                    samples[backend][variant].append(rate)
            order.reverse()
    finally:
        for storage in storages.values():
            await storage.close()
    return samples


# -- 2. and 3. governance overhead and replay ---------------------------------------------


def _governance(
    entries: int, data_dir: Path, storages: Callable[[], dict[str, Storage]]
) -> dict[str, dict[str, Any]]:
    """Per backend, the mean of its passes of `_governance_and_replay` (taken in
    `GOVERNANCE_ORDER`), each pass's headline figures listed beside."""
    passes: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for number, backend in enumerate(GOVERNANCE_ORDER):
        folder = data_dir / f"governance-{number}-{backend}"
        folder.mkdir()
        found = asyncio.run(_governance_and_replay(entries, folder, storages()[backend]))
        figures = {new: found[old] for old, new in GOVERNANCE_KEYS.items()}
        passes[backend].append(figures)
        print(
            f"  governance pass {number + 1}/{len(GOVERNANCE_ORDER)}, {NAMES[backend]}: "
            f"{figures['overhead_us_per_intent_seq_100']} us per intent at seq ~100, "
            f"{figures['overhead_us_per_intent_seq_n']} us at seq ~{figures['ledger_entries']}, "
            f"replay {figures['replay_entries_per_s']} entries/s",
            flush=True,
        )
    merged: dict[str, dict[str, Any]] = {}
    for backend, taken in passes.items():
        mean: dict[str, Any] = {}
        for key in taken[0]:
            values = [figures[key] for figures in taken]
            average = statistics.fmean(values)
            exact = all(isinstance(value, int) for value in values)
            mean[key] = round(average) if exact else round(average, 2)
            if key in GOVERNANCE_PASSES_LISTED:
                mean[f"{key}_passes"] = values
        mean["overhead_late_over_early"] = round(
            mean["overhead_us_per_intent_seq_n"] / mean["overhead_us_per_intent_seq_100"], 3
        )
        merged[backend] = mean
    return merged


# -- 4. HTTP ------------------------------------------------------------------------------


def _http_comparison(
    runs: int, clients: int, data_dir: Path, db_url: str
) -> dict[str, list[tuple[int, float]]]:
    """Per setup, (runs, seconds) of each of its rounds, in `HTTP_ORDER`."""
    root_key = secrets.token_hex(32)
    done: dict[str, list[tuple[int, float]]] = {setup: [] for setup in HTTP_LABELS}
    for number, setup in enumerate(HTTP_ORDER):
        nodes: list[dict[str, str]] = []
        for node in range(int(setup.rsplit("_", 1)[1])):
            folder = data_dir / f"http-{number}-{setup}-{node}"
            (folder / "workspace").mkdir(parents=True)
            env = {
                "THYMOS_DATA_DIR": str(folder / "data"),
                "THYMOS_WORKSPACE": str(folder / "workspace"),
            }
            if setup.startswith("postgres"):
                env |= {
                    "THYMOS_POSTGRES_URL": db_url,
                    "THYMOS_ROOT_KEY": root_key,
                    "THYMOS_NODE_ID": f"bench-{number}-{node}",
                }
            nodes.append(env)
        seconds = _serve_and_drive(runs, clients, nodes, data_dir)
        done[setup].append((runs, seconds))
        print(
            f"  HTTP round {number + 1}/{len(HTTP_ORDER)}, {HTTP_LABELS[setup]}: "
            f"{runs / seconds:.1f} runs/s",
            flush=True,
        )
    return done


# -- the whole comparison -----------------------------------------------------------------


def _row(label: str, values: dict[str, Any], unit: str) -> None:
    cells = "".join(f"{values[backend]!s:>14}" for backend in BACKENDS)
    print(f"{label:<{LABEL}}{cells}  {unit}", flush=True)


def main(*, entries: int, runs: int, clients: int, postgres_url: str) -> None:
    """The comparison; a SIGTERM stops it as Ctrl-C does, so the database is still dropped and
    the servers stopped."""
    check_url(postgres_url)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _compare(entries=entries, runs=runs, clients=clients, postgres_url=postgres_url)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _compare(*, entries: int, runs: int, clients: int, postgres_url: str) -> None:
    append_total = max(APPEND_RUNS * APPEND_BATCH, entries // 10)
    append_total -= append_total % (APPEND_RUNS * APPEND_BATCH)
    figures: dict[str, Any] = {
        "append_runs": APPEND_RUNS,
        "append_rounds": APPEND_ROUNDS,
        "append_pipeline": APPEND_PIPELINE,
        "append_batch": APPEND_BATCH,
        "append_entries_per_round": append_total,
        "append_entry_bytes": round(statistics.mean(len(entry.raw) for entry in _seal_run(64)[2])),
        "sqlite_synchronous": "NORMAL",
    }
    with (
        tempfile.TemporaryDirectory(prefix="thymos-bench-backends-") as tmp,
        _fresh_database(postgres_url) as (db_url, settings),
    ):
        data_dir = Path(tmp)
        figures |= {f"postgres_{key}": value for key, value in settings.items()}
        print(
            f"PostgreSQL {settings['server_version']} at {_describe(db_url)} (a fresh database; "
            f"synchronous_commit={settings['synchronous_commit']}, fsync={settings['fsync']}); "
            f"SQLite in WAL mode, synchronous=NORMAL",
            flush=True,
        )
        print(f"{'':<{LABEL}}{'SQLite':>14}{'PostgreSQL':>14}", flush=True)

        def storages() -> dict[str, Storage]:
            """The two stores every in-process figure uses (one SQLite file, one PostgreSQL
            database), so each holds what the earlier figures wrote, as the other does."""
            return {
                "sqlite": sqlite_storage(data_dir / "bench.sqlite3"),
                "postgres": postgres_storage(db_url),
            }

        samples = asyncio.run(_append_throughput(storages(), append_total))
        for variant in APPEND_VARIANTS:
            medians: dict[str, Any] = {}
            for backend in BACKENDS:
                rounds = [round(rate) for rate in samples[backend][variant]]
                medians[backend] = round(statistics.median(rounds))
                figures[f"{backend}_append_{variant}_entries_per_s"] = medians[backend]
                figures[f"{backend}_append_{variant}_entries_per_s_rounds"] = rounds
            _row(f"append, {APPEND_LABELS[variant]}:", medians, "entries/s")

        governance = _governance(entries, data_dir, storages)
        for backend, found in governance.items():
            figures |= {f"{backend}_{key}": value for key, value in found.items()}

        def column(key: str) -> dict[str, Any]:
            return {backend: governance[backend][key] for backend in BACKENDS}

        lengths = column("ledger_entries")
        _row("entries in the long run:", lengths, "")
        _row(
            "governance overhead per intent, seq ~100:",
            column("overhead_us_per_intent_seq_100"),
            "us",
        )
        _row(
            "governance overhead per intent, seq ~N (the long run's end):",
            column("overhead_us_per_intent_seq_n"),
            "us",
        )
        _row("late / early ratio (flat = 1.0):", column("overhead_late_over_early"), "")
        _row("intents/s while filling the long run:", column("run_intents_per_s"), "intents/s")
        _row(
            "replay of the long run, every decision re-run:",
            column("replay_entries_per_s"),
            "entries/s",
        )
        _row(
            "chain-only verification of the long run:",
            column("chain_only_entries_per_s"),
            "entries/s",
        )
        _row("branch creation from the long run's last commit:", column("branch_creation_ms"), "ms")

        if runs > 0:
            print(
                f"end-to-end mock runs over HTTP ({clients} clients, {runs} runs a round):",
                flush=True,
            )
            http = _http_comparison(runs, clients, data_dir, db_url)
            figures |= {"http_runs_per_round": runs, "http_clients": clients}
            for setup, timed in http.items():
                total_runs = sum(count for count, _ in timed)
                total_seconds = sum(seconds for _, seconds in timed)
                figures[HTTP_KEYS[setup]] = round(total_runs / total_seconds, 1)
                figures[f"{HTTP_KEYS[setup]}_rounds"] = [
                    round(count / seconds, 1) for count, seconds in timed
                ]
            for setup in HTTP_LABELS:
                print(
                    f"end-to-end mock runs over HTTP, {HTTP_LABELS[setup] + ':':<24}"
                    f"{figures[HTTP_KEYS[setup]]:>10} runs/s",
                    flush=True,
                )
        print(json.dumps({"bench": "thymos-backends", **figures}, sort_keys=True))


__all__ = ["BenchSetupError", "check_url", "main"]
