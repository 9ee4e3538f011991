"""Parsing and validation of `THYMOS_API_KEYS`, and that secrets never leak from settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thymos.api._setup import check_exposure
from thymos.settings import (
    KEY_RPM_MAX,
    ApiKeySpec,
    SettingsError,
    load_settings,
    parse_api_keys,
)

SECRET = "s3cr3t-0123456789abcdef"
OTHER = "another-0123456789abcdef"


def _env(keys: str, tmp_path: Path) -> dict[str, str]:
    return {"THYMOS_API_KEYS": keys, "THYMOS_WORKSPACE": str(tmp_path)}


def test_compact_form_parses_entries_with_and_without_rpm() -> None:
    """`name:tenant:role:secret[:rpm]` entries separated by commas parse in order; blanks
    around entries and an empty trailing entry are ignored; rpm is optional."""
    specs = parse_api_keys(f" ops:acme:operator:{SECRET}:30 , view:acme:viewer:{OTHER}, ")
    assert specs == (
        ApiKeySpec("ops", "acme", "operator", SECRET, 30),
        ApiKeySpec("view", "acme", "viewer", OTHER, None),
    )


def test_json_form_parses_objects_with_optional_rpm() -> None:
    """A JSON list of {name, tenant, role, key, rpm?} objects parses; rpm may be absent or
    null; secrets may hold ':' and ',' in this form."""
    text = json.dumps(
        [
            {"name": "a", "tenant": "t", "role": "admin", "key": "with:colon,and-comma-1234"},
            {"name": "b", "tenant": "t", "role": "viewer", "key": SECRET, "rpm": 5},
            {"name": "c", "tenant": "u", "role": "operator", "key": OTHER, "rpm": None},
        ]
    )
    specs = parse_api_keys(text)
    assert [(s.name, s.tenant, s.role, s.rpm) for s in specs] == [
        ("a", "t", "admin", None),
        ("b", "t", "viewer", 5),
        ("c", "u", "operator", None),
    ]
    assert specs[0].secret == "with:colon,and-comma-1234"


def test_empty_value_means_no_keys() -> None:
    """An empty or blank THYMOS_API_KEYS configures no keys (the server stays open)."""
    assert parse_api_keys("") == ()
    assert parse_api_keys("   ") == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"ops:acme:root:{SECRET}", "role must be one of admin, operator, viewer"),
        ("ops:acme:operator:short", "at least 16 characters"),
        (f"ops:acme:operator:{SECRET}:0", "rpm must be"),
        (f"ops:acme:operator:{SECRET}:lots", "rpm must be"),
        (f"ops:acme:operator:{SECRET}:{KEY_RPM_MAX + 1}", "rpm must be"),
        (f"ops:acme:{SECRET}", "expected name:tenant:role:secret[:rpm]"),
        (f"ops:acme:operator:{SECRET}:1:extra", "expected name:tenant:role:secret[:rpm]"),
        (f"ops:acme:operator:{SECRET},ops:acme:viewer:{OTHER}", "names the key 'ops' twice"),
        (f"a:t:operator:{SECRET},b:t:viewer:{SECRET}", "the same secret"),
        (f"bad name:t:operator:{SECRET}", "the name must be"),
        (f"ops:two words:operator:{SECRET}", "the tenant must be"),
        (f"ops:acme:operator:{SECRET} x", "printable ASCII without spaces"),
        (f'[{{"name": "a", "tenant": "t", "role": "admin", "key": "{SECRET}", "x": 1}}]', "x"),
        (f'[{{"name": "a", "tenant": "t", "role": "admin", "secret": "{SECRET}"}}]', "secret"),
        (
            f'[{{"name": "a", "tenant": "t", "role": "admin", "key": "{SECRET}", "rpm": true}}]',
            "rpm",
        ),
        (f'[{{"name": "a", "tenant": "t", "role": "admin", "key": "{SECRET}"', "not valid JSON"),
        (f'{{"name": "a", "key": "{SECRET}"}}', "expected name:tenant:role:secret"),
        ('["a"]', "must be an object"),
    ],
)
def test_invalid_entries_are_rejected_naming_the_entry_but_never_the_secret(
    text: str, fragment: str
) -> None:
    """Each invalid value raises SettingsError whose message says what is wrong (and, once the
    name is known, names the entry) and never contains a secret given in the value."""
    with pytest.raises(SettingsError) as caught:
        parse_api_keys(text)
    message = str(caught.value)
    assert fragment in message
    assert SECRET not in message
    assert OTHER not in message
    assert "THYMOS_API_KEYS" in message


def test_error_names_the_entry_position_and_name() -> None:
    """The message for a bad second entry names entry 2 and its key name."""
    with pytest.raises(SettingsError, match=r"entry 2 \('bad'\)"):
        parse_api_keys(f"good:t:viewer:{SECRET},bad:t:nobody:{OTHER}")


def test_settings_load_keys_and_never_show_secrets_in_repr(tmp_path: Path) -> None:
    """load_settings reads THYMOS_API_KEYS into `api_keys`; neither the Settings repr nor a
    key spec's repr contains the secret."""
    settings = load_settings(_env(f"ops:acme:operator:{SECRET}:10", tmp_path))
    assert settings.api_keys == (ApiKeySpec("ops", "acme", "operator", SECRET, 10),)
    assert SECRET not in repr(settings)
    assert SECRET not in repr(settings.api_keys[0])
    assert "ops" in repr(settings.api_keys[0])


def test_invalid_keys_stop_settings_loading(tmp_path: Path) -> None:
    """An invalid THYMOS_API_KEYS makes load_settings raise SettingsError (the CLI exits 2)."""
    with pytest.raises(SettingsError, match="role"):
        load_settings(_env(f"ops:acme:superuser:{SECRET}", tmp_path))


def test_keys_allow_a_non_loopback_bind_that_an_open_server_refuses(tmp_path: Path) -> None:
    """Without keys (in the environment or the key store), binding 0.0.0.0 needs --insecure;
    with keys configured, or with --insecure, it is allowed."""
    data = {"THYMOS_WORKSPACE": str(tmp_path), "THYMOS_DATA_DIR": str(tmp_path / "data")}
    open_server = load_settings({**data, "THYMOS_ADDR": "0.0.0.0:3001"})
    with pytest.raises(SettingsError, match="refusing to bind"):
        check_exposure(open_server)
    check_exposure(load_settings({**data, "THYMOS_ADDR": "0.0.0.0:3001"}, insecure=True))
    guarded = load_settings(
        {**_env(f"ops:acme:operator:{SECRET}", tmp_path), **data, "THYMOS_ADDR": "0.0.0.0:3001"}
    )
    check_exposure(guarded)
    assert guarded.host == "0.0.0.0"


@pytest.mark.parametrize(
    "url", ["ftp://host/v1", "http://", "http://h /v1", "http://u:p@host/v1", "http://h:x/v1"]
)
def test_a_provider_endpoint_that_is_not_a_plain_url_stops_start_up(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"OPENAI_BASE_URL": url})
    assert "OPENAI_BASE_URL" in str(caught.value)
    assert load_settings({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}).providers.values
