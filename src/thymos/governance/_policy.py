"""Cedar policy: Thymos's published schema, loading and validating policy files, and decisions.

The principal is the run (`Thymos::Run`, a member of its `Thymos::Tenant`), the action is
`Thymos::Action::"invoke"`, the resource is the tool (`Thymos::Tool`), and the context carries the
call's effect and risk, its arguments (as canonical JSON text) and the run's usage so far.

`forbid` rejects. A satisfied `permit` annotated `@approval("CHANNEL")` (optionally
`@quorum("N")`) suspends the proposal on that channel until N distinct approvers agree. Every
decision records the ids of the determining policies and the hash of the active policy set.
A policy is named by its `@id("...")` annotation, or by `FILE#N` (its position in its file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from thymos.core import RECOVERY_CHANNEL, Effect, Risk, ToolSpec, document_hash

SCHEMA = """\
namespace Thymos {
  entity Tenant;
  entity Run in [Tenant] = {
    "tenant": String,
    "task": String,
  };
  entity Tool = {
    "name": String,
    "effect": String,
    "risk": String,
    "source": String,
    "idempotent": Bool,
  };
  action invoke appliesTo {
    principal: [Run],
    resource: [Tool],
    context: {
      "effect": String,
      "effect_rank": Long,
      "risk": String,
      "risk_rank": Long,
      "arguments": String,
      "tool_calls": Long,
      "tokens": Long,
      "usd_millicents": Long,
    },
  };
}
"""

DEFAULT_POLICIES = """\
// The default policy set, used when THYMOS_POLICY_DIR is not set.

// Every governed call that passed the writ's checks is permitted...
@id("default-permit")
permit(principal, action == Thymos::Action::"invoke", resource);

