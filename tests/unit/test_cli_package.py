"""`thymos package keygen|sign|publish`: a key made by keygen signs a body that the server's own
check accepts; data goes to stdout, messages to stderr, bad input exits 2, a refusal exits 1."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from thymos.cli import app
from thymos.marketplace import public_key_of, verify_publish

SKILL = {"instructions": "Read before writing.", "tool_scopes": ["fs_read", "grep"]}


def _run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["package", *args], env=env)


def _keygen_to(path: Path) -> str:
    result = _run("keygen", "--out", str(path))
    assert result.exit_code == 0, result.stderr
    public: str = json.loads(result.stdout)["public_key"]
    return public


def test_keygen_sign_makes_a_body_that_verifies(tmp_path: Path) -> None:
    """keygen --out writes a 0600 key file and prints its public key; sign with it prints a
    body that `verify_publish` accepts, naming that key as publisher."""
    key = tmp_path / "publisher.key"
    public = _keygen_to(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert public_key_of(key.read_text()) == public
    content = tmp_path / "skill.json"
    content.write_text(json.dumps(SKILL))
    result = _run(
        "sign", "--key", str(key), "--name", "@acme/careful", "--version", "1.0.0",
        "--kind", "skill", "--content", str(content), "--description", "Careful.",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    package = verify_publish(json.loads(result.stdout))
    assert (package.name, str(package.version), package.publisher_key) == (
        "@acme/careful",
        "1.0.0",
        public,
    )
    assert package.description == "Careful."
    assert package.content == SKILL


def test_keygen_without_out_prints_both_keys_and_never_overwrites_a_file(tmp_path: Path) -> None:
    """Without --out both hex keys are printed as JSON (and match); --out refuses an existing
    file, leaving it untouched."""
    result = _run("keygen")
    assert result.exit_code == 0
    keys = json.loads(result.stdout)
    assert public_key_of(keys["private_key"]) == keys["public_key"]
    assert len(keys["private_key"]) == len(keys["public_key"]) == 64
    assert keys["private_key"] not in result.stderr
    existing = tmp_path / "taken.key"
    existing.write_text("keep me")
    refused = _run("keygen", "--out", str(existing))
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert "already exists" in refused.stderr
    assert existing.read_text() == "keep me"


def test_sign_reads_a_cedar_file_for_a_policy(tmp_path: Path) -> None:
    """`--kind policy --content x.cedar` wraps the text as {"cedar": TEXT}."""
    key = tmp_path / "k"
    _keygen_to(key)
    policy = tmp_path / "ops.cedar"
    policy.write_text('@approval("ops")\npermit(principal, action, resource);\n')
    result = _run(
        "sign", "--key", str(key), "--name", "ops-approval", "--version", "0.1.0",
        "--kind", "policy", "--content", str(policy),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert verify_publish(json.loads(result.stdout)).content == {"cedar": policy.read_text()}


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--name", "Bad_Name", "invalid_package_name"),
        ("--version", "1.0", "invalid_version"),
        ("--kind", "theme", "invalid_package_kind"),
    ],
)
def test_sign_refuses_what_the_server_would_with_exit_2(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    """A package the marketplace check refuses is never printed: exit 2, the code on stderr."""
    key = tmp_path / "k"
    _keygen_to(key)
    content = tmp_path / "skill.json"
    content.write_text(json.dumps(SKILL))
    args = {"--name": "careful", "--version": "1.0.0", "--kind": "skill", option: value}
    flat = [item for pair in args.items() for item in pair]
    result = _run("sign", "--key", str(key), "--content", str(content), *flat)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert expected in result.stderr


def test_sign_refuses_unreadable_or_ambiguous_input_with_exit_2(tmp_path: Path) -> None:
    """A missing key file, a key file that is not a key, content that is not JSON, or JSON
    with a key twice in one object, exit 2 with a message."""
    key = tmp_path / "k"
    _keygen_to(key)
    content = tmp_path / "c.json"
    content.write_text(json.dumps(SKILL))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    not_json = tmp_path / "n.json"
    not_json.write_text("{instructions: 1}")
    twice = tmp_path / "t.json"
    twice.write_text('{"instructions": "a", "instructions": "b", "tool_scopes": ["x"]}')
    common = ["--name", "careful", "--version", "1.0.0", "--kind", "skill"]
    for key_file, content_file, message in (
        (tmp_path / "missing.key", content, "cannot read"),
        (bad_key, content, "invalid_private_key"),
        (key, not_json, "is not JSON"),
        (key, twice, "appears twice"),
    ):
        result = _run("sign", "--key", str(key_file), "--content", str(content_file), *common)
        assert result.exit_code == 2, message
        assert message in result.stderr


class _Marketplace(BaseHTTPRequestHandler):
    """A stand-in server: records each request, answers with the status and body it is set."""

    answer: tuple[int, dict[str, Any]] = (201, {})
    seen: list[tuple[str, dict[str, str], bytes]] = []  # noqa: RUF012 - reset per test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, dict(self.headers.items()), body))
        status, payload = type(self).answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what it needs from `seen`."""


