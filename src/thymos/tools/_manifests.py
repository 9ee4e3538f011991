"""Manifest tools: one JSON file per tool in the folders of `THYMOS_TOOL_MANIFEST_DIRS`.

    {"name": "word_count", "version": "1.0.0", "description": "...",
     "effect_class": "read", "risk_class": "low",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, ...},
     "executor": {"kind": "shell", "command_template": "wc -w {path}"}}

Executors: `shell` (each `{arg}` replaced by the argument, shell-quoted, so no argument can add a
command; run in the sandbox, with the workspace writable only for `write` tools and the network
only for `external` ones), `http` (`url_template` with URL-encoded arguments, `method`,
`body_template` with JSON-escaped arguments, an `allowlist` of hosts it may reach, and
`timeout_secs`; every request goes through `http_fetch`'s address checks) and `noop`. This is
the format OpenThymos reads. A file that does not parse or validate, or a name taken already,
stops start-up naming the file, the field and the reason (`ManifestError`).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jsonschema

from thymos.core import Effect, Risk, ToolFailureCode, ToolSource, ToolSpec

from ._commands import SHELL_TIMEOUT_S_DEFAULT, SHELL_TIMEOUT_S_MAX, observed
from ._contract import ToolContext, ToolFailure, ToolOutcome
from ._http_fetch import FETCH_TIMEOUT_S, HttpFetch
from ._process import OUTPUT_BYTES_MAX

MANIFEST_BYTES_MAX = 256 * 1024
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
EFFECTS = {"pure": Effect.READ, **{e.value: e for e in Effect}}
"""`pure` (a manifest's word for a call with no effect at all) is governed as `read`."""


class ManifestError(ValueError):
    """A manifest that cannot be loaded: the file, the field and the reason."""

    def __init__(self, file: Path, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file, self.field, self.reason = file, field, reason


@dataclass(frozen=True, slots=True)
class Executor:
    kind: str
    command_template: str = ""
    url_template: str = ""
    method: str = "GET"
    body_template: str | None = None
    allowlist: tuple[str, ...] = ()
    timeout_s: float = FETCH_TIMEOUT_S


def _fill(template: str, args: Mapping[str, Any], encode: Any) -> str:
    def value(match: re.Match[str]) -> str:
        given = args.get(match.group(1))
        text = "" if given is None else given if isinstance(given, str) else json.dumps(given)
        return str(encode(text))

    return PLACEHOLDER.sub(value, template)


def _json_text(text: str) -> str:
    return json.dumps(text)[1:-1]


class ManifestTool:
    def __init__(self, spec: ToolSpec, executor: Executor, http: HttpFetch) -> None:
        self.spec = spec
        self.executor = executor
        self._http = http

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        executor = self.executor
        if executor.kind == "noop":
            return ToolOutcome({"ok": True})
        if executor.kind == "shell":
            command = _fill(executor.command_template, args, shlex.quote)
            done = await ctx.sandbox.run(
                ["bash", "-c", command],
                write=self.spec.effect.rank >= Effect.WRITE.rank,
                network=self.spec.effect.rank >= Effect.EXTERNAL.rank,
                timeout_s=executor.timeout_s,
                output_max=OUTPUT_BYTES_MAX,
            )
            return ToolOutcome(observed(done))
        url = _fill(executor.url_template, args, lambda text: quote(text, safe=""))
        host = (urlsplit(url).hostname or "").lower()
        if executor.allowlist and host not in executor.allowlist:
            raise ToolFailure(
                ToolFailureCode.ADDRESS_REFUSED,
                f"{host!r} is not in this tool's allowlist",
            )
        request: dict[str, Any] = {"url": url, "method": executor.method}
        if executor.body_template is not None:
            request["body"] = _fill(executor.body_template, args, _json_text)
            request["headers"] = {"Content-Type": "application/json"}
        return await self._http.run(request, ctx)


def _field(data: Mapping[str, Any], name: str, file: Path, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise ManifestError(file, name, "is missing")
    value = data[name]
    if not isinstance(value, kind):
        raise ManifestError(file, name, f"must be {getattr(kind, '__name__', kind)}")
    return value


def _executor(raw: Any, file: Path, properties: Iterable[str]) -> Executor:
    if not isinstance(raw, dict):
        raise ManifestError(file, "executor", "must be an object")
    kind = raw.get("kind")
    known = set(properties)

    def template(name: str) -> str:
        text = _field(raw, name, file, str)
        for used in PLACEHOLDER.findall(text):
            if used not in known:
                raise ManifestError(
                    file, f"executor.{name}", f"{{{used}}} is not a property of input_schema"
                )
        return str(text)

    if kind == "noop":
        return Executor("noop")
    if kind == "shell":
        timeout = raw.get("timeout_secs", SHELL_TIMEOUT_S_DEFAULT)
        if not isinstance(timeout, int | float) or not 0 < timeout <= SHELL_TIMEOUT_S_MAX:
            raise ManifestError(
                file, "executor.timeout_secs", f"must be a number from 1 to {SHELL_TIMEOUT_S_MAX}"
            )
        return Executor("shell", command_template=template("command_template"), timeout_s=timeout)
    if kind == "http":
        url = template("url_template")
        if urlsplit(url.replace("{", "x").replace("}", "x")).scheme not in ("http", "https"):
            raise ManifestError(file, "executor.url_template", "must be an http(s) URL")
        method = str(raw.get("method", "GET")).upper()
        if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            raise ManifestError(file, "executor.method", f"{method!r} is not an HTTP method")
        allowlist = raw.get("allowlist", [])
        if not isinstance(allowlist, list) or not all(isinstance(h, str) for h in allowlist):
            raise ManifestError(file, "executor.allowlist", "must be a list of host names")
        timeout = raw.get("timeout_secs", FETCH_TIMEOUT_S)
        if not isinstance(timeout, int | float) or not 0 < timeout <= FETCH_TIMEOUT_S:
            raise ManifestError(
                file, "executor.timeout_secs", f"must be a number from 1 to {FETCH_TIMEOUT_S:g}"
            )
        return Executor(
            "http",
            url_template=url,
            method=method,
            body_template=template("body_template") if "body_template" in raw else None,
            allowlist=tuple(h.lower() for h in allowlist),
            timeout_s=float(timeout),
        )
    raise ManifestError(file, "executor.kind", f"{kind!r} is not shell, http or noop")


def load_manifest(file: Path, http: HttpFetch) -> ManifestTool:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ManifestError(file, "(file)", f"cannot be read: {exc.strerror}") from None
    if len(raw) > MANIFEST_BYTES_MAX:
        raise ManifestError(file, "(file)", f"is over {MANIFEST_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(file, "(file)", f"is not JSON: {exc}") from None
    spec, executor = parse_manifest(data, file)
    return ManifestTool(spec, executor, http)


def parse_manifest(data: Any, file: Path) -> tuple[ToolSpec, Executor]:
    """Validate one manifest already read as JSON (a file's, or a marketplace package's
    content); `file` only names the source in a `ManifestError`. No IO."""
    if not isinstance(data, dict):
        raise ManifestError(file, "(file)", "must hold a JSON object")
    name = _field(data, "name", file, str)
    if not NAME.fullmatch(name):
        raise ManifestError(file, "name", "must be 1 to 128 of A-Z a-z 0-9 _ . -")
    _field(data, "version", file, str)
    description = _field(data, "description", file, str)
    effect_name = _field(data, "effect_class", file, str)
    if effect_name not in EFFECTS:
        raise ManifestError(file, "effect_class", f"must be one of {', '.join(EFFECTS)}")
    risk_name = _field(data, "risk_class", file, str)
    try:
        risk = Risk(risk_name)
    except ValueError:
        raise ManifestError(
            file, "risk_class", f"must be one of {', '.join(r.value for r in Risk)}"
        ) from None
    schema = _field(data, "input_schema", file, dict)
    if schema.get("type") != "object":
        raise ManifestError(file, "input_schema", 'must be a JSON Schema of "type": "object"')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ManifestError(file, "input_schema", exc.message) from None
    executor = _executor(data.get("executor"), file, (schema.get("properties") or {}).keys())
    idempotent = data.get("idempotent", False)
    spec = ToolSpec(
        name=name,
        description=description,
        input_schema=schema,
        effect=EFFECTS[effect_name],
        risk=risk,
        idempotent=bool(idempotent),
        compensable=False,
        source=ToolSource.MANIFEST,
    )
    return spec, executor


def load_manifests(
    folders: Iterable[Path], taken: Iterable[str], http: HttpFetch
) -> list[ManifestTool]:
    """Every `*.json` of the folders, in name order; `taken` are the names already registered."""
    names = {name: Path("(built-in)") for name in taken}
    tools = []
    for folder in folders:
        if not folder.is_dir():
            raise ManifestError(folder, "(folder)", "is not a folder")
        for file in sorted(folder.glob("*.json")):
            tool = load_manifest(file, http)
            if tool.spec.name in names:
                raise ManifestError(
                    file,
                    "name",
                    f"{tool.spec.name!r} is already the name of {names[tool.spec.name]}",
                )
            names[tool.spec.name] = file
            tools.append(tool)
    return tools
