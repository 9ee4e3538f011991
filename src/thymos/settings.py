"""Settings: one typed object, loaded once from `THYMOS_*` variables and command-line overrides.

Nothing below the app factory reads the environment. Invalid settings stop start-up with a clear
message (the CLI exits 2).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("reference", "production")
DEFAULT_ADDR = "127.0.0.1:3001"
SHUTDOWN_GRACE_S_DEFAULT = 10.0


class SettingsError(ValueError):
    """A setting is invalid; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3001
    data_dir: Path = Path(".thymos")
    workspace: Path = field(default_factory=Path.cwd)
    mode: str = "reference"
    default_provider: str = "mock"
    postgres_url: str | None = field(default=None, repr=False)
    insecure: bool = False
    shutdown_grace_s: float = SHUTDOWN_GRACE_S_DEFAULT
    keepalive_s: float = 15.0
    sqlite_synchronous: str = "NORMAL"
    log_level: str = "info"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"


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
    if settings.default_provider != "mock":
        raise SettingsError(
            f"THYMOS_DEFAULT_PROVIDER {settings.default_provider!r} is not available in this build (only mock)"
        )
    if settings.sqlite_synchronous.upper() not in ("NORMAL", "FULL"):
        raise SettingsError("THYMOS_SQLITE_SYNCHRONOUS must be normal or full")
    if not settings.workspace.is_dir():
        raise SettingsError(f"THYMOS_WORKSPACE {str(settings.workspace)!r} is not a folder")
    if settings.shutdown_grace_s < 0 or settings.keepalive_s <= 0:
        raise SettingsError("grace and keep-alive intervals must be positive")
    if settings.mode == "production":
        raise SettingsError(
            "production mode needs API keys and a persistent root key, which this build does not have yet; use reference mode"
        )
    if not settings.insecure and not is_loopback(settings.host):
        raise SettingsError(
            f"refusing to bind an open server (no API keys) to {settings.host}; bind to loopback or pass --insecure"
        )
    return settings


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
    ):
        if key in source:
            try:
                values[name] = float(source[key])
            except ValueError:
                raise SettingsError(f"{key} must be a number of seconds") from None
    if "THYMOS_LOG_LEVEL" in source:
        values["log_level"] = source["THYMOS_LOG_LEVEL"].lower()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _validated(Settings(**values))
