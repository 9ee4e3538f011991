"""Semantic versions (SemVer 2.0.0, https://semver.org) and their precedence.

`MAJOR.MINOR.PATCH`, each a non-negative integer without leading zeros, optionally followed by
`-PRERELEASE` and `+BUILD`, each a dot-separated list of non-empty `[0-9A-Za-z-]` identifiers
(a numeric prerelease identifier has no leading zeros either). Nothing else is accepted: no `v`
prefix, no missing parts, no ranges.

Precedence (spec item 11): major, minor and patch compare numerically; a version with a
prerelease is lower than the same version without one; prerelease identifiers compare left to
right, numeric ones numerically, alphanumeric ones by ASCII order, a numeric one lower than an
alphanumeric one, and a longer list higher when all before are equal. Build metadata is ignored.

**Equality is precedence:** `1.0.0+a == 1.0.0+b`. The registry treats versions that differ only
in build metadata as one version (republishing is a conflict, as on crates.io), so ordering,
equality and hashing agree and a sort is total. `str()` gives back the exact text parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._errors import PackageError, PackageErrorCode

VERSION_CHARS_MAX = 128
"""Long enough for any real version with prerelease and build tags (npm allows 256 for the
whole string); short enough to index and to show."""

_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(
    rf"({_NUMBER})\.({_NUMBER})\.({_NUMBER})"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+({_BUILD_ID}(?:\.{_BUILD_ID})*))?"
)
"""The grammar of the spec's BNF; `[0-9]` rather than `\\d`, which would admit non-ASCII digits."""

_Identifier = tuple[int, int | str]


def _identifier_key(identifier: str) -> _Identifier:
    # Numeric identifiers sort below alphanumeric ones: (0, n) < (1, text) whatever n and text.
    return (
        (0, int(identifier)) if identifier.isascii() and identifier.isdigit() else (1, identifier)
    )


@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A parsed semantic version, ordered by SemVer precedence (build metadata ignored).

    Built from parts, `Version.parse(str(v)) == v` for valid parts; use `parse` for text."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    _key: tuple[int, int, int, int, tuple[_Identifier, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # A release (no prerelease) ranks above every prerelease of the same triple: 1 > 0.
        key = (
            self.major,
            self.minor,
            self.patch,
            0 if self.prerelease else 1,
            tuple(_identifier_key(i) for i in self.prerelease),
        )
        object.__setattr__(self, "_key", key)

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version `text` spells, or `PackageError(invalid_version)`."""
        if len(text) > VERSION_CHARS_MAX:
            raise PackageError(
                PackageErrorCode.INVALID_VERSION,
                f"a version is at most {VERSION_CHARS_MAX} characters",
                "version",
            )
        match = _SEMVER.fullmatch(text)
        if match is None:
            raise PackageError(
                PackageErrorCode.INVALID_VERSION,
                f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], "
                "no leading zeros)",
                "version",
            )
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major),
            int(minor),
            int(patch),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __repr__(self) -> str:
        return f"Version({str(self)!r})"

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key <= other._key

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key > other._key

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key >= other._key


def parse_version(text: str) -> Version:
    """`Version.parse(text)`."""
    return Version.parse(text)
