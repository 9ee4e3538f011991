"""Docs that cannot drift: every error code, setting and route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from thymos.api import STATUS_OF
from thymos.core import ErrorCode

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
