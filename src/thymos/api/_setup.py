"""Start-up checks and loading of authority and capabilities: the root key, the policy set and
the tools (built-in and manifest).

Runs when the app is built, before the server listens, so a bad policy or a missing key stops
`thymos serve` with a clear message (exit code 2) instead of failing later.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import biscuit_auth as biscuit

from thymos.governance import (
    PolicyError,
    PolicyFile,
    PolicySet,
    WritError,
    default_policy_files,
    key_pair,
    new_root_key,
    private_key_from_hex,
)
from thymos.settings import Settings, SettingsError, is_loopback
from thymos.tools import (
    HttpFetch,
    McpServerConfig,
    ToolRegistry,
    builtin_tools,
    load_manifests,
    load_mcp_config,
)

log = logging.getLogger("thymos.api")

POLICY_FILE_BYTES_MAX = 1024 * 1024


def load_tools(settings: Settings) -> ToolRegistry:
    """The built-in tools and every manifest tool of THYMOS_TOOL_MANIFEST_DIRS (`ManifestError`
    names the file, the field and the reason of the first that cannot be loaded)."""
    registry = builtin_tools(settings.test_command, settings.http_allow)
    http = registry.get("http_fetch")
    assert isinstance(http, HttpFetch)
    for tool in load_manifests(settings.tool_manifest_dirs, registry.specs(), http):
        registry.register(tool)
    return registry


def load_mcp(settings: Settings) -> list[McpServerConfig]:
    """The MCP servers of THYMOS_MCP_CONFIG (none when unset)."""
    return [] if settings.mcp_config is None else load_mcp_config(settings.mcp_config)


def load_policy(settings: Settings) -> PolicySet:
    """The policy set from THYMOS_POLICY_DIR (every `*.cedar` file), or the shipped default."""
    if settings.policy_dir is None:
        return PolicySet(default_policy_files())
    files = []
    for path in sorted(settings.policy_dir.glob("*.cedar")):
        if path.stat().st_size > POLICY_FILE_BYTES_MAX:
            raise PolicyError(path.name, 1, 1, f"the file is over {POLICY_FILE_BYTES_MAX} bytes")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PolicyError(path.name, 1, 1, "the file is not UTF-8 text") from None
        files.append(PolicyFile(path.name, text))
    if not files:
        raise PolicyError(str(settings.policy_dir), 1, 1, "THYMOS_POLICY_DIR holds no *.cedar file")
    return PolicySet(files)


def load_root_key(settings: Settings) -> biscuit.KeyPair:
    """The configured root key, the one kept in the data directory, or (reference mode, first
    start) a new one written there with owner-only permissions."""
    try:
        if settings.root_key is not None:
            return key_pair(private_key_from_hex(settings.root_key))
        if settings.root_key_file is not None:
            return key_pair(private_key_from_hex(settings.root_key_file.read_text()))
        path = settings.generated_root_key_path
        if path.exists():
            return key_pair(private_key_from_hex(path.read_text()))
    except OSError as exc:
        raise SettingsError(f"cannot read the root key: {exc}") from None
    except WritError as exc:
        raise SettingsError(str(exc)) from None
    if settings.mode == "production":
        raise SettingsError(
            "production mode needs a persistent root key: set THYMOS_ROOT_KEY or THYMOS_ROOT_KEY_FILE "
            f"(or keep one at {path})"
        )
    pair = new_root_key()
    _write_secret(path, bytes(pair.private_key.to_bytes()).hex())
    return pair


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")


def check_exposure(settings: Settings, *, stored_keys: int | None = None) -> None:
    """An open server (no API keys in the environment or the key store) binds only to loopback
    unless `--insecure`; production refuses to start without API keys and a durable ledger.
    `stored_keys`: how many keys the (shared) database holds; else the SQLite file is read."""
    if stored_keys is None:
        stored_keys = _stored_key_count(settings.sqlite_path)
    has_keys = bool(settings.api_keys) or stored_keys > 0
    if not has_keys and not settings.insecure and not is_loopback(settings.host):
        raise SettingsError(
            f"refusing to bind an open server (no API keys) to {settings.host}; bind to loopback or pass --insecure"
        )
    if settings.mode != "production":
        return
    if not settings.postgres_url and settings.sqlite_synchronous.upper() != "FULL":
        raise SettingsError(
            "production mode needs a durable ledger: set THYMOS_SQLITE_SYNCHRONOUS=full"
        )
    if has_keys:
        return
    raise SettingsError(
        "production mode needs API keys: set THYMOS_API_KEYS or run `thymos keys create`"
    )


def warn_about_workspace(settings: Settings) -> None:
    """Say so when the server's own files lie inside the workspace. Tools cannot reach them
    (they are protected wherever they lie), but a workspace is also what people copy, commit and
    hand to other programs."""
    workspace = settings.workspace.resolve()
    for path in settings.protected_paths:
        resolved = path.resolve()
        if workspace in resolved.parents:
            log.warning(
                "%s lies inside the workspace %s; no tool can reach it, but consider keeping the "
                "server's files outside the workspace (THYMOS_DATA_DIR, THYMOS_WORKSPACE)",
                resolved,
                workspace,
            )


def _stored_key_count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])
