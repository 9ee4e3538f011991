"""Governance: the pure compiler that decides what an intent may do.

**Architecture Invariant:** governance is pure like the core: no IO, no clock, no asyncio. The
runtime gives it everything it decides on, so replay can re-run a decision from the ledger.
"""

from ._compiler import (
    COMPILER_VERSION,
    Authority,
    Decision,
    Rejected,
    RejectionReason,
    Staged,
    ToolCatalog,
    compile_intent,
)

__all__ = [
    "COMPILER_VERSION",
    "Authority",
    "Decision",
    "Rejected",
    "RejectionReason",
    "Staged",
    "ToolCatalog",
    "compile_intent",
]
