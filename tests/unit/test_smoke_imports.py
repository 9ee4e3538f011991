"""The package imports without side effects and exposes its version."""

import thymos


def test_package_has_version() -> None:
    """The version string is what `/health` reports."""
    assert thymos.__version__.count(".") == 2
