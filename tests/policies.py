"""Policy texts and the governed scenario's script, shared by tests of every tier (plain data:
black-box tests import no Thymos)."""

from typing import Any

GOVERNED_POLICY = """\
@id("permit-all")
permit(principal, action, resource);

@id("prod-needs-two")
@approval("ops") @quorum("2")
permit(principal, action, resource)
when { resource.name == "kv_set" && context.arguments like "*\\"key\\":\\"prod*" };

@id("no-secrets")
forbid(principal, action, resource)
when { context.arguments like "*secret*" };
"""
"""Writing a `prod*` key needs two approvers on `ops`; arguments mentioning a secret are
forbidden; everything else the writ allows is permitted."""

PERMISSIVE_POLICY = '@id("permit-all")\npermit(principal, action, resource);\n'
"""What a forger would put in its place."""


GOVERNED_INTENTS: list[dict[str, Any]] = [
    {"tool": "kv_set", "args": {"key": "colour", "value": "blue"}},
    {"tool": "kv_set", "args": {"key": "prod-db", "value": {"replicas": 3}}},
    {"tool": "kv_set", "args": {"key": "prod-cache", "value": "flush"}},
    {"tool": "kv_set", "args": {"key": "my-secret", "value": "hunter2"}},
    {"tool": "kv_set", "args": {"key": "colour"}},
    {"tool": "fs_read", "args": {"path": "missing.txt"}},
    {"tool": "grep", "args": {"pattern": "x"}},
]
"""The mock script's calls under GOVERNED_POLICY: a plain write, a quorum (prod-db), a veto
(prod-cache), a policy denial (my-secret), invalid arguments, a tool failure, out of scope."""
