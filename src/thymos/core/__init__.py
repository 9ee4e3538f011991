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
from ._chainfold import ChainFold, UsageFold
from ._errors import ErrorCode, ThymosError
from ._folds import FOLDS, KindTable, apply_to_world
from ._heads import (
    SIGNED_HEAD_VERSION,
    HeadSigner,
    HeadVerifier,
    SignedHead,
    signed_head_message,
)
from ._ids import blake3_hex, is_hex64, is_run_id, registry_ledger_id, uuid7
from ._ledger import (
    ENVELOPE_FIELDS,
    ChainFailure,
    ChainVerifier,
    CorruptEntry,
    Entry,
    EntryKind,
    Envelope,
    RegistryKind,
    StoredRow,
    decode_envelope,
    parse_body,
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
    match_scope,
)
from ._redact import REDACTED, Redactor
from ._summary import RECOVERY_CHANNEL, Pending, RunSummary, delegated_usage
from ._time import rfc3339_from_us, us_from_rfc3339
from ._vocabulary import (
    BODY_FIELDS,
    DOCUMENT_REFERENCES,
    LEDGER_FORMAT,
    LEDGER_FORMATS_REPLAYABLE,
    DocumentKind,
    ReplayFailure,
    ToolFailureCode,
    document_hash,
)
from ._world import Delta, DeltaConflict, Resource, World, deltas_of

__all__ = [
    "BODY_FIELDS",
    "CANONICAL_VERSION",
    "DOCUMENT_REFERENCES",
    "ENVELOPE_FIELDS",
    "FOLDS",
    "LEDGER_FORMAT",
    "LEDGER_FORMATS_REPLAYABLE",
    "RECOVERY_CHANNEL",
    "REDACTED",
    "SIGNED_HEAD_VERSION",
    "Budget",
    "ChainFailure",
    "ChainFold",
    "ChainVerifier",
    "CorruptEntry",
    "Delta",
    "DeltaConflict",
    "DocumentKind",
    "Effect",
    "Entry",
    "EntryKind",
    "Envelope",
    "ErrorCode",
    "HeadSigner",
    "HeadVerifier",
    "Intent",
    "KindTable",
    "NotCanonicalizable",
    "Pending",
    "Redactor",
    "RegistryKind",
    "ReplayFailure",
    "Resource",
    "Risk",
    "RunSpec",
    "RunStatus",
    "RunSummary",
    "SignedHead",
    "StoredRow",
    "TerminatedBy",
    "ThymosError",
    "ToolFailureCode",
    "ToolSource",
    "ToolSpec",
    "Usage",
    "UsageFold",
    "World",
    "apply_to_world",
    "blake3_hex",
    "canonical_bytes",
    "decode_envelope",
    "delegated_usage",
    "deltas_of",
    "document_hash",
    "is_hex64",
    "is_run_id",
    "match_scope",
    "parse_body",
    "parse_envelope",
    "reference_canonical_bytes",
    "registry_ledger_id",
    "rfc3339_from_us",
    "seal",
    "signed_head_message",
    "us_from_rfc3339",
    "uuid7",
    "verify_rows",
]
