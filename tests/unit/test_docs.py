"""Docs that cannot drift: every error code, setting and route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from thymos.api import STATUS_OF
from thymos.core import (
    BODY_FIELDS,
    LEDGER_FORMAT,
    DocumentKind,
    EntryKind,
    ErrorCode,
    RegistryKind,
    ReplayFailure,
    RunStatus,
    TerminatedBy,
    ToolFailureCode,
)
from thymos.governance import RejectionReason

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_error_code_is_in_the_readme_and_has_a_status() -> None:
    """A new ErrorCode fails this test until the README lists it and the API maps it."""
    missing = [code.value for code in ErrorCode if f"`{code.value}`" not in README]
    assert not missing, f"undocumented error codes: {missing}"
    assert set(STATUS_OF) == set(ErrorCode)


def test_every_setting_is_in_the_readme() -> None:
    """Every THYMOS_* variable the settings read is in the README's configuration table."""
    source = (ROOT / "src" / "thymos" / "settings.py").read_text(encoding="utf-8")
    names = sorted(set(re.findall(r'"(THYMOS_[A-Z_]+)"', source)))
    assert names
    missing = [name for name in names if f"`{name}`" not in README]
    assert not missing, f"undocumented settings: {missing}"


LEDGER_DOC = (ROOT / "docs" / "LEDGER.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text of `## title` up to the next second-level heading of docs/LEDGER.md."""
    start = LEDGER_DOC.index(f"\n## {title}\n")
    end = LEDGER_DOC.find("\n## ", start + 1)
    return LEDGER_DOC[start : end if end >= 0 else None]


def test_every_ledger_value_is_documented() -> None:
    """Every entry kind (with a table row), every body field of every kind, every rejection
    reason, run status and ending, tool failure code, replay failure code and document kind,
    and the body format, are
    in docs/LEDGER.md: a new value fails here until it is documented."""
    kinds = _section("Entry kinds and their body fields")
    missing = [k.value for k in EntryKind if f"| `{k.value}` |" not in kinds]
    missing += [
        f"{kind.value}.{name}"
        for kind, names in BODY_FIELDS.items()
        for name in sorted(names)
        if f"`{name}`" not in kinds
    ]
    for title, values in (
        ("Rejection reasons", [r.value for r in RejectionReason]),
        ("Tool failure codes", [c.value for c in ToolFailureCode]),
        ("Documents", [d.value for d in DocumentKind]),
        ("Run endings", [v.value for v in (*RunStatus, *TerminatedBy)]),
    ):
        section = _section(title)
        missing += [f"{title}: {v}" for v in values if f"`{v}`" not in section]
    registry = _section("Registry ledgers")
    missing += [f"registry: {k.value}" for k in RegistryKind if f"| `{k.value}` |" not in registry]
    replay = _section("Replay failure codes")
    missing += [f"replay: {c.value}" for c in ReplayFailure if f"| `{c.value}` |" not in replay]
    assert f"format `{LEDGER_FORMAT}`" in _section("Body format")
    assert not missing, f"undocumented ledger values: {missing}"


def test_every_failure_code_the_chain_check_names_is_in_the_vocabulary() -> None:
    """The chain verifier names its failures with plain strings (the core's lowest layer); each
    must be a `ReplayFailure`."""
    source = (ROOT / "src" / "thymos" / "core" / "_ledger.py").read_text(encoding="utf-8")
    used = set(
        re.findall(r'(?:CorruptEntry\(\s*seq,|self\.fail\(\s*\w+(?:\.seq)?,)\s*"([a-z_]+)"', source)
    )
    used |= set(re.findall(r'"(seq_gap|seq_mismatch)"', source))
    assert used >= {"hash_mismatch", "parent_mismatch", "malformed_entry", "seq_gap"}
    assert used <= {c.value for c in ReplayFailure}, used - {c.value for c in ReplayFailure}


def test_every_tool_failure_is_raised_with_a_code_of_the_vocabulary() -> None:
    """Tools raise `ToolFailure` with a `ToolFailureCode` member, never a bare string."""
    for path in (ROOT / "src" / "thymos" / "tools").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r'ToolFailure\(\s*"', text), path.name
