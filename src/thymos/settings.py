"""Settings: one typed object, loaded once from `THYMOS_*` variables and command-line overrides.

Nothing below the app factory reads the environment. Invalid settings stop start-up with a clear
message (the CLI exits 2).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from thymos.cognition import (
    PROVIDER_INFOS,
    RUNNABLE_KINDS,
    Prices,
    ProviderEnv,
    base_url_problem,
    provider_info,
)
from thymos.governance import MAX_DELEGATION_DEPTH_DEFAULT, MAX_DELEGATION_DEPTH_LIMIT

MODES = ("reference", "production")
LEASE_TTL_S_DEFAULT = 15.0
LEASE_TTL_S_RANGE = (1.0, 3600.0)
DEFAULT_ADDR = "127.0.0.1:3001"
SHUTDOWN_GRACE_S_DEFAULT = 10.0

RUNS_ACTIVE_MAX_DEFAULT = 512
"""Active runs per server process; each holds an actor task, its world in memory and its feeds
(a run waiting for approval is parked and holds none)."""
MAX_STEPS_MAX_DEFAULT = 1000
MAX_STEPS_LIMIT = 10_000_000
SCRIPT_ELEMENTS_MAX_DEFAULT = 10_000
SCRIPT_ELEMENTS_LIMIT = 10_000_000
BODY_BYTES_MAX_DEFAULT = 1024 * 1024
"""1 MiB: a run request with a long mock script fits."""
BODY_BYTES_LIMIT = 256 * 1024 * 1024
SUBSCRIBERS_PER_RUN_MAX_DEFAULT = 2000
HEADER_TIMEOUT_S_DEFAULT = 10.0
"""From a connection's opening (or a request's first byte, on a kept-alive connection) to the
end of the request's headers: a real client sends its request line and headers at once."""
BODY_TIMEOUT_S_DEFAULT = 30.0
"""From the end of the headers to the end of the body: 1 MiB at the slowest link worth serving."""
SEND_TIMEOUT_S_DEFAULT = 30.0
"""How long a client may read nothing of what the server has to send (a response larger than
the buffers, a stream it stopped reading) before it is disconnected; any progress restarts it."""
IDLE_TIMEOUT_S_DEFAULT = 15.0
"""How long a kept-alive connection may sit between requests."""
CONNECTIONS_MAX_DEFAULT = 4096
"""Open connections per process. Each costs a file descriptor; start-up lowers this to fit the
process's descriptor limit, keeping room for the ledger, tools and subprocesses."""
CONNECTIONS_PER_CLIENT_MAX_DEFAULT = 256
"""Open connections from one client address: enough for a console, a CLI and a few hundred
streams; one client cannot hold every connection (behind a proxy every client is the proxy)."""


class SettingsError(ValueError):
    """A setting is invalid; the message names it and says why."""


