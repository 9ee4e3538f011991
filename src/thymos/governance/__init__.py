"""Governance: writs (Biscuit), policy (Cedar) and the pure compiler that decides each intent.

**Architecture Invariant:** governance is pure like the core: no IO, no clock, no asyncio. The
runtime gives it everything it decides on (time and usage included), so replay can re-run a
decision from the ledger.
"""

from ._compiler import (
    COMPILER_VERSION,
    Authority,
    Basis,
    Decision,
    Rejected,
    RejectionReason,
    Staged,
    Suspended,
    ToolCatalog,
    compile_intent,
)
from ._policy import (
    DEFAULT_POLICIES,
    SCHEMA,
    PolicyDecision,
    PolicyError,
    PolicyFile,
    PolicySet,
    default_policy_files,
)
from ._writ import (
    WRIT_FORMAT,
    Writ,
    WritError,
    WritFacts,
    WritRefusal,
    WritStage,
    WritTerms,
    attenuate,
    authorize,
    key_pair,
    lineage_of,
    mint,
    new_root_key,
    parse,
    private_key_from_hex,
    public_key_hex,
    revoked,
)

__all__ = [
    "COMPILER_VERSION",
    "DEFAULT_POLICIES",
    "SCHEMA",
    "WRIT_FORMAT",
    "Authority",
    "Basis",
    "Decision",
    "PolicyDecision",
    "PolicyError",
    "PolicyFile",
    "PolicySet",
    "Rejected",
    "RejectionReason",
    "Staged",
    "Suspended",
    "ToolCatalog",
    "Writ",
    "WritError",
    "WritFacts",
    "WritRefusal",
    "WritStage",
    "WritTerms",
    "attenuate",
    "authorize",
    "compile_intent",
    "default_policy_files",
    "key_pair",
    "lineage_of",
    "mint",
    "new_root_key",
    "parse",
    "private_key_from_hex",
    "public_key_hex",
    "revoked",
]
