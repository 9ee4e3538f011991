"""Start-up checks: the root key (configured, kept or generated), exposure of an open server,
and what production mode refuses."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from thymos.api._setup import check_exposure, load_root_key
from thymos.governance import new_root_key, public_key_hex
from thymos.settings import Settings, SettingsError, load_settings
from thymos.storage import SqliteKeyStore, SqliteLedgerStore

SECRET = "s3cret-value-0123456789"


def _settings(tmp_path: Path, **env: str) -> Settings:
    base = {"THYMOS_WORKSPACE": str(tmp_path), "THYMOS_DATA_DIR": str(tmp_path / "data")}
    return load_settings({**base, **env})


def test_reference_mode_generates_a_root_key_once_and_keeps_it(tmp_path: Path) -> None:
    """Without a configured key, the first start writes one (owner-only) into the data directory
    and every later start uses the same key."""
    settings = _settings(tmp_path)
    first = load_root_key(settings)
    path = settings.generated_root_key_path
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_root_key(settings)
    assert public_key_hex(first.public_key) == public_key_hex(second.public_key)


def test_a_configured_root_key_is_used_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    """THYMOS_ROOT_KEY (hex) and THYMOS_ROOT_KEY_FILE are used as given; anything that is not a
    hex Ed25519 private key stops start-up, without echoing the value."""
    pair = new_root_key()
    secret_hex = bytes(pair.private_key.to_bytes()).hex()
    loaded = load_root_key(_settings(tmp_path, THYMOS_ROOT_KEY=secret_hex))
    assert public_key_hex(loaded.public_key) == public_key_hex(pair.public_key)
    key_file = tmp_path / "root.hex"
    key_file.write_text(secret_hex + "\n")
    from_file = load_root_key(_settings(tmp_path, THYMOS_ROOT_KEY_FILE=str(key_file)))
    assert public_key_hex(from_file.public_key) == public_key_hex(pair.public_key)
    with pytest.raises(SettingsError) as refused:
        load_root_key(_settings(tmp_path, THYMOS_ROOT_KEY="zz-not-hex"))
    assert "zz-not-hex" not in str(refused.value)


def test_production_refuses_to_generate_a_root_key(tmp_path: Path) -> None:
    """Production mode never generates a root key: one must be configured or already kept."""
    settings = _settings(tmp_path, THYMOS_MODE="production")
    with pytest.raises(SettingsError, match="persistent root key"):
        load_root_key(settings)
    assert not settings.generated_root_key_path.exists()


def test_production_needs_api_keys_and_a_durable_ledger(tmp_path: Path) -> None:
    """Production refuses an open server and a ledger that only survives process crashes."""
    with pytest.raises(SettingsError, match="durable ledger"):
        check_exposure(_settings(tmp_path, THYMOS_MODE="production"))
    with pytest.raises(SettingsError, match="API keys"):
        check_exposure(
            _settings(tmp_path, THYMOS_MODE="production", THYMOS_SQLITE_SYNCHRONOUS="full")
        )
    check_exposure(
        _settings(
            tmp_path,
            THYMOS_MODE="production",
            THYMOS_SQLITE_SYNCHRONOUS="full",
            THYMOS_API_KEYS=f"ops:acme:admin:{SECRET}",
        )
    )


def test_keys_in_the_key_store_count_as_configured(tmp_path: Path) -> None:
    """A key created with `thymos keys create` (stored, not in the environment) lets the server
    bind a non-loopback address, as keys in THYMOS_API_KEYS do."""
    settings = _settings(tmp_path, THYMOS_ADDR="0.0.0.0:3001")
    with pytest.raises(SettingsError, match="refusing to bind"):
        check_exposure(settings)

    async def create() -> None:
        store = SqliteLedgerStore(settings.sqlite_path)
        await store.open()
        try:
            await SqliteKeyStore(store).create(
                name="ops", tenant="acme", role="admin", secret=SECRET, rpm=None, source="cli"
            )
        finally:
            await store.close()

    asyncio.run(create())
    check_exposure(settings)


def test_serve_in_production_without_keys_exits_2_with_a_reason(tmp_path: Path) -> None:
    """`thymos serve` in production mode with nothing configured stops by itself with exit code
    2 and a message naming what is missing."""
    env = {
        **os.environ,
        "THYMOS_MODE": "production",
        "THYMOS_DATA_DIR": str(tmp_path / "data"),
        "THYMOS_WORKSPACE": str(tmp_path),
        "THYMOS_ADDR": "127.0.0.1:0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "thymos", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "production mode needs" in done.stderr


@pytest.mark.parametrize("inside", ["THYMOS_DATA_DIR", "THYMOS_POLICY_DIR"])
def test_a_workspace_inside_the_servers_own_folders_is_refused(tmp_path: Path, inside: str) -> None:
    """Every tool would reach the server's own files from such a workspace: start-up refuses it,
    naming both settings."""
    folder = tmp_path / "own"
    (folder / "ws").mkdir(parents=True)
    env = {"THYMOS_WORKSPACE": str(folder / "ws"), inside: str(folder)}
    if inside == "THYMOS_POLICY_DIR":
        env["THYMOS_DATA_DIR"] = str(tmp_path / "data")
    with pytest.raises(SettingsError, match=f"THYMOS_WORKSPACE .* lies inside {inside}"):
        load_settings(env)
    with pytest.raises(SettingsError, match="lies inside THYMOS_DATA_DIR"):
        load_settings({"THYMOS_WORKSPACE": str(folder), "THYMOS_DATA_DIR": str(folder)})


def test_the_servers_own_files_are_the_protected_paths(tmp_path: Path) -> None:
    """The data directory, a root key file and the policy directory are what tools may not
    reach; unset ones are not listed."""
    (tmp_path / "policies").mkdir()
    settings = _settings(
        tmp_path,
        THYMOS_ROOT_KEY_FILE=str(tmp_path / "key"),
        THYMOS_POLICY_DIR=str(tmp_path / "policies"),
    )
    assert settings.protected_paths == (
        tmp_path / "data",
        tmp_path / "key",
        tmp_path / "policies",
    )
    assert _settings(tmp_path).protected_paths == (tmp_path / "data",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"THYMOS_ALLOWED_HOSTS": "http://example.com"}, "not a host name"),
        ({"THYMOS_ALLOWED_HOSTS": "example.com:80"}, "not a host name"),
        ({"THYMOS_CORS_ORIGINS": "example.com"}, "not an origin"),
        ({"THYMOS_CORS_ORIGINS": "https://example.com/app"}, "not an origin"),
        ({"THYMOS_CORS_ORIGINS": "*"}, "not an origin"),
        ({"THYMOS_HEADER_TIMEOUT_S": "0"}, "THYMOS_HEADER_TIMEOUT_S"),
        ({"THYMOS_BODY_TIMEOUT_S": "nan"}, "THYMOS_BODY_TIMEOUT_S"),
        ({"THYMOS_IDLE_TIMEOUT_S": "-1"}, "THYMOS_IDLE_TIMEOUT_S"),
        ({"THYMOS_RUNS_ACTIVE_MAX": "0"}, "THYMOS_RUNS_ACTIVE_MAX"),
        ({"THYMOS_CONNECTIONS_MAX": "many"}, "THYMOS_CONNECTIONS_MAX"),
        ({"THYMOS_CONNECTIONS_PER_CLIENT_MAX": "-3"}, "THYMOS_CONNECTIONS_PER_CLIENT_MAX"),
        ({"THYMOS_LEASE_TTL_S": "0.5"}, "THYMOS_LEASE_TTL_S"),
        ({"THYMOS_LEASE_TTL_S": "soon"}, "THYMOS_LEASE_TTL_S"),
        ({"THYMOS_NODE_ID": "x" * 129}, "THYMOS_NODE_ID"),
        (
            {"THYMOS_POSTGRES_URL": "postgresql://postgres@127.0.0.1/thymos"},
            "same root key",
        ),
    ],
)
def test_bad_edge_settings_stop_start_up_naming_the_setting(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """Host and origin lists, timeouts and limits are validated at start-up with a message
    naming the setting."""
    with pytest.raises(SettingsError, match=message):
        _settings(tmp_path, **env)


def test_edge_settings_are_read_as_given(tmp_path: Path) -> None:
    """Hosts are lowercased (brackets dropped), origins kept exactly (lowercased), numbers
    parsed."""
    settings = _settings(
        tmp_path,
        THYMOS_ALLOWED_HOSTS="API.example.com, *.corp.example, [::1], *",
        THYMOS_CORS_ORIGINS="https://Console.example.com,http://localhost:5173",
        THYMOS_RUNS_ACTIVE_MAX="8",
        THYMOS_HEADER_TIMEOUT_S="2.5",
        THYMOS_CONNECTIONS_PER_CLIENT_MAX="9",
    )
    assert settings.allowed_hosts == ("api.example.com", "*.corp.example", "::1", "*")
    assert settings.cors_origins == ("https://console.example.com", "http://localhost:5173")
    assert (settings.runs_active_max, settings.header_timeout_s) == (8, 2.5)
    assert settings.connections_per_client_max == 9


def test_cluster_settings_are_read_and_the_node_defaults_to_host_and_port(tmp_path: Path) -> None:
    """A node's name is `THYMOS_NODE_ID`, else the host name and port (the same after a
    restart); the lease time to live is read in seconds."""
    named = _settings(
        tmp_path,
        THYMOS_NODE_ID="node-7",
        THYMOS_LEASE_TTL_S="4.5",
        THYMOS_POSTGRES_URL="postgresql://postgres@127.0.0.1/thymos",
        THYMOS_ROOT_KEY=bytes(new_root_key().private_key.to_bytes()).hex(),
    )
    assert (named.node, named.lease_ttl_s) == ("node-7", 4.5)
    default = _settings(tmp_path)
    assert default.node.endswith(f":{default.port}")
    assert default.node.split(":")[0]


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thymos", "serve"],
        env={
            **os.environ,
            "THYMOS_DATA_DIR": str(tmp_path / "data"),
            "THYMOS_WORKSPACE": str(tmp_path),
            "THYMOS_ADDR": "127.0.0.1:0",
            "THYMOS_ROOT_KEY": bytes(new_root_key().private_key.to_bytes()).hex(),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unusable_postgres_url_stops_start_up_saying_why_and_never_falls_back(
    tmp_path: Path,
) -> None:
    """A URL naming a port where no database listens: exit 2, a message naming the database
    and without the password; no SQLite file is created behind the operator's back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        done = _serve(
            tmp_path, THYMOS_POSTGRES_URL=f"postgresql://thymos:hunter2@127.0.0.1:{port}/ledger"
        )
    assert done.returncode == 2, done.stderr
    assert "ledger" in done.stderr and str(port) in done.stderr, done.stderr
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "ledger.sqlite3").exists()


def test_a_postgres_url_without_the_driver_installed_stops_start_up_naming_the_extra(
    tmp_path: Path,
) -> None:
    """As when the `postgres` extra is not installed: `import psycopg` fails (a stand-in
    package on the path raises ImportError). Exit 2 and a message saying what to install."""
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no psycopg here', name='psycopg')\n")
    done = _serve(
        tmp_path,
        THYMOS_POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/postgres",
        PYTHONPATH=str(tmp_path / "shadow"),
    )
    assert done.returncode == 2, done.stderr
    assert "thymos[postgres]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