// ...but irreversible effects and high-risk tools wait for an operator's approval.
@id("irreversible-or-high-risk-needs-approval")
@approval("operators")
permit(principal, action == Thymos::Action::"invoke", resource)
when {
  context.effect == "irreversible" || context.risk == "high" || context.risk == "critical"
};
"""

QUORUM_MAX = 16
_RISK_RANK = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2, Risk.CRITICAL: 3}
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


PACKAGE_POLICY_PREFIX = "package:"
"""The file name of an activated marketplace package in a policy set is `package:NAME@VERSION`;
its policies' ids are that name, `#`, and the policy's @id or its position in the file."""


class PolicyError(ValueError):
    """A policy file that does not parse or validate: names the file, the position, the reason."""

    def __init__(self, file: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"{file}:{line}:{column}: {reason}")
        self.file, self.line, self.column, self.reason = file, line, column, reason


@dataclass(frozen=True, slots=True)
class PolicyFile:
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class _Statement:
    file: str
    line: int
    column: int
    text: str


@dataclass(frozen=True, slots=True)
class PolicyMeta:
    name: str
    effect: str
    channel: str | None
    quorum: int


@dataclass(frozen=True, slots=True)
class PolicyCall:
    """One proposed call as policy sees it; the field names are the context attributes."""

    run_id: str
    tool: ToolSpec
    arguments: str
    """The arguments as canonical JSON text (empty when no policy reads them)."""
    tool_calls: int
    tokens: int
    usd_millicents: int


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """`permit`, `deny` or `suspend` (with the channel and quorum), and why."""

    outcome: str
    policies: tuple[str, ...]
    policy_hash: str
    channel: str | None = None
    quorum: int = 1

    def as_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"policies": list(self.policies), "policy_hash": self.policy_hash}
        if self.channel is not None:
            body["channel"] = self.channel
            body["quorum"] = self.quorum
        return body


def _statements(file: PolicyFile) -> list[_Statement]:
    """Split a file into policy statements at top-level semicolons (outside strings, comments)."""
    out: list[_Statement] = []
    text = file.text
    start = 0
    i = 0
    depth = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == ";" and depth == 0:
            chunk = text[start : i + 1]
            if chunk.strip():
                lead = _leading(chunk)
                out.append(_Statement(file.name, *_position(text, start + lead), chunk[lead:]))
            start = i + 1
        i += 1
    rest = text[start:]
    if _strip_comments(rest).strip():
        lead = _leading(rest)
        out.append(_Statement(file.name, *_position(text, start + lead), rest[lead:]))
    return out


def _leading(chunk: str) -> int:
    """How many characters of whitespace and `//` comments come before a statement's first token
    (a statement's position and text start there, so error positions inside it line up)."""
    i = 0
    while True:
        while i < len(chunk) and chunk[i].isspace():
            i += 1
        if not chunk.startswith("//", i):
            return i
        end = chunk.find("\n", i)
        i = len(chunk) if end < 0 else end


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _locate(statement: _Statement, reason: str) -> tuple[int, int]:
    """Best position of a parse error inside a statement: the unexpected token if named."""
    token = re.search(r"unexpected token `([^`]+)`", reason)
    if token:
        index = statement.text.find(token.group(1))
        if index >= 0:
            line, column = _position(statement.text, index)
            return statement.line + line - 1, (
                column if line > 1 else statement.column + column - 1
            )
    return statement.line, statement.column


class PolicySet:
    """A validated, parsed policy set with its hash; parse once, decide many times."""

    def __init__(self, files: Sequence[PolicyFile]) -> None:
        if not files:
            raise PolicyError("(policy directory)", 1, 1, "no *.cedar files")
        self._schema = cedarpy.Schema.from_str(SCHEMA)
        statements: list[_Statement] = []
        for file in sorted(files, key=lambda f: f.name):
            found = _statements(file)
            if not found:
                raise PolicyError(file.name, 1, 1, "the file holds no policy")
            statements.extend(found)
        self._meta: dict[str, PolicyMeta] = {}
        texts: list[str] = []
        counters: dict[str, int] = {}
        for index, statement in enumerate(statements):
            try:
                parsed = json.loads(cedarpy.policies_to_json_str(statement.text))
            except ValueError as exc:
                raise PolicyError(statement.file, *_locate(statement, str(exc)), str(exc)) from None
            policies = parsed.get("staticPolicies", {})
            if len(policies) != 1 or parsed.get("templates"):
                raise PolicyError(
                    statement.file, statement.line, statement.column, "expected one static policy"
                )
            body = next(iter(policies.values()))
            counters[statement.file] = counters.get(statement.file, 0) + 1
            annotations = body.get("annotations") or {}
            if statement.file.startswith(PACKAGE_POLICY_PREFIX):
                # A package's policies are named by the package, whatever their @id, so every
                # decision they take part in names it (and no id collides with the server's).
                own = annotations.get("id") or str(counters[statement.file])
                name = f"{statement.file}#{own}"
            else:
                name = annotations.get("id") or f"{statement.file}#{counters[statement.file]}"
            self._meta[f"policy{index}"] = self._meta_of(
                statement, name, body["effect"], annotations
            )
            texts.append(statement.text)
        names = [m.name for m in self._meta.values()]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise PolicyError("(policy set)", 1, 1, f"two policies share the id {duplicate!r}")
        combined = "\n".join(texts)
        result = cedarpy.validate_policies(combined, self._schema)
        if not result.validation_passed:
            error = result.errors[0]
            index = (
                int(error.policy_id.removeprefix("policy"))
                if error.policy_id.startswith("policy")
                else 0
            )
            where = statements[index]
            raise PolicyError(where.file, where.line, where.column, error.error)
        self._policies = cedarpy.PolicySet.from_str(combined)
        self._dynamic = _dynamic_context(cedarpy.policies_to_json_str(combined))
        self._decisions: dict[tuple[object, ...], PolicyDecision] = {}
        self._files = tuple(sorted(files, key=lambda f: f.name))
        self.hash = document_hash(self.document())
        self.files = tuple(f.name for f in files)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every policy's id, in the order of the set."""
        return tuple(meta.name for meta in self._meta.values())

    def document(self) -> list[list[str]]:
        """The policy set as stored and exported: `[[file name, text], ...]` sorted by name.
        Its hash is the set's hash, recorded with every decision."""
        return [[f.name, f.text] for f in self._files]

    @staticmethod
    def from_document(document: Any) -> PolicySet:
        """The policy set a stored document holds (`PolicyError` when it is not one)."""
        if not isinstance(document, list) or not all(
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
            for item in document
        ):
            raise PolicyError("(policy document)", 1, 1, "not a list of [file name, text]")
        return PolicySet([PolicyFile(name, text) for name, text in document])

    @staticmethod
    def _meta_of(
        statement: _Statement, name: str, effect: str, annotations: Mapping[str, str]
    ) -> PolicyMeta:
        channel = annotations.get("approval")
        quorum_text = annotations.get("quorum")
        if channel is not None and not _CHANNEL.fullmatch(channel):
            raise PolicyError(
                statement.file,
                statement.line,
                statement.column,
                f"@approval channel {channel!r} must be lowercase letters, digits, _ or -",
            )
        if channel == RECOVERY_CHANNEL:
            raise PolicyError(
                statement.file,
                statement.line,
                statement.column,
                f"@approval channel {channel!r} is reserved for crash recovery's questions",
            )
        if quorum_text is not None and channel is None:
            raise PolicyError(
                statement.file,
                statement.line,
                statement.column,
                "@quorum needs @approval on the same policy",
            )
        if channel is not None and effect != "permit":
            raise PolicyError(
                statement.file,
                statement.line,
                statement.column,
                "@approval only applies to permit policies",
            )
        quorum = 1
        if quorum_text is not None:
            if not quorum_text.isdigit() or not 1 <= int(quorum_text) <= QUORUM_MAX:
                raise PolicyError(
                    statement.file,
                    statement.line,
                    statement.column,
                    f"@quorum must be a whole number from 1 to {QUORUM_MAX}",
                )
            quorum = int(quorum_text)
        return PolicyMeta(name, effect, channel, quorum)

    def entities(
        self, *, run_id: str, tenant: str, task: str, tools: Sequence[ToolSpec]
    ) -> cedarpy.Entities:
        """The entity graph of one run (built once per run)."""
        items: list[dict[str, Any]] = [
            {"uid": {"type": "Thymos::Tenant", "id": tenant}, "attrs": {}, "parents": []},
            {
                "uid": {"type": "Thymos::Run", "id": run_id},
                "attrs": {"tenant": tenant, "task": task},
                "parents": [{"type": "Thymos::Tenant", "id": tenant}],
            },
        ]
        for spec in tools:
            items.append(
                {
                    "uid": {"type": "Thymos::Tool", "id": spec.name},
                    "attrs": {
                        "name": spec.name,
                        "effect": spec.effect.value,
                        "risk": spec.risk.value,
                        "source": spec.source.value,
                        "idempotent": spec.idempotent,
                    },
                    "parents": [],
                }
            )
        return cedarpy.Entities.from_json_str(json.dumps(items), self._schema)

    @property
    def reads_arguments(self) -> bool:
        """Whether any policy looks at `context.arguments` (callers may then skip encoding it)."""
        return "arguments" in self._dynamic

    def decide(self, call: PolicyCall, entities: cedarpy.Entities) -> PolicyDecision:
        """The policy decision for one call.

        Decisions are memoised on exactly the inputs the policies can see: the run, the tool,
        and those context attributes some policy reads (found by walking the policies' syntax
        trees at load). A policy set that never reads the arguments or the usage decides once per
        run and tool."""
        key = (
            call.run_id,
            call.tool.name,
            *(getattr(call, name) for name in sorted(self._dynamic)),
        )
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        decision = self.evaluate(call, entities)
        if len(self._decisions) >= DECISION_CACHE_MAX:
            self._decisions.clear()
        self._decisions[key] = decision
        return decision

    def evaluate(self, call: PolicyCall, entities: cedarpy.Entities) -> PolicyDecision:
        """Evaluate the policy set for one call with Cedar (no memo)."""
        tool = call.tool
        request = {
            "principal": {"type": "Thymos::Run", "id": call.run_id},
            "action": {"type": "Thymos::Action", "id": "invoke"},
            "resource": {"type": "Thymos::Tool", "id": tool.name},
            "context": {
                "effect": tool.effect.value,
                "effect_rank": Effect(tool.effect).rank,
                "risk": tool.risk.value,
                "risk_rank": _RISK_RANK[tool.risk],
                "arguments": call.arguments,
                "tool_calls": call.tool_calls,
                "tokens": call.tokens,
                "usd_millicents": call.usd_millicents,
            },
        }
        result = cedarpy.is_authorized(request, self._policies, entities)
        reasons = [self._meta[r] for r in result.diagnostics.reasons if r in self._meta]
        names = tuple(sorted(m.name for m in reasons))
        if not result.allowed:
            return PolicyDecision("deny", names, self.hash)
        approvals = sorted((m for m in reasons if m.channel is not None), key=lambda m: m.name)
        if approvals:
            channel = approvals[0].channel
            quorum = max(m.quorum for m in approvals if m.channel == channel)
            return PolicyDecision("suspend", names, self.hash, channel, quorum)
        return PolicyDecision("permit", names, self.hash)


DECISION_CACHE_MAX = 8192
_DYNAMIC_ATTRIBUTES = frozenset({"arguments", "tool_calls", "tokens", "usd_millicents"})
_CONTEXT_VAR = '{"Var":"context"}'
_CONTEXT_ATTRIBUTE = re.compile(r'\{"Var":"context"\},"attr":"([^"]+)"')


def _dynamic_context(policies_json: str) -> frozenset[str]:
    """The per-call context attributes the policies read. Conservative: if `context` is used
    in any way other than reading a named attribute, every per-call attribute counts."""
    compact = json.dumps(json.loads(policies_json), separators=(",", ":"))
    named = _CONTEXT_ATTRIBUTE.findall(compact)
    if len(named) != compact.count(_CONTEXT_VAR):
        return _DYNAMIC_ATTRIBUTES
    return frozenset(named) & _DYNAMIC_ATTRIBUTES


def default_policy_files() -> list[PolicyFile]:
    return [PolicyFile("default.cedar", DEFAULT_POLICIES)]
