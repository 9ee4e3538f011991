"""The HTTP edge's pure pieces: reading Host headers, which hosts are served, which bodies count
as JSON, and reading a body with one meaning."""

from __future__ import annotations

from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from thymos.api import limited_protocol, parse_json
from thymos.api._connections import ConnectionLimits, ConnectionTable, Evictable, client_key
from thymos.api._guard import GuardPolicy, _media_type_is_json, split_host
from thymos.core import ThymosError


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LOCALHOST:3001", "localhost"),
        ("127.0.0.1:3001", "127.0.0.1"),
        ("[::1]:3001", "::1"),
        ("[::1]", "::1"),
        ("example.com.", "example.com."),
        ("a:b:c", None),
        ("evil.com@127.0.0.1", None),
        ("127.0.0.1:99999999", None),
        ("[::1", None),
        ("", None),
        (":80", None),
        ("a b", None),
    ],
)
def test_host_headers_are_read_strictly(header: str, host: str | None) -> None:
    """A Host header names a host (and maybe a port) and nothing else; anything odd is no host."""
    assert split_host(header) == host


def test_loopback_the_bound_address_and_listed_names_are_served() -> None:
    """By default only loopback names and addresses (and the specific bound address) are served;
    THYMOS_ALLOWED_HOSTS adds exact names, `*.domain` subdomains, or `*`."""
    policy = GuardPolicy.build(bind_host="127.0.0.1", allowed_hosts=(), cors_origins=())
    for host in ("localhost", "127.0.0.1", "127.8.9.10", "::1", "app.localhost"):
        assert policy.host_allowed(host), host
    for host in ("example.com", "10.0.0.1", "localhost.evil.com", "0.0.0.0"):
        assert not policy.host_allowed(host), host
    bound = GuardPolicy.build(bind_host="10.0.0.5", allowed_hosts=(), cors_origins=())
    assert bound.host_allowed("10.0.0.5")
    wildcard = GuardPolicy.build(bind_host="0.0.0.0", allowed_hosts=(), cors_origins=())
    assert not wildcard.host_allowed("0.0.0.0")
    listed = GuardPolicy.build(
        bind_host="0.0.0.0", allowed_hosts=("api.example.com", "*.corp.example"), cors_origins=()
    )
    assert listed.host_allowed("api.example.com")
    assert listed.host_allowed("x.corp.example")
    assert not listed.host_allowed("corp.example")
    anything = GuardPolicy.build(bind_host="127.0.0.1", allowed_hosts=("*",), cors_origins=())
    assert anything.host_allowed("whatever.example")


@pytest.mark.parametrize(
    ("value", "json"),
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json; charset=utf-8", True),
        ('application/json;charset="UTF-8"', True),
        ("application/json; charset=latin-1", False),
        ("application/json; boundary=x", False),
        ("text/plain", False),
        ("application/jsonp", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
)
def test_only_json_in_utf8_is_a_json_body(value: str, json: bool) -> None:
    """The media type is application/json, with at most a UTF-8 charset."""
    assert _media_type_is_json(value) is json


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"a": 1, "a": 1}', "duplicate_key"),
        (b'{"a": {"b": [{"c": 1, "c": 2}]}}', "duplicate_key"),
        (b'{"a": 9007199254740992}', "number_out_of_range"),
        (b'{"a": [-9007199254740992]}', "number_out_of_range"),
        (b'{"a": 1e16}', "number_out_of_range"),
        (b'{"a": 123456789012345678901234567890}', "number_out_of_range"),
        (b'{"a": [1e400]}', "number_out_of_range"),
        (b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", "json_too_deep"),
        (b"[" * 2000 + b"]" * 2000, "json_too_deep"),
        (b'{"a": NaN}', "malformed_json"),
        (b'{"a": "\\ud800"}', "malformed_json"),
        (b'{"a": 1,}', "malformed_json"),
    ],
)
def test_ambiguous_or_unstorable_json_is_refused(raw: bytes, code: str) -> None:
    """Repeated keys, integers past 2^53 (or floats that would read back as such), nesting past
    64 levels and anything JSON forbids are refused with their codes."""
    with pytest.raises(ThymosError) as caught:
        parse_json(raw)
    assert caught.value.code.value == code


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 9007199254740991}', {"a": 9007199254740991}),
        (b'{"a": 5.0, "b": [1e2, -0.0]}', {"a": 5, "b": [100, 0]}),
        (b'{"a": 0.5, "b": 1e300}', {"a": 0.5, "b": 1e300}),
        (b'{"a": {"a": 1}, "b": {"a": 1}}', {"a": {"a": 1}, "b": {"a": 1}}),
        (b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}", None),
    ],
)
def test_json_with_one_meaning_is_read_as_it_means(raw: bytes, value: Any) -> None:
    """Safe integers stay integers, integral floats are the integers they equal, other floats
    stay floats, the same key in different objects is fine, and 64 levels are allowed."""
    parsed = parse_json(raw)
    if value is not None:
        assert parsed == value
        assert all(type(parsed[k]) is type(value[k]) for k in value)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_network(address: str, key: str) -> None:
    """One host can hold a whole IPv6 /64, so the per-client share is counted per /64."""
    assert client_key(address) == key


