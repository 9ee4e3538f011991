"""The ledger's vocabulary as data: the body format version, every body field of every entry
kind, tool failure codes, replay failure codes and the kinds of content-addressed documents.

Each value here is documented in `docs/LEDGER.md`; `tests/unit/test_docs.py` fails when one is
not. Values are never renamed once written: old ledgers must keep replaying.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from ._canonical import canonical_bytes
from ._ids import blake3_hex
from ._ledger import EntryKind

LEDGER_FORMAT = 2
"""The body format, recorded as `format` in every run's first entry. Format 1 (no `format`
field) predates recorded tool catalogs: its decisions cannot be re-run, and replay says so."""

LEDGER_FORMATS_REPLAYABLE = frozenset({2})

_DECISION_BASIS = frozenset(
    {"intent", "tool", "compiler", "authority", "policy_hash", "policies", "catalog_hash"}
)

BODY_FIELDS: Mapping[EntryKind, frozenset[str]] = {
    EntryKind.RUN_STARTED: frozenset(
        {
            "format",
            "task",
            "max_steps",
            "tool_scopes",
            "tools",
            "cognition",
            "budget",
            "tenant",
            "effect_ceiling",
            "writ",
            "branch_of",
            "parent",
            "max_delegation_depth",
            "skills",
        }
    ),
    EntryKind.TURN: frozenset({"step", "text", "usage", "intents", "final"}),
    EntryKind.INTENT: frozenset({"step", "index", "call_id", "tool", "args", "args_error"}),
    EntryKind.REJECTION: _DECISION_BASIS | {"reason", "message", "details"},
    EntryKind.SUSPENSION: _DECISION_BASIS
    | {"channel", "quorum", "message", "arguments_preview", "execution"},
    EntryKind.APPROVAL: frozenset(
        {"proposal_id", "channel", "approve", "approver", "key_id", "reason"}
    ),
    EntryKind.COMMIT: _DECISION_BASIS
    | {"effect", "approved_by", "output", "deltas", "delegated_usage"},
    EntryKind.TOOL_FAILURE: _DECISION_BASIS | {"effect", "approved_by", "error"},
    EntryKind.RUN_ENDED: frozenset({"status", "terminated_by", "final_answer", "error"}),
    EntryKind.EXECUTION_STARTED: frozenset(
        {"intent", "tool", "effect", "idempotency_key", "idempotent"}
    ),
    EntryKind.CANCELLATION: frozenset({"requested_by", "key_id", "reason"}),
    # Reserved: named in the vocabulary, not yet written by this release (run control).
    EntryKind.RESUMPTION: frozenset(
        {"max_steps", "requested_by", "key_id", "previous_status", "previous_terminated_by"}
    ),
    EntryKind.DELEGATION: frozenset(
        {
            "intent",
            "child_run_id",
            "task",
            "tool_scopes",
            "tools",
            "effect_ceiling",
            "budget",
            "max_steps",
            "writ_id",
            "expires",
            "depth",
        }
    ),
}
"""The top-level fields each kind's body may hold. Replay refuses any other (`unknown_field`)."""


class ToolFailureCode(StrEnum):
    """Why a tool call that was allowed did not commit (`tool_failure` entries, `error.code`)."""

    INVALID_PATH = "invalid_path"
    OUTSIDE_WORKSPACE = "outside_workspace"
    PROTECTED_PATH = "protected_path"
    NOT_FOUND = "not_found"
    UNREADABLE = "unreadable"
    NOT_A_FILE = "not_a_file"
    NOT_A_DIRECTORY = "not_a_directory"
    BINARY_FILE = "binary_file"
    INVALID_PATTERN = "invalid_pattern"
    DELTA_CONFLICT = "delta_conflict"
    TOOL_ERROR = "tool_error"
    INVALID_OUTPUT = "invalid_output"
    OUTPUT_TOO_LARGE = "output_too_large"
    UNAVAILABLE = "unavailable"
    STOPPED = "stopped"
    ANCHOR_NOT_FOUND = "anchor_not_found"
    ANCHOR_NOT_UNIQUE = "anchor_not_unique"
    NOT_TEXT = "not_text"
    TOO_LARGE = "too_large"
    INVALID_URL = "invalid_url"
    ADDRESS_REFUSED = "address_refused"
    CONNECTION_FAILED = "connection_failed"
    TIMED_OUT = "timed_out"
    OUTCOME_UNKNOWN = "outcome_unknown"
    CHILD_INVALID = "child_invalid"
    NO_CAPACITY = "no_capacity"
    CHILD_UNAVAILABLE = "child_unavailable"


