"""Black-box harness: start the real `thymos serve` process, talk to it over HTTP, read its SSE.

Nothing here imports Thymos: the server is a subprocess on a free loopback port with its own
data dir and workspace, and every fact a test checks comes over the wire (or, for tampering,
straight from the SQLite file while the server is stopped).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

THYMOS_BIN = Path(sys.executable).with_name("thymos")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TERMINAL = frozenset({"completed", "failed", "cancelled"})
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
ERROR_KEYS = frozenset({"code", "message", "details"})


def alive_with(marker: str) -> list[int]:
    """Processes on this machine whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(name))
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> T:
    """Poll `probe` until it returns something other than None, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class ServerProcess:
    """One `thymos serve` process (restartable on the same data dir)."""

    data_dir: Path
    workspace: Path
    log_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    starts: int = 0
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.starts}.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None, "the server is already running"
        for _attempt in range(3):
            self.starts += 1
            self.port = free_port()
            env = dict(os.environ)
            env.update(
                {
                    "THYMOS_DATA_DIR": str(self.data_dir),
                    "THYMOS_WORKSPACE": str(self.workspace),
                    "THYMOS_LOG_LEVEL": "info",
                }
            )
            env.pop("THYMOS_ADDR", None)
            env.pop("THYMOS_POSTGRES_URL", None)
            env.pop("THYMOS_DEFAULT_PROVIDER", None)
            # A model key in the developer's environment must not turn the mock runs of the
            # tests into calls to a vendor: tests that want a provider name its variables.
            for name in [n for n in env if n.endswith(("_API_KEY", "_BASE_URL"))]:
                env.pop(name)
            env.update(self.env_extra)
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [str(THYMOS_BIN), "serve", "--addr", f"127.0.0.1:{self.port}"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            # The port was taken between choosing and binding (another worker): try another.
            self.proc = None
        raise AssertionError(f"the server did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if probe.get(f"{self.base_url}/ready").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.03)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(f"the server was not ready in {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def signal_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the server did not exit within {timeout_s}s of SIGTERM:\n{self.log_tail()}"
            ) from None
        self.proc = None
        self._close_clients()
        return code

    def stop(self) -> None:
        """SIGTERM and require a clean exit (code 0)."""
        self.signal_stop()
        code = self.wait_exit()
        assert code == 0, f"the server exited {code} after SIGTERM:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to record anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self._close_clients()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None

    # -- clients -----------------------------------------------------------------------------

    def client(self, timeout: httpx.Timeout = HTTP_TIMEOUT) -> httpx.Client:
        """A client on this server whose every response status is recorded (5xx hunting)."""

        def record(response: httpx.Response) -> None:
            request = response.request
            self.statuses.append((request.method, request.url.path, response.status_code))

        client = httpx.Client(
            base_url=self.base_url, timeout=timeout, event_hooks={"response": [record]}
        )
        self._clients.append(client)
        return client

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def server_errors(self) -> list[tuple[str, str, int]]:
        """Every 5xx answered so far except 503 (shutting down / not ready)."""
        return [s for s in self.statuses if s[2] >= 500 and s[2] != 503]


# -- raw HTTP --------------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes, *, timeout_s: float = 15.0) -> tuple[int, bytes]:
    """Send `request` as is on a new connection and read one response (by its Content-Length,
    or until the server closes); returns (status, body). For what HTTP clients refuse to send
    (repeated Host headers, bare garbage)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while length is None or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


# -- SSE -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    """One SSE message: an event (`event`/`id`/`data`) or a comment line (`comment`)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None, "a comment has no data"
        return json.loads(self.data)


def iter_sse(response: httpx.Response) -> Iterator[Sse]:
    """Parse a text/event-stream body line by line, yielding events and comments as they come."""
    event_id: str | None = None
    event: str | None = None
    data: list[str] = []
    fields = False
    for line in response.iter_lines():
        if line == "":
            if fields:
                yield Sse(id=event_id, event=event, data="\n".join(data))
            event_id, event, data, fields = None, None, [], False
            continue
        if line.startswith(":"):
            yield Sse(comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields = True
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if fields:
        yield Sse(id=event_id, event=event, data="\n".join(data))


def read_events(
    client: httpx.Client,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    limit: int | None = None,
) -> list[Sse]:
    """Read the stream's events (comments dropped) until it ends by itself, or `limit` of them."""
    out: list[Sse] = []
    with client.stream("GET", path, headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in iter_sse(response):
            if message.comment is not None:
                continue
            out.append(message)
            if limit is not None and len(out) >= limit:
                break
    return out


# -- runs ------------------------------------------------------------------------------------


def create_run(client: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    response = client.post("/runs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "running"
    run_id: str = created["run_id"]
    return run_id


def wait_terminal(client: httpx.Client, run_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        response = client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record if record["status"] in TERMINAL else None

    return wait_for(probe, timeout_s=timeout_s, what=f"run {run_id} to end")


def wait_head(client: httpx.Client, run_id: str, at_least: int, timeout_s: float = 15.0) -> int:
    def probe() -> int | None:
        response = client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        head: int = response.json()["summary"]["head_seq"]
        return head if head >= at_least else None

    return wait_for(probe, timeout_s=timeout_s, what=f"run {run_id} to reach seq {at_least}")


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with exactly the documented error envelope; returns `error`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert {"code", "message"} <= set(error) <= ERROR_KEYS, error
    assert isinstance(error["code"], str)
    assert error["code"].replace("_", "").isalpha()
    assert error["code"] == error["code"].lower()
    assert isinstance(error["message"], str)
    assert error["message"]
    if "details" in error:
        assert isinstance(error["details"], dict), error
    if code is not None:
        assert error["code"] == code, error
    return error


def ledger_lines(client: httpx.Client, run_id: str, **params: Any) -> list[bytes]:
    response = client.get(f"/runs/{run_id}/ledger", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = response.content
    if not body:
        return []
    assert body.endswith(b"\n")
    return body[:-1].split(b"\n")
