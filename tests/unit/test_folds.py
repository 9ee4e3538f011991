"""Every fold of the ledger says what it does with every entry kind (the one registry of
per-kind handlers): a new kind cannot be added without each fold deciding what it means."""

from __future__ import annotations

import thymos.runtime  # noqa: F401  (registers the run state's and replay's tables)
from thymos.core import FOLDS, EntryKind


def test_the_four_folds_are_registered() -> None:
    assert sorted(table.fold for table in FOLDS) == ["replay", "run state", "run summary", "world"]


def test_every_fold_handles_or_ignores_every_entry_kind() -> None:
    gaps = {table.fold: sorted(table.missing()) for table in FOLDS if table.missing()}
    assert gaps == {}, f"folds silent about entry kinds: {gaps}"
    assert len(EntryKind) == 13
