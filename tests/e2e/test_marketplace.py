"""The package registry over real HTTP: trusting publishers, publishing, listing and reading.

One keyed server per module. Packages are signed with `thymos.marketplace.sign`, as a
publisher's own tool would sign them; everything else is plain HTTP. Each refusal has its own
code: a bad name, a version that is not SemVer, a version already published (build metadata
aside), content failing its kind's schema, a wrong content hash, a bad signature, a key no
admin trusted; versions are ordered by SemVer precedence, not as text; scoped names work in the
path; only an admin trusts publishers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key
from tests.e2e._harness import ServerProcess, assert_error
from tests.e2e._postgres import fresh_database
from tests.e2e.conftest import ServerFactory
from thymos.marketplace import public_key_of, publish_body, sign

pytestmark = pytest.mark.blackbox

SKILL = {"instructions": "Read before you write.", "tool_scopes": ["fs_read", "grep"]}


@pytest.fixture(scope="module")
def registry(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV})


def _private() -> str:
    return secrets.token_hex(32)


def _trust(admin: httpx.Client, name: str, private: str) -> dict[str, Any]:
    response = admin.post(
        "/marketplace/publishers", json={"name": name, "public_key": public_key_of(private)}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _signed(private: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"kind": "skill", "content": SKILL, **fields}
    return sign(publish_body(**base), private)


@pytest.fixture(scope="module")
def publisher(registry: ServerProcess) -> str:
    """The private key of a publisher an admin trusted."""
    private = _private()
    trusted = _trust(as_key(registry, "a-admin"), "acme", private)
    assert trusted["name"] == "acme"
    assert trusted["public_key"] == public_key_of(private)
    return private


def test_a_trusted_publishers_package_publishes_and_reads_back(
    registry: ServerProcess, publisher: str
) -> None:
    operator = as_key(registry, "a1")
    body = _signed(publisher, name="read-first", version="1.0.0", description="A habit.")
    response = operator.post("/marketplace/packages", json=body)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert {k: stored[k] for k in body} == body
    assert stored["published_at"]
    got = as_key(registry, "a-viewer").get("/marketplace/packages/read-first")
    assert got.status_code == 200, got.text
    assert got.json()["version"] == "1.0.0"
    assert [v["version"] for v in got.json()["versions"]] == ["1.0.0"]
    assert {k: got.json()["versions"][0][k] for k in body} == body


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"name": "Bad_Name"}, "invalid_package_name", "name"),
        ({"version": "1.0"}, "invalid_version", "version"),
        ({"version": "v1.0.0"}, "invalid_version", "version"),
        ({"content": {"instructions": "x"}}, "invalid_package_content", "content.tool_scopes"),
        ({"kind": "policy", "content": {"cedar": "permit("}}, "invalid_package_content", None),
        ({"kind": "widget"}, "invalid_package_kind", "kind"),
    ],
)
def test_each_invalid_package_is_refused_with_its_code(
    registry: ServerProcess,
    publisher: str,
    fields: dict[str, Any],
    code: str,
    field: str | None,
) -> None:
    body = _signed(publisher, **{"name": "refused", "version": "1.0.0", **fields})
    error = assert_error(as_key(registry, "a1").post("/marketplace/packages", json=body), 422, code)
    if field is not None:
        assert error["details"]["field"] == field


def test_a_wrong_hash_a_bad_signature_and_an_untrusted_key_are_refused(
    registry: ServerProcess, publisher: str
) -> None:
    operator = as_key(registry, "a1")
    # The content changed after hashing (and signing): the hash no longer matches.
    tampered = _signed(publisher, name="tampered", version="1.0.0")
    tampered["content"] = {**SKILL, "instructions": "Write first."}
    error = assert_error(
        operator.post("/marketplace/packages", json=tampered), 422, "content_hash_mismatch"
    )
    assert error["details"]["field"] == "content_hash"
    # A field changed after signing: the signature no longer covers the body.
    resigned = _signed(publisher, name="resigned", version="1.0.0")
    resigned["description"] = "added after signing"
    assert_error(operator.post("/marketplace/packages", json=resigned), 422, "invalid_signature")
    malformed = {**_signed(publisher, name="malformed", version="1.0.0"), "signature": "00"}
    assert_error(operator.post("/marketplace/packages", json=malformed), 422, "invalid_signature")
    # Well signed, but by a key no admin trusted.
    stranger = _signed(_private(), name="stranger", version="1.0.0")
    error = assert_error(
        operator.post("/marketplace/packages", json=stranger), 403, "publisher_not_trusted"
    )
    assert error["details"]["field"] == "publisher_key"
    assert_error(operator.get("/marketplace/packages/stranger"), 404, "package_not_found")
    # Unknown and missing fields are the body's own refusal.
    extra = {**_signed(publisher, name="extra", version="1.0.0"), "homepage": "x"}
    assert_error(operator.post("/marketplace/packages", json=extra), 422, "invalid_publish_body")


def test_a_published_version_cannot_be_published_again(
    registry: ServerProcess, publisher: str
) -> None:
    operator = as_key(registry, "a1")
    first = _signed(publisher, name="once-only", version="2.0.0+build.1")
    assert operator.post("/marketplace/packages", json=first).status_code == 201
    again = _signed(publisher, name="once-only", version="2.0.0+build.1", description="again")
    error = assert_error(
        operator.post("/marketplace/packages", json=again), 409, "package_version_exists"
    )
    assert error["details"]["version"] == "2.0.0+build.1"
    # Equal but for build metadata is the same version (SemVer precedence).
    other_build = _signed(publisher, name="once-only", version="2.0.0")
    assert_error(
        operator.post("/marketplace/packages", json=other_build), 409, "package_version_exists"
    )
    versions = operator.get("/marketplace/packages/once-only").json()["versions"]
    assert [v["version"] for v in versions] == ["2.0.0+build.1"]


def test_versions_are_ordered_by_semver_and_scoped_names_work(
    registry: ServerProcess, publisher: str
) -> None:
    operator = as_key(registry, "a1")
    name = "@acme/ordered"
    for version in ("1.9.0", "1.10.0", "1.10.1-rc.1", "1.2.0", "1.10.0-beta"):
        response = operator.post(
            "/marketplace/packages", json=_signed(publisher, name=name, version=version)
        )
        assert response.status_code == 201, response.text
    got = as_key(registry, "a-viewer").get(f"/marketplace/packages/{name}")
    assert got.status_code == 200, got.text
    package = got.json()
    assert package["name"] == name
    assert package["version"] == "1.10.1-rc.1"
    assert [v["version"] for v in package["versions"]] == [
        "1.10.1-rc.1",
        "1.10.0",
        "1.10.0-beta",
        "1.9.0",
        "1.2.0",
    ]
    listing = as_key(registry, "a-viewer").get("/marketplace/packages")
    assert listing.status_code == 200, listing.text
    latest = {p["name"]: p["version"] for p in listing.json()["packages"]}
    assert latest[name] == "1.10.1-rc.1"
    # A package whose newest version is a release beats its own later-core prerelease only
    # when the core is the same: 2.0.0 is newer than 2.0.0-rc.1 but 1.10.0 is older than 2.0.0.
    for version in ("1.10.0", "2.0.0-rc.1", "2.0.0"):
        operator.post(
            "/marketplace/packages", json=_signed(publisher, name="release-wins", version=version)
        )
    latest = {
        p["name"]: p["version"] for p in operator.get("/marketplace/packages").json()["packages"]
    }
    assert latest["release-wins"] == "2.0.0"
    assert_error(operator.get("/marketplace/packages/@acme/missing"), 404, "package_not_found")


def test_only_an_admin_trusts_publishers_and_names_and_keys_are_unique(
    registry: ServerProcess, publisher: str
) -> None:
    key = public_key_of(_private())
    for name in ("a-viewer", "a1"):
        client = as_key(registry, name)
        assert_error(
            client.post("/marketplace/publishers", json={"name": "sneaky", "public_key": key}),
            403,
            "forbidden",
        )
        assert_error(client.get("/marketplace/publishers"), 403, "forbidden")
    viewer_publish = as_key(registry, "a-viewer").post(
        "/marketplace/packages", json=_signed(publisher, name="by-viewer", version="1.0.0")
    )
    assert_error(viewer_publish, 403, "forbidden")
    admin = as_key(registry, "a-admin")
    taken_name = admin.post("/marketplace/publishers", json={"name": "acme", "public_key": key})
    assert_error(taken_name, 409, "publisher_exists")
    taken_key = admin.post(
        "/marketplace/publishers",
        json={"name": "acme-two", "public_key": public_key_of(publisher)},
    )
    assert_error(taken_key, 409, "publisher_exists")
    # 64 hex characters, but not a usable Ed25519 key (the all-zero point is of small order).
    weak = admin.post("/marketplace/publishers", json={"name": "weak", "public_key": "0" * 64})
    assert_error(weak, 422, "invalid_publisher_key")
    listed = admin.get("/marketplace/publishers")
    assert listed.status_code == 200, listed.text
    names = [p["name"] for p in listed.json()["publishers"]]
    assert "acme" in names
    assert "sneaky" not in names and "weak" not in names
    assert_error(registry.client().get("/marketplace/packages"), 401, "unauthenticated")


@pytest.fixture
def database() -> Iterator[str]:
    yield from fresh_database()


def test_the_registry_on_postgresql_is_shared_by_every_node(
    database: str, server_factory: ServerFactory
) -> None:
    """Two nodes on one PostgreSQL database: a publisher trusted on one publishes through the
    other, and a version published on one is listed by, and refused again on, the other. (The
    database is set up first so that it is dropped only after the servers have stopped.)"""
    env = {
        "THYMOS_POSTGRES_URL": database,
        "THYMOS_API_KEYS": KEYS_ENV,
        "THYMOS_ROOT_KEY": secrets.token_hex(32),
    }
    one = server_factory({**env, "THYMOS_NODE_ID": "node-one"})
    two = server_factory({**env, "THYMOS_NODE_ID": "node-two"})
    private = _private()
    _trust(as_key(one, "a-admin"), "shared", private)
    body = _signed(private, name="@shared/tool", version="0.2.0")
    response = as_key(two, "a1").post("/marketplace/packages", json=body)
    assert response.status_code == 201, response.text
    newer = as_key(one, "a1").post(
        "/marketplace/packages", json=_signed(private, name="@shared/tool", version="0.10.0")
    )
    assert newer.status_code == 201, newer.text
    listing = as_key(two, "a-viewer").get("/marketplace/packages").json()["packages"]
    assert [(p["name"], p["version"]) for p in listing] == [("@shared/tool", "0.10.0")]
    versions = as_key(two, "a-viewer").get("/marketplace/packages/@shared/tool").json()
    assert [v["version"] for v in versions["versions"]] == ["0.10.0", "0.2.0"]
    assert_error(
        as_key(one, "a1").post("/marketplace/packages", json=body), 409, "package_version_exists"
    )
    publishers = as_key(two, "a-admin").get("/marketplace/publishers").json()["publishers"]
    assert [p["name"] for p in publishers] == ["shared"]