class ReplayFailure(StrEnum):
    """Why replay (or recovery) does not verify a ledger; each failure names its seq."""

    # The chain.
    SEQ_GAP = "seq_gap"
    SEQ_MISMATCH = "seq_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    PARENT_MISMATCH = "parent_mismatch"
    MALFORMED_ENTRY = "malformed_entry"
    UNKNOWN_VERSION = "unknown_version"
    RUN_MISMATCH = "run_mismatch"
    MISSING_ENTRIES = "missing_entries"
    HEAD_MISMATCH = "head_mismatch"
    ENTRY_AFTER_END = "entry_after_end"
    RESUMPTION_INVALID = "resumption_invalid"
    # The vocabulary.
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_FIELD = "unknown_field"
    UNSUPPORTED_FORMAT = "unsupported_format"
    # Authority and decisions.
    WRIT_MISSING = "writ_missing"
    WRIT_INVALID = "writ_invalid"
    ORPHAN_DECISION = "orphan_decision"
    AUTHORITY_MISMATCH = "authority_mismatch"
    UNAUTHORISED_COMMIT = "unauthorised_commit"
    DECISION_MISMATCH = "decision_mismatch"
    APPROVAL_MISSING = "approval_missing"
    EXECUTION_UNANNOUNCED = "execution_unannounced"
    EXECUTION_REPEATED = "execution_repeated"
    VOTE_UNBOUND = "vote_unbound"
    DUPLICATE_VOTE = "duplicate_vote"
    VOTE_OUTSIDE_VALIDITY = "vote_outside_validity"
    COMPILER_MISMATCH = "compiler_mismatch"
    POLICY_MISMATCH = "policy_mismatch"
    DOCUMENT_MISSING = "document_missing"
    DOCUMENT_MISMATCH = "document_mismatch"
    # The world.
    DELTA_CONFLICT = "delta_conflict"
    # Delegation.
    DELEGATION_INVALID = "delegation_invalid"
    # Branches.
    BRANCH_SOURCE_MISMATCH = "branch_source_mismatch"
    # Signed heads.
    SIGNATURE_INVALID = "signature_invalid"
    SIGNED_HEAD_MISMATCH = "signed_head_mismatch"
    TRUNCATED = "truncated"
    HEAD_UNSIGNED = "head_unsigned"


class DocumentKind(StrEnum):
    """What a decision used that is not in the ledger, kept by the hash the decision records."""

    POLICY_SET = "policy_set"
    """`[[file name, Cedar text], ...]` sorted by name; its hash is a decision's `policy_hash`."""
    TOOL_CATALOG = "tool_catalog"
    """`[tool spec, ...]` sorted by name; its hash is a decision's `catalog_hash`."""


DOCUMENT_REFERENCES: Mapping[str, DocumentKind] = {
    "policy_hash": DocumentKind.POLICY_SET,
    "catalog_hash": DocumentKind.TOOL_CATALOG,
}
"""Decision body fields that name a document by its hash."""


def document_hash(body: Any) -> str:
    """A document's address: BLAKE3 of its canonical (RFC 8785) JSON."""
    return blake3_hex(canonical_bytes(body))
