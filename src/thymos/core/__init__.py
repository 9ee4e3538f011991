"""The pure core: ids and hashes, the canonical encoding, ledger entries, the world and its fold.

**Architecture Invariant:** nothing here does IO, touches asyncio, reads a clock or a random
source. Callers pass time and randomness in. `lint-imports` enforces it.
"""

from ._canonical import (
    CANONICAL_VERSION,
    NotCanonicalizable,
    canonical_bytes,
    reference_canonical_bytes,
)
from ._errors import ErrorCode, ThymosError
from ._ids import blake3_hex, is_hex64, is_run_id, uuid7
from ._ledger import (
    ENVELOPE_FIELDS,
    ChainFailure,
    ChainVerifier,
    CorruptEntry,
    Entry,
    EntryKind,
    StoredRow,
    parse_envelope,
    seal,
    verify_rows,
)
from ._model import (
    Budget,
    Effect,
    Intent,
    Risk,
    RunSpec,
    RunStatus,
    TerminatedBy,
    ToolSource,
    ToolSpec,
    Usage,
)
from ._summary import RunSummary
from ._time import rfc3339_from_us, us_from_rfc3339
from ._world import Delta, DeltaConflict, Resource, World, deltas_of

__all__ = [
    "CANONICAL_VERSION",
    "ENVELOPE_FIELDS",
    "Budget",
    "ChainFailure",
    "ChainVerifier",
    "CorruptEntry",
    "Delta",
    "DeltaConflict",
    "Effect",
    "Entry",
    "EntryKind",
    "ErrorCode",
    "Intent",
    "NotCanonicalizable",
    "Resource",
    "Risk",
    "RunSpec",
    "RunStatus",
    "RunSummary",
    "StoredRow",
    "TerminatedBy",
    "ThymosError",
    "ToolSource",
    "ToolSpec",
    "Usage",
    "World",
    "blake3_hex",
    "canonical_bytes",
    "deltas_of",
    "is_hex64",
    "is_run_id",
    "parse_envelope",
    "reference_canonical_bytes",
    "rfc3339_from_us",
    "seal",
    "us_from_rfc3339",
    "uuid7",
    "verify_rows",
]
