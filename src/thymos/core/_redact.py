"""Redaction: secrets never reach the ledger, and so never a stream, the model or an export.

A `Redactor` replaces, in every string of a JSON value, each known secret value (the server's
provider keys, API key secrets, its root key: whatever the settings name) and every value shaped
like a credential (vendor key prefixes, cloud access keys, bearer tokens, private key blocks)
with `[REDACTED]`. The runtime applies it to what tools return before anything is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
SECRET_CHARS_MIN = 8
"""Shorter values are not treated as secrets: redacting them would garble ordinary text."""

CREDENTIAL_SHAPES = (
    r"sk-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_\-]{20,}",  # Anthropic, OpenAI, Stripe-like keys
    r"(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub tokens
    r"xox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack tokens
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"glpat-[A-Za-z0-9_\-]{20,}",  # GitLab tokens
    r"(?i:bearer)\s+[A-Za-z0-9_\-\.=]{20,}",  # bearer tokens in headers
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= SECRET_CHARS_MIN}, key=len, reverse=True)
        parts = [re.escape(s) for s in known] + list(CREDENTIAL_SHAPES)
        self._pattern = re.compile("|".join(parts))

    def text(self, value: str) -> str:
        return self._pattern.sub(REDACTED, value)

    def redact(self, value: Any) -> Any:
        """`value` with every string (and object key) redacted; other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self.redact(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact(item) for item in value]
        return value
