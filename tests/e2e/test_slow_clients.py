"""Slow, greedy and vanishing clients affect only themselves (issue 6, findings 4 and 7).

Raw sockets against the real `thymos serve`: half-open connections by the thousand, oversized
headers, bodies that never finish, idle keep-alives, clients over their connection share, and
clients that disappear mid-body. The server answers everyone else throughout, closes what it
must with the documented status, and logs no error for any of it.

No assertion here is about elapsed time: each test waits for an event (an answer, a closed
socket) with a deadline that only catches a hang.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.e2e._authority import policy_dir, wait_pending
from tests.e2e._harness import ServerProcess, create_run, raw_exchange, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

DEADLINE_S = 90.0
"""Only a hang gets near this: every close below is due within a few seconds."""

PARTIAL_REQUEST = b"GET /health HTTP/1.1\r\nHo"
WAIT_POLICY = '@id("hold")\n@approval("ops")\npermit(principal, action, resource);\n'
"""Every tool call waits for an approval on channel ops: a run that calls one stays active."""


def _kv_run() -> dict[str, object]:
    return {
        "task": "wait",
        "tool_scopes": ["kv_set"],
        "cognition": {
            "script": [{"tool": "kv_set", "args": {"key": "k", "value": 1}}, {"final": "ok"}]
        },
    }


def _events_request(run_id: str) -> bytes:
    return f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server from a chosen loopback address (all of 127/8 is local)."""
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


@contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _read_until_closed(socks: list[socket.socket], deadline_s: float) -> list[bytes]:
    """Everything each socket receives until the server closes it; fails on a hang."""
    received = {sock.fileno(): b"" for sock in socks}
    selector = selectors.DefaultSelector()
    for each in socks:
        each.setblocking(False)
        selector.register(each, selectors.EVENT_READ, data=each)
    open_count = len(socks)
    deadline = time.monotonic() + deadline_s
    while open_count:
        assert time.monotonic() < deadline, f"{open_count} connections were never closed"
        for key, _ in selector.select(timeout=1.0):
            sock: socket.socket = key.data
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[sock.fileno()] += chunk
                continue
            selector.unregister(sock)
            open_count -= 1
    selector.close()
    return [received[sock.fileno()] for sock in socks]


def _code(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]["code"]


def test_a_thousand_half_open_connections_do_not_stop_the_server(
    server_factory: ServerFactory,
) -> None:
    """A thousand connections from four client addresses each send half a request line and
    stop. The server keeps answering others (a request sent in two parts on one of the held
    connections is answered too), then closes every half-open connection with 408
    request_timeout once THYMOS_HEADER_TIMEOUT_S passes."""
    server = server_factory({"THYMOS_HEADER_TIMEOUT_S": "10"})
    with _sockets() as idle:
        for index in range(1000):
            sock = _connect(server.port, f"127.0.0.{2 + index % 4}")
            sock.sendall(PARTIAL_REQUEST)
            idle.append(sock)
        client = server.client()
        assert client.get("/health").status_code == 200
        assert client.post("/runs", json={"task": "still serving"}).status_code == 202
        # One more slow client finishes its request after the checks above: it was held, not
        # dropped, so half-open connections are kept (up to the timeout), not refused.
        finishing = _connect(server.port, "127.0.0.6")
        finishing.sendall(PARTIAL_REQUEST)
        assert client.get("/ready").status_code == 200
        finishing.sendall(b"st: localhost\r\nConnection: close\r\n\r\n")
        answer = _read_until_closed([finishing], DEADLINE_S)[0]
        finishing.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        answers = _read_until_closed(idle, DEADLINE_S)
    assert {_code(a) for a in answers} == {(408, "request_timeout")}
    assert server.client().get("/health").status_code == 200