KEY_ROLES = ("admin", "operator", "viewer")
KEY_SECRET_CHARS_MIN = 16
"""A shorter secret could be guessed; the CLI makes 44-character ones."""
KEY_RPM_MAX = 60_000
"""1,000 requests a second per key; the limiter keeps one timestamp per request in the window."""
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Key names and tenants: short, printable, safe in logs, URLs and CSV."""
KEYS_MAX = 1000


@dataclass(frozen=True, slots=True)
class ApiKeySpec:
    """One key from `THYMOS_API_KEYS`. The secret never appears in a repr or a message."""

    name: str
    tenant: str
    role: str
    secret: str = field(repr=False)
    rpm: int | None = None


def _key_spec(where: str, name: Any, tenant: Any, role: Any, secret: Any, rpm: Any) -> ApiKeySpec:
    """Validate one entry; `where` names it (position, and name once known), never its secret."""
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: the name must be 1-64 letters, digits, '.', '_' or '-'"
        )
    where = f"{where} ({name!r})"
    if not isinstance(tenant, str) or not KEY_NAME.fullmatch(tenant):
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: the tenant must be 1-64 letters, digits, '.', '_' or '-'"
        )
    if role not in KEY_ROLES:
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: the role must be one of {', '.join(KEY_ROLES)}"
        )
    if not isinstance(secret, str) or len(secret) < KEY_SECRET_CHARS_MIN:
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: the secret must be at least {KEY_SECRET_CHARS_MIN} characters"
        )
    if not secret.isascii() or not secret.isprintable() or " " in secret:
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: the secret must be printable ASCII without spaces"
        )
    if rpm is not None and (
        isinstance(rpm, bool) or not isinstance(rpm, int) or not 1 <= rpm <= KEY_RPM_MAX
    ):
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: rpm must be a whole number from 1 to {KEY_RPM_MAX}"
        )
    return ApiKeySpec(name, tenant, role, secret, rpm)


def _compact_entry(index: int, text: str) -> ApiKeySpec:
    where = f"entry {index}"
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise SettingsError(
            f"THYMOS_API_KEYS {where}: expected name:tenant:role:secret[:rpm] "
            f"(use the JSON form for secrets containing ':' or ',')"
        )
    name, tenant, role, secret = (p.strip() for p in parts[:4])
    rpm: Any = None
    if len(parts) == 5:
        rpm_text = parts[4].strip()
        # Not a number stays a string, which `_key_spec` rejects with the entry named.
        rpm = int(rpm_text) if rpm_text.isdigit() and len(rpm_text) <= 9 else rpm_text
    return _key_spec(where, name, tenant, role, secret, rpm)


def _json_entry(index: int, item: Any) -> ApiKeySpec:
    where = f"entry {index}"
    if not isinstance(item, dict):
        raise SettingsError(f"THYMOS_API_KEYS {where}: each JSON entry must be an object")
    unknown = sorted(set(item) - {"name", "tenant", "role", "key", "rpm"})
    if unknown:
        raise SettingsError(f"THYMOS_API_KEYS {where}: unknown fields {', '.join(unknown)}")
    missing = [f for f in ("name", "tenant", "role", "key") if f not in item]
    if missing:
        raise SettingsError(f"THYMOS_API_KEYS {where}: missing {', '.join(missing)}")
    return _key_spec(
        where, item["name"], item["tenant"], item["role"], item["key"], item.get("rpm")
    )


def parse_api_keys(text: str) -> tuple[ApiKeySpec, ...]:
    """Parse `THYMOS_API_KEYS`: comma-separated `name:tenant:role:secret[:rpm]` entries, or a
    JSON list of `{"name", "tenant", "role", "key", "rpm"?}` objects. Entries are numbered from 1
    in messages; no message ever contains a secret."""
    stripped = text.strip()
    if not stripped:
        return ()
    if stripped.startswith("["):
        try:
            items = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            # The decoder's message may quote the text, and the text holds secrets.
            raise SettingsError("THYMOS_API_KEYS starts with '[' but is not valid JSON") from None
        if not isinstance(items, list):
            raise SettingsError("THYMOS_API_KEYS must be a JSON list of key objects")
        specs = [_json_entry(i, item) for i, item in enumerate(items, start=1)]
    else:
        entries = [e.strip() for e in stripped.split(",")]
        specs = [_compact_entry(i, e) for i, e in enumerate(entries, start=1) if e]
    if len(specs) > KEYS_MAX:
        raise SettingsError(f"THYMOS_API_KEYS lists more than {KEYS_MAX} keys")
    seen_names: set[str] = set()
    seen_secrets: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen_names:
            raise SettingsError(f"THYMOS_API_KEYS names the key {spec.name!r} twice")
        seen_names.add(spec.name)
        if spec.secret in seen_secrets:
            raise SettingsError(
                f"THYMOS_API_KEYS gives keys {seen_secrets[spec.secret]!r} and {spec.name!r} "
                "the same secret"
            )
        seen_secrets[spec.secret] = spec.name
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3001
    data_dir: Path = Path(".thymos")
    workspace: Path = field(default_factory=Path.cwd)
    mode: str = "reference"
    default_provider: str | None = None
    """`THYMOS_DEFAULT_PROVIDER`; None: the first provider whose key is set, else the mock."""
    postgres_url: str | None = field(default=None, repr=False)
    insecure: bool = False
    shutdown_grace_s: float = SHUTDOWN_GRACE_S_DEFAULT
    keepalive_s: float = 15.0
    sqlite_synchronous: str = "NORMAL"
    log_level: str = "info"
    log_format: str = "json"
    """`THYMOS_LOG_FORMAT`: `json` (one object a line) or `text` (for a person at a terminal)."""
    metrics_token: str | None = field(default=None, repr=False)
    """`THYMOS_METRICS_TOKEN`: a bearer token that may read `/metrics` (and nothing else);
    without it only an admin (any caller of an open server) may."""
    otel_endpoint: str | None = None
    """`THYMOS_OTEL_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP/HTTP base URL
    spans are exported to (`/v1/traces` under it); unset: no tracing."""
    api_keys: tuple[ApiKeySpec, ...] = field(default=(), repr=False)
    policy_dir: Path | None = None
    root_key: str | None = field(default=None, repr=False)
    root_key_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    runs_active_max: int = RUNS_ACTIVE_MAX_DEFAULT
    max_steps_max: int = MAX_STEPS_MAX_DEFAULT
    """`THYMOS_MAX_STEPS_MAX`: the most steps a run may be given (start, branch, resume)."""
    script_elements_max: int = SCRIPT_ELEMENTS_MAX_DEFAULT
    """`THYMOS_SCRIPT_ELEMENTS_MAX`: the longest mock script a run may carry."""
    body_bytes_max: int = BODY_BYTES_MAX_DEFAULT
    """`THYMOS_BODY_BYTES_MAX`: the largest request body (413 above it)."""
    subscribers_per_run_max: int = SUBSCRIBERS_PER_RUN_MAX_DEFAULT
    """`THYMOS_SUBSCRIBERS_PER_RUN_MAX`: stream subscribers per run (429 above it)."""
    max_delegation_depth: int = MAX_DELEGATION_DEPTH_DEFAULT
    """`THYMOS_MAX_DELEGATION_DEPTH`: how deep child runs may nest (0: no delegation)."""
    header_timeout_s: float = HEADER_TIMEOUT_S_DEFAULT
    body_timeout_s: float = BODY_TIMEOUT_S_DEFAULT
    send_timeout_s: float = SEND_TIMEOUT_S_DEFAULT
    idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT
    connections_max: int = CONNECTIONS_MAX_DEFAULT
    connections_per_client_max: int = CONNECTIONS_PER_CLIENT_MAX_DEFAULT
    sandbox: bool = True
    auto_resume: bool = True
    """`THYMOS_AUTO_RESUME`: resume at start-up the runs a previous process stopped under."""
    node_id: str | None = None
    """`THYMOS_NODE_ID`: this process's name among the nodes sharing one PostgreSQL database
    (default: host name and port). A node restarted under the same name takes its runs back at
    once instead of waiting for their leases to expire."""
    lease_ttl_s: float = LEASE_TTL_S_DEFAULT
    """`THYMOS_LEASE_TTL_S`: how long a node's lease on a run lasts without a heartbeat (renewed
    every third of it); a node that dies loses its runs to another node after this long."""
    test_command: tuple[str, ...] | None = None
    http_allow: frozenset[str] = frozenset()
    tool_manifest_dirs: tuple[Path, ...] = ()
    mcp_config: Path | None = None
    providers: ProviderEnv = field(default_factory=ProviderEnv, repr=False)
    prices: Prices = field(default_factory=Prices)
    """Model prices (USD per million tokens), `THYMOS_PRICES` over the shipped table."""
    """The cognition providers' keys and endpoints as found in the environment."""
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    """Values of the environment that are secrets (provider keys, tokens, passwords, the root
    key, API key secrets): tools' outputs are redacted of them before anything is recorded."""

    @property
    def protected_paths(self) -> tuple[Path, ...]:
        """What no tool may reach, wherever it lies: the data directory (every tenant's ledger,
        API key hashes, a generated root key), a root key file and the policy directory."""
        paths = [self.data_dir, self.root_key_file, self.policy_dir]
        return tuple(p for p in paths if p is not None)

    @property
    def generated_root_key_path(self) -> Path:
        """Where a root key generated on first start is kept (reference mode only)."""
        return self.data_dir / "root_key"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def node(self) -> str:
        """This process's name among nodes sharing a database (`THYMOS_NODE_ID`, else the host
        name and port: unique on one machine, and the same after a restart)."""
        return self.node_id or f"{socket.gethostname()}:{self.port}"


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise SettingsError(f"THYMOS_ADDR must be HOST:PORT, not {text!r}")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise SettingsError(f"the port in {text!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise SettingsError(f"the port in {text!r} is out of range")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validated(settings: Settings) -> Settings:
    if settings.mode not in MODES:
        raise SettingsError(f"THYMOS_MODE must be one of {', '.join(MODES)}, not {settings.mode!r}")
    if settings.default_provider is not None:
        info = provider_info(settings.default_provider)
        if info is None or info.kind not in RUNNABLE_KINDS:
            runnable = [p.name for p in PROVIDER_INFOS if p.kind in RUNNABLE_KINDS]
            raise SettingsError(
                f"THYMOS_DEFAULT_PROVIDER {settings.default_provider!r} is not available in "
                f"this build (available: {', '.join(runnable)})"
            )
        if not settings.providers.usable(info):
            raise SettingsError(
                f"THYMOS_DEFAULT_PROVIDER {info.name!r} needs {info.key_variable} to be set"
            )
    if settings.sqlite_synchronous.upper() not in ("NORMAL", "FULL"):
        raise SettingsError("THYMOS_SQLITE_SYNCHRONOUS must be normal or full")
    if not settings.workspace.is_dir():
        raise SettingsError(f"THYMOS_WORKSPACE {str(settings.workspace)!r} is not a folder")
    if settings.shutdown_grace_s < 0 or settings.keepalive_s <= 0:
        raise SettingsError("grace and keep-alive intervals must be positive")
    if settings.policy_dir is not None and not settings.policy_dir.is_dir():
        raise SettingsError(f"THYMOS_POLICY_DIR {str(settings.policy_dir)!r} is not a folder")
    workspace = settings.workspace.resolve()
    for name, folder in (
        ("THYMOS_DATA_DIR", settings.data_dir),
        ("THYMOS_POLICY_DIR", settings.policy_dir),
    ):
        if folder is None:
            continue
        resolved = folder.resolve()
        if workspace == resolved or resolved in workspace.parents:
            raise SettingsError(
                f"THYMOS_WORKSPACE {str(settings.workspace)!r} lies inside {name} "
                f"{str(folder)!r}: tools would reach the server's own files; choose another workspace"
            )
    for number, label in (
        (settings.header_timeout_s, "THYMOS_HEADER_TIMEOUT_S"),
        (settings.body_timeout_s, "THYMOS_BODY_TIMEOUT_S"),
        (settings.send_timeout_s, "THYMOS_SEND_TIMEOUT_S"),
        (settings.idle_timeout_s, "THYMOS_IDLE_TIMEOUT_S"),
    ):
        if not 0 < number <= TIMEOUT_S_MAX:
            raise SettingsError(
                f"{label} must be more than 0 and at most {TIMEOUT_S_MAX:g} seconds"
            )
    for count, label, top in (
        (settings.runs_active_max, "THYMOS_RUNS_ACTIVE_MAX", RUNS_ACTIVE_MAX_LIMIT),
        (settings.max_steps_max, "THYMOS_MAX_STEPS_MAX", MAX_STEPS_LIMIT),
        (settings.script_elements_max, "THYMOS_SCRIPT_ELEMENTS_MAX", SCRIPT_ELEMENTS_LIMIT),
        (settings.body_bytes_max, "THYMOS_BODY_BYTES_MAX", BODY_BYTES_LIMIT),
        (settings.subscribers_per_run_max, "THYMOS_SUBSCRIBERS_PER_RUN_MAX", CONNECTIONS_LIMIT),
        (settings.connections_max, "THYMOS_CONNECTIONS_MAX", CONNECTIONS_LIMIT),
        (
            settings.connections_per_client_max,
            "THYMOS_CONNECTIONS_PER_CLIENT_MAX",
            CONNECTIONS_LIMIT,
        ),
    ):
        if not 1 <= count <= top:
            raise SettingsError(f"{label} must be a whole number from 1 to {top}")
    low, high = LEASE_TTL_S_RANGE
    if not low <= settings.lease_ttl_s <= high:
        raise SettingsError(f"THYMOS_LEASE_TTL_S must be from {low:g} to {high:g} seconds")
    if settings.log_format not in LOG_FORMATS:
        raise SettingsError(
            f"THYMOS_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {settings.log_format!r}"
        )
    if settings.log_level.upper() not in LOG_LEVELS:
        raise SettingsError(
            f"THYMOS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS).lower()}, "
            f"not {settings.log_level!r}"
        )
    if settings.metrics_token is not None and (
        len(settings.metrics_token) < KEY_SECRET_CHARS_MIN
        or not settings.metrics_token.isascii()
        or not settings.metrics_token.isprintable()
        or " " in settings.metrics_token
    ):
        raise SettingsError(
            f"THYMOS_METRICS_TOKEN must be at least {KEY_SECRET_CHARS_MIN} printable ASCII "
            "characters without spaces"
        )
    if settings.otel_endpoint is not None and not OTEL_ENDPOINT.fullmatch(settings.otel_endpoint):
        raise SettingsError(
            "THYMOS_OTEL_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) must be an http(s) URL such "
            "as http://127.0.0.1:4318"
        )
    if settings.postgres_url and settings.root_key is None and settings.root_key_file is None:
        raise SettingsError(
            "THYMOS_POSTGRES_URL is set: every node sharing the database must sign and verify "
            "writs with the same root key; set THYMOS_ROOT_KEY or THYMOS_ROOT_KEY_FILE"
        )
    if not 0 <= settings.max_delegation_depth <= MAX_DELEGATION_DEPTH_LIMIT:
        raise SettingsError(
            f"THYMOS_MAX_DELEGATION_DEPTH must be a whole number from 0 to "
            f"{MAX_DELEGATION_DEPTH_LIMIT}"
        )
    return settings


TIMEOUT_S_MAX = 3600.0
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
OTEL_ENDPOINT = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
RUNS_ACTIVE_MAX_LIMIT = 100_000
CONNECTIONS_LIMIT = 1_000_000
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,252})|[0-9a-f:.]{2,45}")
"""A host name (letters, digits, dots, hyphens) or an IP address, lowercase, without a port."""
ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def parse_hosts(
    text: str, setting: str = "THYMOS_ALLOWED_HOSTS", wildcards: bool = True
) -> tuple[str, ...]:
    """`THYMOS_ALLOWED_HOSTS`: comma-separated host names or addresses (no port), `*.example.com`
    for a domain's subdomains, or `*` for any host (`wildcards=False`: exact names only)."""
    hosts = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        name = item[2:] if item.startswith("*.") and wildcards else item
        if (item != "*" or not wildcards) and not HOST_NAME.fullmatch(name.strip("[]")):
            raise SettingsError(
                f"{setting}: {item!r} is not a host name or address (give no scheme or port)"
            )
        hosts.append(item if item.startswith("*") else item.strip("[]"))
    return tuple(hosts)


def parse_origins(text: str) -> tuple[str, ...]:
    """`THYMOS_CORS_ORIGINS`: comma-separated origins, each `scheme://host[:port]`."""
    origins = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not ORIGIN.fullmatch(item):
            raise SettingsError(
                f"THYMOS_CORS_ORIGINS: {item!r} is not an origin (http[s]://host[:port], no path)"
            )
        origins.append(item.lower())
    return tuple(origins)


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (or the mapping given), then overrides (from the command
    line; `None` means not given), validated as a whole."""
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    if "THYMOS_ADDR" in source:
        values["host"], values["port"] = parse_addr(source["THYMOS_ADDR"])
    if "THYMOS_DATA_DIR" in source:
        values["data_dir"] = Path(source["THYMOS_DATA_DIR"])
    if "THYMOS_WORKSPACE" in source:
        values["workspace"] = Path(source["THYMOS_WORKSPACE"])
    if "THYMOS_MODE" in source:
        values["mode"] = source["THYMOS_MODE"]
    if "THYMOS_DEFAULT_PROVIDER" in source:
        values["default_provider"] = source["THYMOS_DEFAULT_PROVIDER"]
    if source.get("THYMOS_POSTGRES_URL"):
        values["postgres_url"] = source["THYMOS_POSTGRES_URL"]
    if "THYMOS_SQLITE_SYNCHRONOUS" in source:
        values["sqlite_synchronous"] = source["THYMOS_SQLITE_SYNCHRONOUS"].upper()
    for name, key in (
        ("shutdown_grace_s", "THYMOS_SHUTDOWN_GRACE_S"),
        ("keepalive_s", "THYMOS_SSE_KEEPALIVE_S"),
        ("header_timeout_s", "THYMOS_HEADER_TIMEOUT_S"),
        ("body_timeout_s", "THYMOS_BODY_TIMEOUT_S"),
        ("send_timeout_s", "THYMOS_SEND_TIMEOUT_S"),
        ("idle_timeout_s", "THYMOS_IDLE_TIMEOUT_S"),
        ("lease_ttl_s", "THYMOS_LEASE_TTL_S"),
    ):
        if key in source:
            try:
                values[name] = float(source[key])
            except ValueError:
                raise SettingsError(f"{key} must be a number of seconds") from None
            if not math.isfinite(values[name]):
                raise SettingsError(f"{key} must be a number of seconds")
    for name, key in (
        ("runs_active_max", "THYMOS_RUNS_ACTIVE_MAX"),
        ("max_steps_max", "THYMOS_MAX_STEPS_MAX"),
        ("script_elements_max", "THYMOS_SCRIPT_ELEMENTS_MAX"),
        ("body_bytes_max", "THYMOS_BODY_BYTES_MAX"),
        ("subscribers_per_run_max", "THYMOS_SUBSCRIBERS_PER_RUN_MAX"),
        ("connections_max", "THYMOS_CONNECTIONS_MAX"),
        ("connections_per_client_max", "THYMOS_CONNECTIONS_PER_CLIENT_MAX"),
        ("max_delegation_depth", "THYMOS_MAX_DELEGATION_DEPTH"),
    ):
        if key in source:
            text = source[key].strip()
            if not text.isdigit() or len(text) > 9:
                raise SettingsError(f"{key} must be a whole number")
            values[name] = int(text)
    if "THYMOS_ALLOWED_HOSTS" in source:
        values["allowed_hosts"] = parse_hosts(source["THYMOS_ALLOWED_HOSTS"])
    if "THYMOS_CORS_ORIGINS" in source:
        values["cors_origins"] = parse_origins(source["THYMOS_CORS_ORIGINS"])
    if source.get("THYMOS_POLICY_DIR"):
        values["policy_dir"] = Path(source["THYMOS_POLICY_DIR"])
    if source.get("THYMOS_ROOT_KEY"):
        values["root_key"] = source["THYMOS_ROOT_KEY"]
    if source.get("THYMOS_ROOT_KEY_FILE"):
        values["root_key_file"] = Path(source["THYMOS_ROOT_KEY_FILE"])
    if "THYMOS_API_KEYS" in source:
        values["api_keys"] = parse_api_keys(source["THYMOS_API_KEYS"])
    if "THYMOS_SANDBOX" in source:
        choice = source["THYMOS_SANDBOX"].strip().lower()
        if choice not in ("on", "off"):
            raise SettingsError("THYMOS_SANDBOX must be on or off")
        values["sandbox"] = choice == "on"
    if source.get("THYMOS_NODE_ID", "").strip():
        node = source["THYMOS_NODE_ID"].strip()
        if len(node) > 128 or not node.isprintable():
            raise SettingsError("THYMOS_NODE_ID must be at most 128 printable characters")
        values["node_id"] = node
    if "THYMOS_AUTO_RESUME" in source:
        choice = source["THYMOS_AUTO_RESUME"].strip().lower()
        if choice not in ("true", "false"):
            raise SettingsError("THYMOS_AUTO_RESUME must be true or false")
        values["auto_resume"] = choice == "true"
    if source.get("THYMOS_TEST_COMMAND", "").strip():
        try:
            values["test_command"] = tuple(shlex.split(source["THYMOS_TEST_COMMAND"]))
        except ValueError as exc:
            raise SettingsError(f"THYMOS_TEST_COMMAND does not split into words: {exc}") from None
    if source.get("THYMOS_TOOL_MANIFEST_DIRS", "").strip():
        values["tool_manifest_dirs"] = tuple(
            Path(part.strip())
            for part in source["THYMOS_TOOL_MANIFEST_DIRS"].split(",")
            if part.strip()
        )
    if source.get("THYMOS_MCP_CONFIG", "").strip():
        values["mcp_config"] = Path(source["THYMOS_MCP_CONFIG"].strip())
    if source.get("THYMOS_HTTP_ALLOW", "").strip():
        values["http_allow"] = frozenset(
            parse_hosts(source["THYMOS_HTTP_ALLOW"], "THYMOS_HTTP_ALLOW", wildcards=False)
        )
    if "THYMOS_LOG_LEVEL" in source:
        values["log_level"] = source["THYMOS_LOG_LEVEL"].lower()
    if "THYMOS_LOG_FORMAT" in source:
        values["log_format"] = source["THYMOS_LOG_FORMAT"].strip().lower()
    if source.get("THYMOS_METRICS_TOKEN"):
        values["metrics_token"] = source["THYMOS_METRICS_TOKEN"]
    endpoint = (
        source.get("THYMOS_OTEL_ENDPOINT", "").strip()
        or source.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    if endpoint:
        values["otel_endpoint"] = endpoint
    values["providers"] = ProviderEnv.of(source)
    for info in PROVIDER_INFOS:
        url = values["providers"].values.get(info.base_url_variable or "")
        problem = base_url_problem(url) if url is not None else None
        if problem is not None:
            raise SettingsError(f"{info.base_url_variable}: {problem.split(' ', 1)[1]}")
    if source.get("THYMOS_PRICES", "").strip():
        try:
            values["prices"] = Prices.with_overrides(json.loads(source["THYMOS_PRICES"]))
        except ValueError as exc:
            raise SettingsError(f"THYMOS_PRICES: {exc}") from None
    values["secret_values"] = tuple(
        sorted(
            {
                value
                for name, value in source.items()
                if name.endswith(SECRET_SUFFIXES) or name in SECRET_NAMES
            }
            | {key.secret for key in values.get("api_keys", ())}
        )
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _validated(Settings(**values))


SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_PASSWORD", "_AUTH_TOKEN")
SECRET_NAMES = frozenset({"THYMOS_ROOT_KEY", "THYMOS_POSTGRES_URL", "DATABASE_URL"})
