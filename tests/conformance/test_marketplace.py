"""The package registry's storage on every backend: trusted publishers (unique by name and by
key), and published versions written once each, read back byte for byte."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from thymos.storage import PackageExists, PackageRow, Publisher, PublisherExists, Storage

KEY_A = "a" * 64
KEY_B = "b" * 64


def _publisher(name: str, key: str, by: str | None = "key-1") -> Publisher:
    return Publisher(name, key, by, "2026-12-07T10:00:00.000000Z")


def _package(name: str, version: str, **changes: Any) -> PackageRow:
    row = PackageRow(
        name=name,
        version=version,
        kind="skill",
        description=None,
        content=b'{"instructions":"x","tool_scopes":["fs_read"]}',
        content_hash="c" * 64,
        publisher_key=KEY_A,
        signature="d" * 128,
        published_by="key-1",
        published_at="2026-12-07T10:00:01.000000Z",
    )
    return replace(row, **changes)


@pytest.mark.anyio
async def test_publishers_are_unique_by_name_and_by_key(storage: Storage) -> None:
    store = storage.ledger
    assert await store.publishers() == []
    acme = _publisher("acme", KEY_A)
    await store.add_publisher(acme)
    await store.add_publisher(_publisher("beta", KEY_B, by=None))
    with pytest.raises(PublisherExists) as by_name:
        await store.add_publisher(_publisher("acme", "e" * 64))
    assert by_name.value.field == "name"
    with pytest.raises(PublisherExists) as by_key:
        await store.add_publisher(_publisher("gamma", KEY_A))
    assert by_key.value.field == "public_key"
    assert [p.name for p in await store.publishers()] == ["acme", "beta"]
    assert await store.publisher_by_key(KEY_A) == acme
    assert (await store.publisher_by_key(KEY_B)) == _publisher("beta", KEY_B, by=None)
    assert await store.publisher_by_key("f" * 64) is None


@pytest.mark.anyio
async def test_a_version_is_stored_once_and_read_back_verbatim(
    storage: Storage, other_storage: Storage
) -> None:
    store = storage.ledger
    first = _package("tool-one", "1.0.0", description="the first")
    await store.put_package(first)
    with pytest.raises(PackageExists):
        await store.put_package(_package("tool-one", "1.0.0", signature="e" * 128))
    # Another node on the same store sees it, and is refused the same version too.
    with pytest.raises(PackageExists):
        await other_storage.ledger.put_package(_package("tool-one", "1.0.0"))
    # The exact text is the key: build metadata makes another row here (the marketplace, not
    # storage, decides that 1.0.0+b is 1.0.0).
    await store.put_package(_package("tool-one", "1.0.0+b"))
    await store.put_package(_package("tool-one", "1.10.0", published_by=None))
    await store.put_package(_package("@scope/tool-one", "0.1.0-rc.1", kind="policy"))
    versions = await other_storage.ledger.package_versions("tool-one")
    assert sorted(v.version for v in versions) == ["1.0.0", "1.0.0+b", "1.10.0"]
    assert next(v for v in versions if v.version == "1.0.0") == first
    assert await store.package_versions("unknown") == []
    scoped = await store.package_versions("@scope/tool-one")
    assert [(p.kind, p.version) for p in scoped] == [("policy", "0.1.0-rc.1")]
    everything = await store.packages()
    assert sorted((p.name, p.version) for p in everything) == [
        ("@scope/tool-one", "0.1.0-rc.1"),
        ("tool-one", "1.0.0"),
        ("tool-one", "1.0.0+b"),
        ("tool-one", "1.10.0"),
    ]
    assert all(isinstance(p.content, bytes) for p in everything)