class _Connection(Evictable):
    def __init__(self, table: ConnectionTable, client: str, *, sending: bool = False) -> None:
        self.table, self.client, self.evicted, self.sending = table, client, False, sending

    def evictable(self) -> bool:
        return not self.sending

    def evict(self) -> None:
        self.evicted = True
        self.table.idle.pop(self, None)
        self.table.release(self.client)


def test_the_table_makes_room_from_idle_connections_only() -> None:
    """Per client the share is a hard limit; at the total the connection idle the longest is
    evicted for a newcomer (skipping one still sending its last response), and a newcomer is
    refused only when none can go."""
    limits = ConnectionLimits(1.0, 1.0, 1.0, connections_max=3, connections_per_client_max=2)
    table = ConnectionTable()
    sending = _Connection(table, "a", sending=True)
    first, second = _Connection(table, "a"), _Connection(table, "b")
    assert table.admit("a", limits) and table.admit("a", limits)
    assert not table.admit("a", limits), "the per-client share"
    assert table.admit("b", limits)
    assert not table.admit("c", limits), "nothing idle: refused"
    table.idle[sending] = None
    assert not table.admit("c", limits), "still sending: not idle enough to drop"
    table.idle[first] = None
    table.idle[second] = None
    assert table.admit("c", limits)
    assert (sending.evicted, first.evicted, second.evicted) == (False, True, False)
    assert (table.total, dict(table.by_client)) == (3, {"a": 1, "b": 1, "c": 1})


class _Timer:
    def __init__(self, callback: Any) -> None:
        self.callback, self.cancelled = callback, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """A loop whose timers fire only when the test says so."""

    def __init__(self) -> None:
        self.timers: list[_Timer] = []

    def call_later(self, _delay: float, callback: Any) -> _Timer:
        timer = _Timer(callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        pending = [t for t in self.timers if not t.cancelled]
        self.timers = []
        for timer in pending:
            timer.callback()


class _Transport:
    def __init__(self) -> None:
        self.buffered, self.closing, self.aborted, self.written = 0, False, False, b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("203.0.113.9", 5000), "sockname": ("127.0.0.1", 3001)}.get(
            name, default
        )

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _protocol() -> tuple[Any, _Loop, _Transport]:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    limits = ConnectionLimits(10.0, 10.0, 5.0, connections_max=10, connections_per_client_max=10)
    config = Config(app=app, lifespan="off", http=limited_protocol(limits))
    config.load()
    loop, transport = _Loop(), _Transport()
    make: Any = config.http_protocol_class
    protocol = make(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    protocol.connection_made(transport)
    loop.timers = []  # the header deadline is not what these tests are about
    return protocol, loop, transport


def test_the_send_deadline_spares_a_reader_that_makes_progress() -> None:
    """While sending is paused, each send deadline checks what is left: less than at the last
    check (the client read something, however slowly) restarts it; the same amount (it read
    nothing) drops the connection."""
    protocol, loop, transport = _protocol()
    transport.buffered = 4_000_000
    protocol.pause_writing()
    for left in (3_000_000, 2_000_000, 1_000):
        transport.buffered = left
        loop.fire()
        assert not transport.aborted, left
    loop.fire()  # nothing read since the last check
    assert transport.aborted


def test_a_closing_connection_is_watched_until_its_buffer_is_sent() -> None:
    """A connection closed with data still unsent (which would wait for ever for a client that
    stopped reading) is dropped once nothing more is read, even if sending resumed first."""
    protocol, loop, transport = _protocol()
    transport.buffered = 200_000
    protocol.pause_writing()
    transport.closing = True
    transport.buffered = 8_000
    protocol.resume_writing()  # drained below the low-water mark, but not empty
    loop.fire()
    assert not transport.aborted, "progress since the pause"
    loop.fire()
    assert transport.aborted


def test_resumed_sending_ends_the_watch() -> None:
    """Once the buffer drains on an open connection, the watch ends: nothing fires later."""
    protocol, loop, transport = _protocol()
    transport.buffered = 200_000
    protocol.pause_writing()
    transport.buffered = 0
    protocol.resume_writing()
    loop.fire()
    assert not transport.aborted
    assert loop.timers == []
