"""The package registry: trusted publishers, publishing, listing and reading packages.

The marketplace's pure checks (`thymos.marketplace.verify_publish`) decide whether a publish
body is a valid, signed package; this module adds what needs storage: whether its key is a
trusted publisher's (403 `publisher_not_trusted`), whether the version is already published
(409 `package_version_exists`; versions equal but for build metadata are one version), and
which version of each package is the newest (SemVer precedence, so `1.10.0` is newer than
`1.9.0` and a prerelease older than its release).

Storage keeps plain rows (`PackageRow`); versions are parsed here, never compared as text.

What a key does here is recorded in its tenant's registry ledger with the key (`_registry.py`):
trusting a publisher, publishing, installing or uninstalling a tool package (`tool_manifest`,
`mcp_server`: its tools join what the tenant's runs may scope), activating or deactivating a
policy package (its policies join the tenant's policy set and govern the next decision of every
run of the tenant). Installs and activations are per tenant: one tenant's admin changes nothing
another tenant's runs may do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from thymos.core import (
    Entry,
    ErrorCode,
    RegistryKind,
    ThymosError,
    canonical_bytes,
    rfc3339_from_us,
)
from thymos.governance import PolicySet
from thymos.marketplace import (
    Package,
    PackageError,
    PackageKind,
    PackageRef,
    Version,
    parse_reference,
    verify_publish,
)
from thymos.marketplace._keys import public_key
from thymos.storage import MarketplaceStore, PackageRow, Publisher

from ._clock import Clock
from ._registry import Activated, Installed, RegistryState, TenantViews, policy_file
from ._requests import SKILLS_PER_RUN_MAX

TOOL_KINDS = (PackageKind.TOOL_MANIFEST.value, PackageKind.MCP_SERVER.value)

_REACHABLE = frozenset(code.value for code in ErrorCode)


def _refusal(exc: PackageError) -> ThymosError:
    """A marketplace refusal as the HTTP error: its own code (422), the field in `details`."""
    code = ErrorCode(exc.code.value) if exc.code.value in _REACHABLE else ErrorCode.INVALID_REQUEST
    return ThymosError(code, f"{exc.field}: {exc.message}", {"field": exc.field})


@dataclass(frozen=True, slots=True)
class KeyRef:
    """Who acts: the API key (None on an open server), its name and its tenant."""

    tenant: str
    key_id: str | None
    name: str

    def record(self) -> dict[str, Any]:
        """How a registry entry names the key (never its secret)."""
        return {"key_id": self.key_id, "name": self.name}


def entry_ref(entry: Entry) -> dict[str, Any]:
    """Where an action was recorded: the registry ledger, the entry's seq and id."""
    return {"ledger": entry.run_id, "seq": entry.seq, "id": entry.id, "kind": entry.kind}


def publisher_view(publisher: Publisher) -> dict[str, Any]:
    return {
        "name": publisher.name,
        "public_key": publisher.public_key,
        "trusted_by": publisher.trusted_by,
        "created_at": publisher.created_at,
    }


def _version_of(row: PackageRow) -> Version:
    return Version.parse(row.version)


def version_view(row: PackageRow) -> dict[str, Any]:
    """One stored version: its publish body (which verifies again) and who published it when."""
    view: dict[str, Any] = {"name": row.name, "version": row.version, "kind": row.kind}
    if row.description is not None:
        view["description"] = row.description
    view["content"] = orjson.loads(row.content)
    view["content_hash"] = row.content_hash
    view["publisher_key"] = row.publisher_key
    view["signature"] = row.signature
    view["published_by"] = row.published_by
    view["published_at"] = row.published_at
    return view


@dataclass(frozen=True, slots=True)
class Skill:
    """A published skill version a run binds: who it is (name, version, content hash) and what
    it brings (instructions for the task; scopes and a ceiling that narrow the run's writ)."""

    name: str
    version: str
    content_hash: str
    instructions: str
    tool_scopes: tuple[str, ...]
    effect_ceiling: str | None
    """As published: `pure` included (a run reads it as `read`)."""

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"

    def record(self) -> dict[str, Any]:
        """What the run's first entry records of it (`skills`)."""
        return {"name": self.name, "version": self.version, "content_hash": self.content_hash}


