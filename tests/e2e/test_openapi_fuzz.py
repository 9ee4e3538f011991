"""/openapi.json describes the live server, checked two ways (issue 6, finding 7).

- What the document says: every answer the edge can give is documented on every operation
  (401 and 403 included), security follows the gateway (none while the server is open, a
  bearer key on every operation but /health and /ready once a key exists, which the server
  enforces), and parameters and bodies are typed as the server reads them.
- What the server does: Schemathesis (`--checks all`: no 5xx, status codes, content types,
  headers and bodies as documented, schema-valid requests accepted, schema-invalid ones
  refused, authentication never ignored) against the real `thymos serve`, open and keyed.

The fuzzing uses a fixed seed so that CI is repeatable; `THYMOS_FUZZ_SEED` and
`THYMOS_FUZZ_EXAMPLES` explore further locally.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, SECRETS
from tests.e2e._harness import ServerProcess, assert_error
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

SCHEMATHESIS = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")
PUBLIC = {("/health", "get"), ("/ready", "get")}
EDGE_STATUSES = {"400", "403", "408", "429", "431"}
FUZZ_TIMEOUT_S = 900


def _document(server: ServerProcess, **headers: str) -> dict[str, Any]:
    response = server.client().get("/openapi.json", headers=headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_the_document_lists_every_answer_and_types_parameters_as_read(
    server: ServerProcess,
) -> None:
    """Every operation documents the edge's answers (400, 403, 408, 429, 431), every operation
    that needs a caller documents 401 and 403, every body documents 413, 415 and 422; /tools
    documents more than its 200; world/at's seq is an integer, cursors and Last-Event-IDs carry
    the pattern the server checks, optional parameters are never null, and a script element is
    one of the documented forms (an empty one is not)."""
    document = _document(server)
    for path, method, operation in _operations(document):
        responses = set(operation["responses"])
        assert responses >= EDGE_STATUSES, (method, path, responses)
        if (path, method) not in PUBLIC:
            assert {"401", "403"} <= responses, (method, path)
        if "requestBody" in operation:
            assert {"413", "415", "422"} <= responses, (method, path)
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (method, path, parameter)
        assert "security" not in operation, "an open server requires no key"
    params = {
        (path, p["name"]): p["schema"]
        for path, method, operation in _operations(document)
        for p in operation.get("parameters", [])
    }
    assert params[("/runs/{run_id}/world/at", "seq")]["type"] == "integer"
    assert params[("/runs", "cursor")]["pattern"].startswith("^[0-9a-f]{8}")
    assert params[("/runs/{run_id}/events", "last-event-id")]["pattern"] == "^(-1|[0-9]{1,19})$"
    assert params[("/runs/{run_id}/stream", "last-event-id")]["pattern"] == "^(-1|[0-9]{1,19})$"
    schemas = document["components"]["schemas"]
    script = schemas["CognitionBody"]["properties"]["script"]
    element = script["anyOf"][0]["items"]
    assert len(element["oneOf"]) == 6
    assert all(form["required"] for form in element["oneOf"]), "{} is no element"
    assert schemas["CognitionBody"]["properties"]["provider"]["enum"][0] == "mock"
    assert {"anthropic", "openai", "ollama"} <= set(
        schemas["CognitionBody"]["properties"]["provider"]["enum"]
    )


def test_security_follows_the_gateway_and_the_server_enforces_it(
    server_factory: ServerFactory,
) -> None:
    """With keys, every operation but /health and /ready requires the bearer key in the
    document, and the server answers each of them 401 unauthenticated without one; the two
    public operations answer without a key."""
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV})
    document = _document(server)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    client = server.client()
    for path, method, operation in _operations(document):
        url = (
            path.replace("{run_id}", "01900000-0000-7000-8000-000000000000")
            .replace("{channel}", "ops")
            .replace("{writ_id}", "0" * 64)
        )
        response = client.request(method.upper(), url, json={} if method == "post" else None)
        if (path, method) in PUBLIC:
            assert "security" not in operation, path
            assert response.status_code == 200, (path, response.text)
        else:
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert_error(response, 401, "unauthenticated")


def _fuzz(server: ServerProcess, *extra: str) -> None:
    seed = os.environ.get("THYMOS_FUZZ_SEED", "1")
    examples = os.environ.get("THYMOS_FUZZ_EXAMPLES", "50")
    command = [
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        examples,
        "--seed",
        seed,
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        *extra,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{result.stdout[-12000:]}\n{result.stderr[-4000:]}"
    log = server.log_tail(2_000_000)
    assert " ERROR " not in log and "Traceback" not in log, log[-4000:]


@pytest.mark.timeout(FUZZ_TIMEOUT_S + 60)
def test_schemathesis_finds_nothing_on_an_open_server(server_factory: ServerFactory) -> None:
    """Schemathesis with every check against an open server: no 5xx and no mismatch between
    the document and any answer. Runs it starts that sleep are stopped at shutdown."""
    server = server_factory({"THYMOS_SHUTDOWN_GRACE_S": "1"})
    _fuzz(server)


@pytest.mark.timeout(FUZZ_TIMEOUT_S + 60)
def test_schemathesis_finds_nothing_on_a_keyed_server(server_factory: ServerFactory) -> None:
    """The same with API keys: every request carries an admin's key, and Schemathesis checks
    that leaving it out or spoiling it is refused on every operation that needs it."""
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV, "THYMOS_SHUTDOWN_GRACE_S": "1"})
    _fuzz(server, "--header", f"Authorization: Bearer {SECRETS['a-admin']}")
    # The admin's requests were counted: the gateway saw them.
    usage = httpx.get(
        f"{server.base_url}/usage",
        headers={"Authorization": f"Bearer {SECRETS['a-admin']}"},
        timeout=15,
    ).json()
    assert any(row["name"] == "a-admin" and row["requests"] > 0 for row in usage["keys"])