def test_connections_are_capped_per_client_and_in_all(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """One client holding its share of connections gets 429 too_many_connections (and a closed
    socket) for more, while other clients are served, and closing frees the share. At the
    server's total, the connection idle the longest is dropped to make room for a new one; only
    when every connection is busy (here: streaming events) is a new one refused."""
    per_client = 20
    server = server_factory(
        {"THYMOS_CONNECTIONS_PER_CLIENT_MAX": str(per_client), "THYMOS_HEADER_TIMEOUT_S": "300"}
    )
    with _sockets() as held:
        for _ in range(per_client):
            held.append(_connect(server.port, "127.0.0.9"))
        # The server counts a connection once it has accepted it: wait until it holds them all.
        extra = wait_for(
            lambda: _refused_connection(server, "127.0.0.9"), timeout_s=30, what="the cap"
        )
        assert _code(extra) == (429, "too_many_connections")
        assert server.client().get("/health").status_code == 200
    wait_for(
        lambda: True if _served_from(server, "127.0.0.9") else None,
        timeout_s=30,
        what="the closed connections to be released",
    )

    total = server_factory(
        {
            "THYMOS_CONNECTIONS_MAX": "8",
            "THYMOS_HEADER_TIMEOUT_S": "300",
            "THYMOS_POLICY_DIR": str(policy_dir(tmp_path, hold=WAIT_POLICY)),
        }
    )
    with _sockets() as idle:
        for index in range(8):
            sock = _connect(total.port, f"127.0.0.{20 + index}")
            sock.sendall(PARTIAL_REQUEST if index % 2 else b"")
            idle.append(sock)
        # Every slot is taken by an idle connection: a new client is served, and the oldest
        # idle connection is the one dropped for it.
        assert _served_from(total, "127.0.0.30")
        assert _read_until_closed(idle[:1], DEADLINE_S) == [b""]
    # Eight busy connections (event streams of a run waiting for approval): nothing to drop.
    client = total.client()
    run_id = create_run(client, _kv_run())
    wait_pending(client, run_id)
    client.close()
    with _sockets() as busy:
        for index in range(8):
            sock = _connect(total.port, f"127.0.0.{40 + index}")
            sock.sendall(_events_request(run_id))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 "), "a stream started"
            busy.append(sock)
        extra = wait_for(
            lambda: _refused_connection(total, "127.0.0.50"), timeout_s=30, what="the total cap"
        )
        assert _code(extra) == (429, "too_many_connections")
    wait_for(
        lambda: True if _served_from(total, "127.0.0.1") else None,
        timeout_s=30,
        what="the closed connections to be released",
    )


def _refused_connection(server: ServerProcess, source: str) -> bytes | None:
    """The answer to a new connection that sends nothing: the 429 refusal, or None if the
    server held it (it is closed again at once)."""
    sock = _connect(server.port, source)
    sock.settimeout(1.0)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return None
    finally:
        sock.close()
    return data or None


def _served_from(server: ServerProcess, source: str) -> bool:
    sock = _connect(server.port, source)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = _read_until_closed([sock], DEADLINE_S)[0]
    finally:
        sock.close()
    return answer.startswith(b"HTTP/1.1 200 ")


def test_oversized_headers_are_refused_before_they_are_read(server: ServerProcess) -> None:
    """A request line and headers past 64 KiB, or more than 100 header lines, are 431
    headers_too_large; four clients each pushing a 60 MB header are cut off long before they
    finish, while /health keeps answering."""
    big = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    status, body = raw_exchange(server.port, big)
    assert (status, json.loads(body)["error"]["code"]) == (431, "headers_too_large")
    many = b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 150 + b"\r\n"
    status, body = raw_exchange(server.port, many)
    assert (status, json.loads(body)["error"]["code"]) == (431, "headers_too_large")
    url = b"GET /health?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert raw_exchange(server.port, url)[0] == 431

    header_mib = 60
    sent: list[int] = []

    def push() -> None:
        sock = _connect(server.port)
        total = 0
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Huge: ")
            chunk = b"a" * (1024 * 1024)
            for _ in range(header_mib):
                sock.sendall(chunk)
                total += len(chunk)
        except OSError:
            pass  # cut off: what the server should do
        finally:
            sent.append(total)
            sock.close()

    pushers = [threading.Thread(target=push) for _ in range(4)]
    for thread in pushers:
        thread.start()
    client = server.client()
    assert client.get("/health").status_code == 200
    for thread in pushers:
        thread.join(DEADLINE_S)
        assert not thread.is_alive(), "a 60 MB header was read to its end"
    assert len(sent) == 4
    assert all(total < header_mib * 1024 * 1024 for total in sent), sent
    assert client.get("/health").status_code == 200


def test_slow_bodies_and_idle_connections_are_closed(server_factory: ServerFactory) -> None:
    """A body that stops arriving is answered 408 request_timeout after THYMOS_BODY_TIMEOUT_S
    and creates nothing; a kept-alive connection left idle is closed after
    THYMOS_IDLE_TIMEOUT_S."""
    server = server_factory({"THYMOS_BODY_TIMEOUT_S": "2", "THYMOS_IDLE_TIMEOUT_S": "1"})
    slow = _connect(server.port)
    slow.sendall(
        b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"task": "slow'
    )
    answer = _read_until_closed([slow], DEADLINE_S)[0]
    slow.close()
    assert _code(answer) == (408, "request_timeout")
    idle = _connect(server.port)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = _read_until_closed([idle], DEADLINE_S)[0]
    idle.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"connection: close" not in answer.lower(), "the server closed it as idle, not at once"
    client = server.client()
    assert client.get("/runs").json()["runs"] == []


def test_garbage_and_vanishing_clients_log_no_error(server: ServerProcess) -> None:
    """Two hundred clients that send half a body and hang up, and requests that are not HTTP,
    get the one error envelope (where anyone is left to read it) and leave no ERROR and no
    traceback in the server's log."""
    body_start = b'{"task": "' + b"x" * 100
    for _ in range(200):
        sock = _connect(server.port)
        sock.sendall(
            b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + body_start
        )
        sock.close()
    status, body = raw_exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert (status, json.loads(body)["error"]["code"]) == (400, "malformed_request")
    client = server.client()
    assert client.get("/health").status_code == 200
    assert client.get("/runs").json()["runs"] == []
    with httpx.Client(base_url=server.base_url) as check:
        assert check.get("/ready").status_code == 200
    log = server.log_tail(1_000_000)
    assert " ERROR " not in log and "Traceback" not in log, log[-4000:]


TRAILER_LINES = 16_000


def test_trailers_and_bodies_are_bounded_where_they_arrive(server: ServerProcess) -> None:
    """Chunked trailers count as header lines (past 100: 431), and the bytes after the headers
    are bounded whether or not the route reads them (past 1 MiB + 64 KiB: 413), so no request
    can grow the server's memory without bound."""
    # POST /runs reads its whole body (trailers end it), so the refusal is what answers.
    start = b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    chunked = start + b"Transfer-Encoding: chunked\r\n\r\n0\r\n"
    status, body = raw_exchange(server.port, chunked + b"a: b\r\n" * 150 + b"\r\n")
    assert (status, json.loads(body)["error"]["code"]) == (431, "headers_too_large")
    sock = _connect(server.port)
    sent = 0
    try:
        sock.sendall(chunked)
        line = b"a" * 1000 + b": b\r\n"
        for _ in range(TRAILER_LINES):  # 16 MB: far past the bound and any socket buffers
            sock.sendall(line)
            sent += len(line)
    except OSError:
        pass  # cut off
    answer = _read_until_closed([sock], DEADLINE_S)[0]
    sock.close()
    assert _code(answer) == (431, "headers_too_large"), answer[:300]
    assert sent < TRAILER_LINES * 1006, "the server stopped reading long before the end"
    big = start + b"Content-Length: 3000000\r\n\r\n" + b"x" * 3_000_000
    sock = _connect(server.port)
    with suppress(OSError):
        sock.sendall(big)
    answer = _read_until_closed([sock], DEADLINE_S)[0]
    sock.close()
    assert _code(answer) == (413, "body_too_large")
    assert server.client().get("/health").status_code == 200


def test_pipelined_and_upgrade_requests_are_not_served(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A request sent before the previous response ended is not served: the connection closes
    after the current response, even a long event stream, with nothing written into it and no
    error logged. An Upgrade is never performed; a request asking for one with a body is refused
    (its body would otherwise be read as a second request)."""
    server = server_factory(
        {
            "THYMOS_POLICY_DIR": str(policy_dir(tmp_path, hold=WAIT_POLICY)),
            "THYMOS_BODY_TIMEOUT_S": "1",
        }
    )
    get = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    sock = _connect(server.port)
    sock.sendall(get + get)
    answer = _read_until_closed([sock], DEADLINE_S)[0]
    sock.close()
    assert answer.count(b"HTTP/1.1 ") == 1, answer

    client = server.client()
    run_id = create_run(client, _kv_run())
    wait_pending(client, run_id)
    stream = _connect(server.port)
    stream.sendall(_events_request(run_id))
    assert stream.recv(65536).startswith(b"HTTP/1.1 200 ")
    # A POST pipelined behind the stream: never read, never timed out into the stream.
    stream.sendall(
        b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    denied = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": False})
    assert denied.status_code == 200, denied.text
    wait_terminal(client, run_id)
    rest = _read_until_closed([stream], DEADLINE_S)[0]
    stream.close()
    assert b"event: run_ended" in rest
    assert b"HTTP/1.1" not in rest, "nothing but the stream was written"
    assert len(client.get("/runs").json()["runs"]) == 1

    smuggled = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    upgrade_with_body = (
        b"POST /runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: Upgrade\r\nUpgrade: x\r\n"
        + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
        + smuggled
    )
    sock = _connect(server.port)
    sock.sendall(upgrade_with_body)
    answer = _read_until_closed([sock], DEADLINE_S)[0]
    sock.close()
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert _code(answer) == (400, "malformed_request")
    sock = _connect(server.port)
    sock.sendall(
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    answer = _read_until_closed([sock], DEADLINE_S)[0]
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1, answer
    log = server.log_tail(1_000_000)
    assert " ERROR " not in log and "Traceback" not in log, log[-4000:]


def _big_ledger(server: ServerProcess, *, reads: int) -> tuple[str, int]:
    """A finished run whose ledger export is large (each read commits about 160 KB); returns
    its id and the export's size."""
    (server.workspace / "big.txt").write_text(("x" * 99 + "\n") * 2600)
    with server.client() as client:
        run_id = create_run(
            client,
            {
                "task": "read a lot",
                "tool_scopes": ["fs_read"],
                "cognition": {
                    "script": [
                        {"intents": [{"tool": "fs_read", "args": {"path": "big.txt"}}] * reads},
                        {"final": "done"},
                    ]
                },
            },
        )
        wait_terminal(client, run_id)
        return run_id, len(client.get(f"/runs/{run_id}/ledger").content)


def _slow_reader(server: ServerProcess, source: str, path: str) -> socket.socket:
    """A connection from `source` with the smallest receive buffer, that has asked for `path`
    and has read nothing yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    return sock


def test_a_client_that_stops_reading_is_disconnected(server_factory: ServerFactory) -> None:
    """A client that asks for a ledger export of over 12 MB and never reads it holds its
    connection (and its share) only until THYMOS_SEND_TIMEOUT_S: then the server drops it, and
    the client, when it finally reads, gets part of the export and the end of the connection."""
    server = server_factory(
        {"THYMOS_SEND_TIMEOUT_S": "2", "THYMOS_CONNECTIONS_PER_CLIENT_MAX": "1"}
    )
    run_id, size = _big_ledger(server, reads=80)
    assert size > 12_000_000
    slow = _slow_reader(server, "127.0.0.40", f"/runs/{run_id}/ledger")
    # The client's share (one connection) is free again once the server has dropped it.
    wait_for(
        lambda: True if _served_from(server, "127.0.0.40") else None,
        timeout_s=DEADLINE_S,
        what="the stalled connection to be dropped",
    )
    received = b""
    slow.settimeout(30)
    try:
        while chunk := slow.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass
    slow.close()
    assert 0 < len(received) < size


def test_making_room_never_drops_a_response_still_being_sent(server_factory: ServerFactory) -> None:
    """At the total, a connection whose response is still being delivered (its client reads
    slowly: here, not yet) is not idle: an idle connection is dropped instead, and the download
    then completes in full."""
    server = server_factory({"THYMOS_CONNECTIONS_MAX": "2", "THYMOS_SEND_TIMEOUT_S": "300"})
    run_id, size = _big_ledger(server, reads=40)
    download = _slow_reader(server, "127.0.0.60", f"/runs/{run_id}/ledger")
    first = download.recv(100)
    assert first.startswith(b"HTTP/1.1 200 "), "the download is under way"
    with _sockets() as idle:
        # The total is two: the download and the idle connection; a newcomer needs room.
        idle.append(_connect(server.port, "127.0.0.61"))
        assert _served_from(server, "127.0.0.62")
        assert _read_until_closed(idle, DEADLINE_S) == [b""], "the idle one made room"
    received = first + _read_until_closed([download], DEADLINE_S)[0]
    download.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) >= size, (len(body), size)