@pytest.fixture
def marketplace() -> Iterator[str]:
    _Marketplace.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Marketplace)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _signed_body(tmp_path: Path) -> Path:
    key = tmp_path / "k"
    _keygen_to(key)
    content = tmp_path / "skill.json"
    content.write_text(json.dumps(SKILL))
    result = _run(
        "sign", "--key", str(key), "--name", "careful", "--version", "1.0.0",
        "--kind", "skill", "--content", str(content),
    )  # fmt: skip
    body = tmp_path / "body.json"
    body.write_text(result.stdout)
    return body


def test_publish_posts_the_body_with_the_api_key(tmp_path: Path, marketplace: str) -> None:
    """publish POSTs the file's bytes as JSON to URL/marketplace/packages with the key from
    THYMOS_API_KEY as a bearer token, and prints the server's answer; exit 0 on 201."""
    body = _signed_body(tmp_path)
    _Marketplace.answer = (201, {"name": "careful", "version": "1.0.0"})
    result = _run("publish", "--url", marketplace + "/", str(body), env={"THYMOS_API_KEY": "thy_k"})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "careful", "version": "1.0.0"}
    ((path, headers, sent),) = _Marketplace.seen
    assert path == "/marketplace/packages"
    assert headers["Authorization"] == "Bearer thy_k"
    assert headers["Content-Type"] == "application/json"
    assert sent == body.read_bytes()


def test_publish_exits_1_with_the_servers_error_message(tmp_path: Path, marketplace: str) -> None:
    """A non-2xx answer exits 1 with the envelope's code and message on stderr (the envelope on
    stdout); --api-key wins over the environment."""
    body = _signed_body(tmp_path)
    envelope = {"error": {"code": "package_version_exists", "message": "careful 1.0.0 exists"}}
    _Marketplace.answer = (409, envelope)
    result = _run(
        "publish", "--url", marketplace, "--api-key", "thy_flag", str(body),
        env={"THYMOS_API_KEY": "thy_env"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert json.loads(result.stdout) == envelope
    assert "409 package_version_exists: careful 1.0.0 exists" in result.stderr
    assert _Marketplace.seen[0][1]["Authorization"] == "Bearer thy_flag"


def test_publish_refuses_bad_input_before_sending(tmp_path: Path, marketplace: str) -> None:
    """A body file that is not a JSON object, or a URL that is not http(s), exits 2 and
    nothing is sent."""
    not_object = tmp_path / "list.json"
    not_object.write_text("[]")
    assert _run("publish", "--url", marketplace, str(not_object)).exit_code == 2
    assert _run("publish", "--url", "ftp://x", str(not_object)).exit_code == 2
    assert _Marketplace.seen == []
