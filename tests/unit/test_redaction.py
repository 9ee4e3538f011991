"""Redaction of secrets and credential-shaped values from what tools return."""

from __future__ import annotations

import pytest

from thymos.core import REDACTED, Redactor
from thymos.settings import load_settings

SHAPES = [
    "sk-ant-api03-" + "a" * 40,
    "sk-proj-" + "B" * 30,
    "ghp_" + "c" * 36,
    "xoxb-1234567890-abcdef",
    "AKIAABCDEFGHIJKLMNOP",
    "AIza" + "d" * 35,
    "glpat-" + "e" * 20,
    "Bearer " + "f" * 30,
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
]


@pytest.mark.parametrize("secret", SHAPES)
def test_credential_shaped_values_are_redacted_wherever_they_sit(secret: str) -> None:
    redactor = Redactor()
    value = {"out": f"x {secret} y", "list": [secret], secret: 1, "n": 5, "ok": True}
    redacted = redactor.redact(value)
    assert secret not in repr(redacted)
    assert redacted["out"] == f"x {REDACTED} y"
    assert (redacted["n"], redacted["ok"]) == (5, True)


def test_the_servers_secrets_are_redacted_and_short_or_ordinary_text_is_not() -> None:
    redactor = Redactor(["correct-horse-battery", "abc"])
    assert redactor.text("pw=correct-horse-battery;") == f"pw={REDACTED};"
    assert redactor.text("abc sk-short") == "abc sk-short"


def test_settings_collect_the_secrets_of_the_environment() -> None:
    settings = load_settings(
        {
            "ANTHROPIC_API_KEY": "sk-ant-xyz-0123456789",
            "GITHUB_TOKEN": "token-value-1234",
            "DB_PASSWORD": "pass-word-1234",
            "THYMOS_API_KEYS": "a:t:admin:abcdefghijklmnop-secret",
            "HOME": "/root",
        }
    )
    assert set(settings.secret_values) == {
        "sk-ant-xyz-0123456789",
        "token-value-1234",
        "pass-word-1234",
        "abcdefghijklmnop-secret",
    }
    assert "sk-ant" not in repr(settings)


def test_log_records_are_redacted_message_arguments_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from thymos.cli._logs import redact_logs

    previous = logging.getLogRecordFactory()
    try:
        redact_logs(["correct-horse-battery"])
        log = logging.getLogger("thymos.test")
        with caplog.at_level(logging.INFO, logger="thymos.test"):
            log.info("key %s and sk-ant-%s", "correct-horse-battery", "a" * 30)
            try:
                raise ValueError("correct-horse-battery")
            except ValueError:
                log.exception("failed")
        text = caplog.text
        assert "correct-horse-battery" not in text and "sk-ant-aaa" not in text
        assert text.count("[REDACTED]") >= 3
    finally:
        logging.setLogRecordFactory(previous)
