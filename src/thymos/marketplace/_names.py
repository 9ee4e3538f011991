"""Package names and `name@version` references.

A name is 2 to 64 characters of lowercase `a-z`, digits and `-`, optionally under a scope,
`@scope/name`, where the scope follows the same rules. A hyphen only joins two runs of letters
and digits: a part that starts or ends with `-`, or holds `--`, is refused, so each name has one
spelling a person can read back (`my-tool`, never `my--tool` or `-my-tool`). Names are
case-sensitive by construction: uppercase is refused, not folded, so no two accepted names
differ only in case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import PackageError, PackageErrorCode
from ._version import Version

NAME_PART_CHARS_MIN = 2
NAME_PART_CHARS_MAX = 64
"""Per part (the scope, the name): long enough for a descriptive name, short enough for a path
segment, a table column and a log line."""

_PART = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_RULE = (
    f"{NAME_PART_CHARS_MIN} to {NAME_PART_CHARS_MAX} of a-z 0-9 and '-', "
    "neither starting nor ending with '-' nor holding '--'"
)


def _part_ok(part: str) -> bool:
    return (
        NAME_PART_CHARS_MIN <= len(part) <= NAME_PART_CHARS_MAX
        and _PART.fullmatch(part) is not None
    )


def check_name(name: str) -> str:
    """`name` when it is a valid package name, else `PackageError(invalid_package_name)`."""
    if name.startswith("@"):
        scope, slash, rest = name[1:].partition("/")
        if not slash:
            raise PackageError(
                PackageErrorCode.INVALID_PACKAGE_NAME, "a scoped name is @scope/name", "name"
            )
        if not _part_ok(scope):
            raise PackageError(
                PackageErrorCode.INVALID_PACKAGE_NAME, f"the scope must be {_RULE}", "name"
            )
    else:
        rest = name
    if not _part_ok(rest):
        raise PackageError(PackageErrorCode.INVALID_PACKAGE_NAME, f"a name is {_RULE}", "name")
    return name


@dataclass(frozen=True, slots=True)
class PackageRef:
    """One version of one package, as a run names it: `name@version`."""

    name: str
    version: Version

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_reference(text: str) -> PackageRef:
    """`name@version` (`@scope/name@version` for a scoped name); the version is exact, not a
    range. `PackageError(invalid_package_reference)` names what is wrong."""
    name, at, version = text.rpartition("@")
    if not at or not name:
        raise PackageError(
            PackageErrorCode.INVALID_PACKAGE_REFERENCE,
            f"{text!r} is not name@version",
            "reference",
        )
    try:
        return PackageRef(check_name(name), Version.parse(version))
    except PackageError as exc:
        raise PackageError(
            PackageErrorCode.INVALID_PACKAGE_REFERENCE, f"{text!r}: {exc.message}", "reference"
        ) from None
