"""The HTTP edge's pure pieces: reading Host headers, which hosts are served, which bodies count
as JSON, and reading a body with one meaning."""

from __future__ import annotations

from typing import Any

import pytest

from thymos.api import parse_json
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
