"""`thymos keys create|list` against the data dir of a real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import blake3
import pytest

from tests.e2e._harness import THYMOS_BIN, assert_error
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox


def thymos(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the `thymos` CLI on `data_dir`, capturing stdout and stderr apart."""
    env = dict(os.environ)
    env.pop("THYMOS_DATA_DIR", None)
    return subprocess.run(
        [str(THYMOS_BIN), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_created_key_authenticates_and_only_its_hash_is_stored(
    server_factory: ServerFactory,
) -> None:
    """`thymos keys create` prints one secret line on stdout (a message on stderr) and exits 0;
    a server started on that data dir is then guarded and accepts the secret as a bearer key,
    with the key's tenant and role; after the server stops, no byte sequence of the SQLite files
    is the secret, while its BLAKE3 hash is there; a duplicate name exits 2 with a message."""
    server = server_factory(start=False)
    created = thymos(
        "keys", "create", "--name", "ops", "--tenant", "acme", "--role", "operator",
        data_dir=server.data_dir,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1
    secret = lines[0]
    assert secret.startswith("thy_")
    assert len(secret) >= 40
    assert secret not in created.stderr
    assert "ops" in created.stderr

    duplicate = thymos(
        "keys", "create", "--name", "ops", "--tenant", "acme", "--role", "viewer",
        data_dir=server.data_dir,
    )  # fmt: skip
    assert duplicate.returncode == 2
    assert duplicate.stdout == ""
    assert "already exists" in duplicate.stderr

    server.start()
    client = server.client()
    assert_error(client.get("/runs"), 401, "unauthenticated")
    client.headers["Authorization"] = f"Bearer {secret}"
    assert client.get("/runs").status_code == 200
    row = client.get("/usage").json()["keys"]
    assert [(r["name"], r["tenant"], r["role"], r["source"]) for r in row] == [
        ("ops", "acme", "operator", "cli")
    ]
    server.stop()

    stored = b"".join(
        path.read_bytes() for path in server.data_dir.iterdir() if path.name.startswith("ledger")
    )
    assert secret.encode() not in stored
    assert blake3.blake3(secret.encode()).hexdigest().encode() in stored
    log = server.log_path.read_text(errors="replace")
    assert secret not in log


def test_keys_list_shows_names_tenants_roles_and_limits_never_secrets(tmp_path: Path) -> None:
    """`thymos keys list --json` lists every key with name, tenant, role and rpm, sorted by name,
    and no field holds a secret or a hash; the table form names them too; an invalid role or
    a data dir without a ledger exits 2."""
    data_dir = tmp_path / "data"
    secrets = []
    for name, role, rpm in (("zed", "viewer", None), ("amy", "admin", "30")):
        extra = ["--rpm", rpm] if rpm else []
        done = thymos(
            "keys", "create", "--name", name, "--tenant", "t1", "--role", role, *extra,
            data_dir=data_dir,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        secrets.append(done.stdout.strip())
    listed = thymos("keys", "list", "--json", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["tenant"], r["role"], r["rpm"]) for r in rows] == [
        ("amy", "t1", "admin", 30),
        ("zed", "t1", "viewer", None),
    ]
    assert all(secret not in listed.stdout for secret in secrets)
    assert all(len(value) != 64 for r in rows for value in r.values() if isinstance(value, str))
    table = thymos("keys", "list", data_dir=data_dir)
    assert table.returncode == 0
    assert "amy" in table.stdout
    assert "zed" in table.stdout
    assert all(secret not in table.stdout for secret in secrets)
    bad_role = thymos(
        "keys", "create", "--name", "x", "--tenant", "t1", "--role", "root", data_dir=data_dir
    )
    assert bad_role.returncode == 2
    assert "--role" in bad_role.stderr
    missing = thymos("keys", "list", data_dir=tmp_path / "nowhere")
    assert missing.returncode == 2
