"""The observability package on its own: log lines redacted whatever carries the secret, each
app's metrics in a registry of its own, OpenTelemetry not loaded unless tracing is on, and the
settings that configure them."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from thymos.observability import Metrics, Observer, configure_logging
from thymos.settings import SettingsError, load_settings

SECRET = "correct-horse-battery-staple"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Configure logging in a test and leave the process's logging as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def _log_everything(stream: io.StringIO) -> str:
    """Log the secret through every door: a stdlib message and its arguments, an `extra`
    field, a traceback, a structlog event's values and a bound context variable."""
    log = logging.getLogger("thymos.test.obs")
    log.info("key %s and sk-ant-%s", SECRET, "a" * 30)
    log.info("plain", extra={"seq": 7, "detail": f"token={SECRET}"})
    try:
        raise ValueError(SECRET)
    except ValueError:
        log.exception("failed")
    structlog.contextvars.bind_contextvars(run_id="r1", tenant=SECRET)
    slog = structlog.get_logger("thymos.test.obs")
    slog.info("structured", value=SECRET, nested={"k": SECRET}, count=3)
    return stream.getvalue()


def test_every_json_line_is_redacted_and_carries_the_bound_context(
    restored_logging: None,
) -> None:
    """In JSON, each line is one object; the secret never appears (message, arguments, extra
    fields, traceback, structured values, bound context), and the bound run id and an extra
    `seq` are fields of the lines logged after they were bound."""
    stream = io.StringIO()
    configure_logging(log_format="json", level="info", secrets=[SECRET], stream=stream)
    text = _log_everything(stream)
    assert SECRET not in text and "sk-ant-aaa" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 4
    assert all({"event", "level", "logger", "timestamp"} <= set(line) for line in lines)
    assert lines[1]["seq"] == 7
    assert "[REDACTED]" in lines[2]["exception"]
    assert lines[3]["run_id"] == "r1" and lines[3]["tenant"] == "[REDACTED]"
    assert lines[3]["count"] == 3


def test_every_text_line_is_redacted(restored_logging: None) -> None:
    """The text format redacts alike."""
    stream = io.StringIO()
    configure_logging(log_format="text", level="info", secrets=[SECRET], stream=stream)
    text = _log_everything(stream)
    assert SECRET not in text and "sk-ant-aaa" not in text
    assert "structured" in text and "run_id=r1" in text


def test_below_the_level_nothing_is_written(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(log_format="json", level="warning", secrets=[], stream=stream)
    logging.getLogger("thymos.test.obs").info("hidden")
    structlog.get_logger("thymos.test.obs").info("hidden too")
    logging.getLogger("thymos.test.obs").warning("shown")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["shown"]


def _entry(kind: str, **body: object) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, body=body)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_each_observer_counts_in_its_own_registry() -> None:
    """Two observers in one process (two apps) never share or collide on a metric; durable
    entries are counted by kind, rejections by reason, executions by tool and outcome."""
    one, two = Observer(), Observer()
    one.durable(
        [
            _entry("intent"),
            _entry("rejection", reason="policy_denied", tool="kv_set"),
            _entry("commit", tool="fs_read"),
            _entry("tool_failure", tool="fs_read", error={"code": "not_found"}),
            _entry("run_ended", status="completed", terminated_by="final_answer"),
        ],
        0.001,
    )
    m = one.metrics
    assert _value(m, "thymos_intents_proposed_total") == 1
    assert _value(m, "thymos_rejections_total", reason="policy_denied") == 1
    assert _value(m, "thymos_decisions_total", outcome="executed") == 2
    assert _value(m, "thymos_tool_executions_total", tool="fs_read", outcome="not_found") == 1
    assert (
        _value(m, "thymos_runs_ended_total", status="completed", terminated_by="final_answer") == 1
    )
    assert _value(m, "thymos_ledger_entries_total", kind="intent") == 1
    assert _value(two.metrics, "thymos_intents_proposed_total") == 0
    assert one.metrics.registry is not two.metrics.registry


def test_opentelemetry_is_not_imported_unless_tracing_is_on(tmp_path: Path) -> None:
    """Building the app without an endpoint loads neither the OpenTelemetry SDK nor its
    exporter (tracing costs nothing when off). The API package itself is FastAPI's import."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    code = (
        "import sys\n"
        "from thymos.api import create_app\n"
        "from thymos.settings import load_settings\n"
        f"create_app(load_settings({{'THYMOS_DATA_DIR': {str(tmp_path / 'data')!r}, "
        f"'THYMOS_WORKSPACE': {str(workspace)!r}}}))\n"
        "loaded = sorted(m for m in sys.modules\n"
        "    if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_observability_settings_are_read_and_checked(tmp_path: Path) -> None:
    """`THYMOS_LOG_FORMAT` is json or text (json by default); `THYMOS_METRICS_TOKEN` is a
    secret (redacted, never in a repr) of at least 16 characters; the OTLP endpoint comes from
    `THYMOS_OTEL_ENDPOINT`, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, and must be a URL."""
    base = {"THYMOS_WORKSPACE": str(tmp_path), "THYMOS_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    base["THYMOS_WORKSPACE"] = str(workspace)
    settings = load_settings(base)
    assert settings.log_format == "json" and settings.otel_endpoint is None
    assert load_settings({**base, "THYMOS_LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(SettingsError, match="THYMOS_LOG_FORMAT"):
        load_settings({**base, "THYMOS_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="THYMOS_LOG_LEVEL"):
        load_settings({**base, "THYMOS_LOG_LEVEL": "loud"})
    token = "metrics-token-0123456789"
    keyed = load_settings({**base, "THYMOS_METRICS_TOKEN": token})
    assert keyed.metrics_token == token and token in keyed.secret_values
    assert token not in repr(keyed)
    with pytest.raises(SettingsError, match="THYMOS_METRICS_TOKEN"):
        load_settings({**base, "THYMOS_METRICS_TOKEN": "short"})
    standard = load_settings({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert standard.otel_endpoint == "http://127.0.0.1:4318"
    ours = load_settings(
        {
            **base,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "THYMOS_OTEL_ENDPOINT": "http://collector:4318/",
        }
    )
    assert ours.otel_endpoint == "http://collector:4318/"
    with pytest.raises(SettingsError, match="OTEL"):
        load_settings({**base, "THYMOS_OTEL_ENDPOINT": "collector:4318"})