def _skill_of(row: PackageRow) -> Skill:
    content = orjson.loads(row.content)
    ceiling = content.get("effect_ceiling")
    return Skill(
        name=row.name,
        version=row.version,
        content_hash=row.content_hash,
        instructions=str(content["instructions"]),
        tool_scopes=tuple(str(scope) for scope in content["tool_scopes"]),
        effect_ceiling=ceiling if isinstance(ceiling, str) else None,
    )


class Marketplace:
    """The registry over a `MarketplaceStore`; every write and read of `/marketplace/*`."""

    def __init__(self, store: MarketplaceStore, clock: Clock, views: TenantViews) -> None:
        self._store = store
        self._clock = clock
        self._views = views
        self._publishing = asyncio.Lock()
        """Serialises this node's publishes, so two versions equal but for build metadata
        cannot both pass the check below (the store's key refuses exact duplicates from any
        node)."""

    def _now(self) -> str:
        return rfc3339_from_us(self._clock.now_us())

    async def trust(self, name: str, key: str, *, who: KeyRef) -> dict[str, Any]:
        """Trust a publisher's key (422 `invalid_publisher_key` for a key that is not a usable
        Ed25519 public key; 409 `publisher_exists` for a taken name or key), recorded in the
        admin's tenant's registry ledger."""
        try:
            public_key(key, "public_key")
        except PackageError as exc:
            raise _refusal(exc) from None
        publisher = Publisher(name, key, who.key_id, self._now())
        await self._store.add_publisher(publisher)
        entry = await self._views.record(
            who.tenant,
            RegistryKind.PUBLISHER_TRUSTED,
            {"name": name, "public_key": key, "by": who.record()},
        )
        return {**publisher_view(publisher), "recorded": entry_ref(entry)}

    async def publishers(self) -> list[dict[str, Any]]:
        return [publisher_view(p) for p in await self._store.publishers()]

    async def publish(self, body: Any, *, who: KeyRef) -> dict[str, Any]:
        """Verify and store a publish body: each `PackageError` is 422 with its code; a key no
        admin trusted is 403 `publisher_not_trusted`; a version already published (build
        metadata aside) is 409 `package_version_exists`."""
        try:
            package = verify_publish(body)
        except PackageError as exc:
            raise _refusal(exc) from None
        if await self._store.publisher_by_key(package.publisher_key) is None:
            raise ThymosError(
                ErrorCode.PUBLISHER_NOT_TRUSTED,
                "publisher_key is not the key of a publisher an admin trusted "
                "(POST /marketplace/publishers)",
                {"field": "publisher_key"},
            )
        row = _row(package, by=who.key_id, at=self._now())
        async with self._publishing:
            for stored in await self._store.package_versions(package.name):
                if _version_of(stored) == package.version:
                    raise ThymosError(
                        ErrorCode.PACKAGE_VERSION_EXISTS,
                        f"{package.name}@{stored.version} is already published; "
                        "publish a new version",
                        {"name": package.name, "version": stored.version},
                    )
            await self._store.put_package(row)
        entry = await self._views.record(
            who.tenant,
            RegistryKind.PACKAGE_PUBLISHED,
            {
                "name": row.name,
                "version": row.version,
                "kind": row.kind,
                "content_hash": row.content_hash,
                "publisher_key": row.publisher_key,
                "by": who.record(),
            },
        )
        return {**version_view(row), "recorded": entry_ref(entry)}

    async def latest(self) -> list[dict[str, Any]]:
        """The newest version of each package (SemVer precedence), by name."""
        newest: dict[str, PackageRow] = {}
        for row in await self._store.packages():
            kept = newest.get(row.name)
            if kept is None or _version_of(row) > _version_of(kept):
                newest[row.name] = row
        return [version_view(newest[name]) for name in sorted(newest)]

    async def package(self, name: str) -> dict[str, Any]:
        """The package's newest version with every version, newest first; 404
        `package_not_found` for a name nothing was published under."""
        rows = await self._store.package_versions(name)
        if not rows:
            raise ThymosError(
                ErrorCode.PACKAGE_NOT_FOUND,
                "no package of this name is published",
                {"name": name[:200]},
            )
        ordered = sorted(rows, key=_version_of, reverse=True)
        latest = version_view(ordered[0])
        return {**latest, "versions": [version_view(row) for row in ordered]}

    async def skills(self, references: Sequence[str]) -> list[Skill]:
        """The skills a run names (`name@version` each, in order): 422
        `invalid_package_reference` for one that does not parse, `invalid_request` for one
        named twice or too many, `skill_not_found` for a version nothing was published as,
        `not_a_skill` for a package of another kind."""
        if len(references) > SKILLS_PER_RUN_MAX:
            raise ThymosError(
                ErrorCode.INVALID_REQUEST,
                f"a run binds at most {SKILLS_PER_RUN_MAX} skills",
                {"field": "skills"},
            )
        refs: list[PackageRef] = []
        for index, text in enumerate(references):
            try:
                ref = parse_reference(text)
            except PackageError as exc:
                raise ThymosError(
                    ErrorCode.INVALID_PACKAGE_REFERENCE,
                    f"skills.{index}: {exc.message}",
                    {"field": f"skills.{index}"},
                ) from None
            if any(seen.name == ref.name and seen.version == ref.version for seen in refs):
                raise ThymosError(
                    ErrorCode.INVALID_REQUEST,
                    f"skills.{index}: {ref} is named twice",
                    {"field": f"skills.{index}"},
                )
            refs.append(ref)
        bound: list[Skill] = []
        for index, ref in enumerate(refs):
            row = next(
                (
                    r
                    for r in await self._store.package_versions(ref.name)
                    if _version_of(r) == ref.version
                ),
                None,
            )
            if row is None:
                raise ThymosError(
                    ErrorCode.SKILL_NOT_FOUND,
                    f"skills.{index}: no package version {ref} is published",
                    {"field": f"skills.{index}", "name": ref.name, "version": str(ref.version)},
                )
            if row.kind != PackageKind.SKILL.value:
                raise ThymosError(
                    ErrorCode.NOT_A_SKILL,
                    f"skills.{index}: {ref} is a {row.kind} package, not a skill",
                    {"field": f"skills.{index}", "name": ref.name, "kind": row.kind},
                )
            bound.append(_skill_of(row))
        return bound

    async def _version(self, name: str, version: str | None) -> PackageRow:
        """The published version named (the newest when None): 404 `package_not_found` when
        there is none, 422 `invalid_version` for a version that does not parse."""
        rows = await self._store.package_versions(name)
        if not rows:
            raise ThymosError(
                ErrorCode.PACKAGE_NOT_FOUND,
                "no package of this name is published",
                {"name": name[:200]},
            )
        if version is None:
            return max(rows, key=_version_of)
        try:
            wanted = Version.parse(version)
        except PackageError as exc:
            raise _refusal(exc) from None
        for row in rows:
            if _version_of(row) == wanted:
                return row
        raise ThymosError(
            ErrorCode.PACKAGE_NOT_FOUND,
            f"{name} has no published version {version}",
            {"name": name[:200], "version": version},
        )

    @staticmethod
    def _kind(row: PackageRow, kinds: tuple[str, ...], action: str) -> None:
        if row.kind not in kinds:
            raise ThymosError(
                ErrorCode.WRONG_PACKAGE_KIND,
                f"{row.name} is a {row.kind} package: only {' or '.join(kinds)} packages can be "
                f"{action}",
                {"name": row.name, "kind": row.kind, "expected": list(kinds)},
            )

    async def install(self, name: str, version: str | None, *, who: KeyRef) -> dict[str, Any]:
        """Make a tool package's tools available to the tenant's runs (replacing the version
        installed before, if any); recorded with the package's hash. Installing the version
        already installed changes and records nothing."""
        row = await self._version(name, version)
        self._kind(row, TOOL_KINDS, "installed")
        await self._views.refresh(who.tenant)
        current = self._views.state(who.tenant).installed.get(row.name)
        if current is not None and current.content_hash == row.content_hash:
            return {"installed": current.view(), "changed": False}
        tools = sorted(t.spec.name for t in await self._views.package_tools(who.tenant, row))
        body = {
            "name": row.name,
            "version": row.version,
            "kind": row.kind,
            "content_hash": row.content_hash,
            "tools": tools,
            "by": who.record(),
        }

        def change(state: RegistryState) -> None:
            state.installed[row.name] = Installed(
                row.name, row.version, row.kind, row.content_hash, tuple(tools), who.record(), ""
            )

        entry = await self._views.record(
            who.tenant, RegistryKind.PACKAGE_INSTALLED, body, change=change
        )
        installed = self._views.state(who.tenant).installed[row.name]
        return {"installed": installed.view(), "changed": True, "recorded": entry_ref(entry)}

    async def uninstall(self, name: str, *, who: KeyRef) -> dict[str, Any]:
        """Take a tool package's tools away from the tenant's runs (409 `package_not_installed`
        when it is not installed); a run already using one is refused its next call."""
        current, entry = await self._withdraw(name, who, policy=False)
        return {"uninstalled": current.view(), "recorded": entry_ref(entry)}

    async def _withdraw(
        self, name: str, who: KeyRef, *, policy: bool
    ) -> tuple[Installed | Activated, Entry]:
        """Record that the tenant's installed tool package (or active policy package) `name`
        is withdrawn; 409 `package_not_installed` when there is none."""
        await self._views.refresh(who.tenant)
        state = self._views.state(who.tenant)
        current: Installed | Activated | None = (
            state.activated.get(name) if policy else state.installed.get(name)
        )
        if current is None:
            what = "an active policy package" if policy else "installed"
            raise ThymosError(
                ErrorCode.PACKAGE_NOT_INSTALLED,
                f"{name[:200]} is not {what} for this tenant",
                {"name": name[:200]},
            )
        body = {
            "name": current.name,
            "version": current.version,
            "content_hash": current.content_hash,
            "by": who.record(),
        }

        def change(changed: RegistryState) -> None:
            (changed.activated if policy else changed.installed).pop(name, None)

        kind = RegistryKind.POLICY_DEACTIVATED if policy else RegistryKind.PACKAGE_UNINSTALLED
        entry = await self._views.record(who.tenant, kind, body, change=change)
        return current, entry

    async def activate(self, name: str, version: str | None, *, who: KeyRef) -> dict[str, Any]:
        """Add a policy package to the tenant's policy set (replacing the version active
        before, if any); its policies govern the next decision of every run of the tenant and
        are named by the decisions they take part in. Recorded with the package's hash;
        activating the version already active changes and records nothing."""
        row = await self._version(name, version)
        self._kind(row, (PackageKind.POLICY.value,), "activated")
        await self._views.refresh(who.tenant)
        current = self._views.state(who.tenant).activated.get(row.name)
        if current is not None and current.content_hash == row.content_hash:
            return {"activated": current.view(), "changed": False}
        policies = PolicySet([policy_file(row)]).ids
        body = {
            "name": row.name,
            "version": row.version,
            "content_hash": row.content_hash,
            "policies": list(policies),
            "by": who.record(),
        }

        def change(state: RegistryState) -> None:
            state.activated[row.name] = Activated(
                row.name, row.version, row.content_hash, policies, who.record(), ""
            )

        entry = await self._views.record(
            who.tenant, RegistryKind.POLICY_ACTIVATED, body, change=change
        )
        activated = self._views.state(who.tenant).activated[row.name]
        return {
            "activated": activated.view(),
            "changed": True,
            "policy_hash": self._views.current(who.tenant).policy.hash,
            "recorded": entry_ref(entry),
        }

    async def deactivate(self, name: str, *, who: KeyRef) -> dict[str, Any]:
        """Take a policy package out of the tenant's policy set (409 `package_not_installed`
        when it is not active)."""
        current, entry = await self._withdraw(name, who, policy=True)
        return {
            "deactivated": current.view(),
            "policy_hash": self._views.current(who.tenant).policy.hash,
            "recorded": entry_ref(entry),
        }

    async def installed(self, tenant: str) -> dict[str, Any]:
        """The tenant's installed tool packages and active policy packages, by name."""
        await self._views.refresh(tenant)
        state = self._views.state(tenant)
        return {
            "installed": [state.installed[n].view() for n in sorted(state.installed)],
            "activated": [state.activated[n].view() for n in sorted(state.activated)],
            "policy_hash": self._views.current(tenant).policy.hash,
        }


def _row(package: Package, *, by: str | None, at: str) -> PackageRow:
    return PackageRow(
        name=package.name,
        version=str(package.version),
        kind=package.kind.value,
        description=package.description,
        content=canonical_bytes(package.content),
        content_hash=package.content_hash,
        publisher_key=package.publisher_key,
        signature=package.signature,
        published_by=by,
        published_at=at,
    )
