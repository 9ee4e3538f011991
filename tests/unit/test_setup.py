"""Start-up checks: the root key (configured, kept or generated), exposure of an open server,
and what production mode refuses."""

from __future__ import annotations

import asyncio
import os
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
