"""The built-in tools: file tools confined to the workspace, reading and searching, and the
key-value tools' proposed deltas."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from thymos.core import Delta, World, blake3_hex
from thymos.tools import (
    FsPatch,
    FsRead,
    FsWrite,
    Grep,
    HttpFetch,
    KvGet,
    KvSet,
    RepoMap,
    Sandbox,
    Shell,
    TestRun,
    Tool,
    ToolContext,
    ToolFailure,
    ToolPool,
    Workspace,
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with a few files, a subfolder, and secrets just outside it."""
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    (root / "src" / "app.py").write_text("def main():\n    return 'Hello'\n# TODO hello\n")
    (root / "blob.bin").write_bytes(b"\x00\x01binary hello")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hello from git internals\n")
    (tmp_path / "secret.txt").write_text("hello secret\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "more.txt").write_text("hello outside\n")
    return root


POOL = ToolPool(2)


def ctx(
    workspace: Path, world: World | None = None, protected: tuple[Path, ...] = ()
) -> ToolContext:
    confined = Workspace.of(workspace, protected)
    return ToolContext(
        "run", confined, world if world is not None else World(), POOL, Sandbox(confined)
    )


async def run(tool: Tool, args: dict[str, Any], context: ToolContext) -> Any:
    outcome = await tool.run(args, context)
    assert outcome.deltas == () or isinstance(tool, KvSet)
    return outcome.output


async def failure_code(tool: Tool, args: dict[str, Any], context: ToolContext) -> str:
    with pytest.raises(ToolFailure) as caught:
        await tool.run(args, context)
    return caught.value.code


ESCAPES = ["..", "../secret.txt", "src/../../secret.txt", "/etc/passwd", "../outside"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ESCAPES)
async def test_file_tools_refuse_paths_outside_the_workspace(workspace: Path, path: str) -> None:
    """fs_read, grep and repo_map refuse `..` escapes and absolute paths with ToolFailure code
    outside_workspace, before opening anything."""
    context = ctx(workspace)
    assert await failure_code(FsRead(), {"path": path}, context) == "outside_workspace"
    assert await failure_code(Grep(), {"pattern": "hello", "path": path}, context) == (
        "outside_workspace"
    )
    assert await failure_code(RepoMap(), {"path": path}, context) == "outside_workspace"


@pytest.mark.anyio
async def test_symlinks_pointing_outside_the_workspace_are_refused(workspace: Path) -> None:
    """A symlink inside the workspace that resolves outside it is refused by path, and skipped
    when walking, so no tool reads the target."""
    os.symlink(workspace.parent / "secret.txt", workspace / "link.txt")
    os.symlink(workspace.parent / "outside", workspace / "linkdir")
    context = ctx(workspace)
    assert await failure_code(FsRead(), {"path": "link.txt"}, context) == "outside_workspace"
    assert await failure_code(RepoMap(), {"path": "linkdir"}, context) == "outside_workspace"
    assert await failure_code(Grep(), {"pattern": "x", "path": "linkdir/more.txt"}, context) == (
        "outside_workspace"
    )
    found = await run(Grep(), {"pattern": "secret|outside"}, context)
    assert found["matches"] == []
    listed = await run(RepoMap(), {}, context)
    assert "link.txt" not in {f["path"] for f in listed["files"]}


@pytest.mark.anyio
async def test_a_nul_byte_in_a_path_is_refused(workspace: Path) -> None:
    """Paths holding NUL bytes are refused as invalid_path."""
    assert await failure_code(FsRead(), {"path": "README.md\x00"}, ctx(workspace)) == "invalid_path"


@pytest.mark.anyio
async def test_fs_read_returns_the_chosen_lines(workspace: Path) -> None:
    """fs_read returns whole files or a window of lines from a 1-based offset, with the total and
    whether anything was left out."""
    context = ctx(workspace)
    whole = await run(FsRead(), {"path": "README.md"}, context)
    assert whole["content"].count("\n") == 10
    assert (whole["first_line"], whole["total_lines"], whole["truncated"]) == (1, 10, False)
    window = await run(FsRead(), {"path": "README.md", "offset": 3, "limit": 2}, context)
    assert window["content"] == "line 3\nline 4\n"
    assert (window["path"], window["first_line"], window["truncated"]) == ("README.md", 3, True)
    tail = await run(FsRead(), {"path": "./src/../README.md", "offset": 9}, context)
    assert tail["content"] == "line 9\nline 10\n"
    assert tail["truncated"] is False
    past = await run(FsRead(), {"path": "README.md", "offset": 50}, context)
    assert past["content"] == ""


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "code"),
    [("missing.txt", "not_found"), ("src", "not_a_file"), ("blob.bin", "binary_file")],
)
async def test_fs_read_failures_have_codes(workspace: Path, path: str, code: str) -> None:
    """Missing files, folders and binary files are tool failures with stable codes."""
    assert await failure_code(FsRead(), {"path": path}, ctx(workspace)) == code


@pytest.mark.anyio
async def test_grep_finds_matches_with_paths_and_lines(workspace: Path) -> None:
    """grep reports each matching line with its workspace-relative path and 1-based line number,
    skips binary files and version-control folders, and honours ignore_case and max_matches."""
    context = ctx(workspace)
    exact = await run(Grep(), {"pattern": "hello"}, context)
    assert exact["matches"] == [{"path": "src/app.py", "line": 3, "text": "# TODO hello"}]
    assert exact["truncated"] is False
    folded = await run(Grep(), {"pattern": "hello", "ignore_case": True}, context)
    assert [(m["path"], m["line"]) for m in folded["matches"]] == [
        ("src/app.py", 2),
        ("src/app.py", 3),
    ]
    capped = await run(Grep(), {"pattern": "line", "max_matches": 3}, context)
    assert len(capped["matches"]) == 3
    assert capped["truncated"] is True
    one_file = await run(Grep(), {"pattern": r"line \d0", "path": "README.md"}, context)
    assert one_file["matches"] == [{"path": "README.md", "line": 10, "text": "line 10"}]


@pytest.mark.anyio
@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", "(?P<1>a)"])
async def test_grep_reports_a_bad_regex_as_invalid_pattern(workspace: Path, pattern: str) -> None:
    """A pattern that does not compile is a tool failure with code invalid_pattern."""
    assert await failure_code(Grep(), {"pattern": pattern}, ctx(workspace)) == "invalid_pattern"


@pytest.mark.anyio
async def test_repo_map_lists_files_in_a_stable_order(workspace: Path) -> None:
    """repo_map lists regular files with sizes in sorted order, skipping .git, and truncates at
    max_entries."""
    listed = await run(RepoMap(), {}, ctx(workspace))
    assert [f["path"] for f in listed["files"]] == ["README.md", "blob.bin", "src/app.py"]
    assert listed["root"] == "."
    assert listed["files"][0]["bytes"] == (workspace / "README.md").stat().st_size
    capped = await run(RepoMap(), {"max_entries": 1}, ctx(workspace))
    assert (len(capped["files"]), capped["truncated"]) == (1, True)
    sub = await run(RepoMap(), {"path": "src"}, ctx(workspace))
    assert (sub["root"], [f["path"] for f in sub["files"]]) == ("src", ["src/app.py"])
    assert await failure_code(RepoMap(), {"path": "README.md"}, ctx(workspace)) == (
        "not_a_directory"
    )


@pytest.mark.anyio
async def test_kv_set_proposes_create_then_replace_and_kv_get_reads(workspace: Path) -> None:
    """kv_set proposes a create for a new key and a replace at the current version for an
    existing one, without changing the world itself; kv_get reads what was committed."""
    world = World()
    context = ctx(workspace, world)
    created = await KvSet().run({"key": "k", "value": {"a": 1}}, context)
    assert created.deltas == (Delta("create", "kv", "k", {"a": 1}),)
    assert created.output == {"key": "k", "version": 1}
    assert len(world) == 0, "a tool only proposes; the runtime commits"
    assert (await KvGet().run({"key": "k"}, context)).output == {
        "key": "k",
        "found": False,
        "value": None,
    }
    world.apply_all(created.deltas)
    replaced = await KvSet().run({"key": "k", "value": [2]}, context)
    assert replaced.deltas == (Delta("replace", "kv", "k", [2], expected_version=1),)
    assert replaced.output == {"key": "k", "version": 2}
    world.apply_all(replaced.deltas)
    got = await KvGet().run({"key": "k"}, context)
    assert got.output == {"key": "k", "found": True, "value": [2], "version": 2}
    assert got.deltas == ()


ROOT_KEY = "a1" * 32


@pytest.fixture
def secrets(workspace: Path) -> tuple[Path, ...]:
    """The server's own files inside the workspace, under names no skip list knows: a data
    directory with a root key and a ledger, a root key file and a policy directory."""
    data = workspace / "state"
    data.mkdir()
    (data / "root_key").write_text(ROOT_KEY + "\n")
    (data / "ledger.sqlite3").write_bytes(b"SQLite format 3\x00 hello ledger")
    key_file = workspace / "signing.key"
    key_file.write_text(ROOT_KEY + "\n")
    policies = workspace / "policies"
    policies.mkdir()
    (policies / "ops.cedar").write_text("// hello policy\npermit(principal, action, resource);\n")
    return (data, key_file, policies)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    [
        "state",
        "state/root_key",
        "./state/../state/root_key",
        "signing.key",
        "policies",
        "policies/ops.cedar",
    ],
)
async def test_no_file_tool_reaches_the_servers_own_files(
    workspace: Path, secrets: tuple[Path, ...], path: str
) -> None:
    """The data directory, a key file and the policy directory are refused by name
    (`protected_path`) to every file tool, wherever they lie and whatever they are called."""
    context = ctx(workspace, protected=secrets)
    for tool, args in (
        (FsRead(), {"path": path}),
        (Grep(), {"pattern": "a", "path": path}),
        (RepoMap(), {"path": path}),
    ):
        assert await failure_code(tool, args, context) == "protected_path", (tool, path)


@pytest.mark.anyio
async def test_walks_never_list_or_search_protected_files(
    workspace: Path, secrets: tuple[Path, ...]
) -> None:
    """repo_map and grep over the whole workspace skip the protected folders and files: nothing
    of the key or the policies appears in their output."""
    context = ctx(workspace, protected=secrets)
    listed = await run(RepoMap(), {}, context)
    paths = {f["path"] for f in listed["files"]}
    assert paths == {"README.md", "blob.bin", "src/app.py"}
    found = await run(Grep(), {"pattern": "a1a1|hello", "ignore_case": True}, context)
    assert {m["path"] for m in found["matches"]} == {"src/app.py"}
    assert ROOT_KEY not in str(found)


@pytest.mark.anyio
async def test_links_to_protected_files_are_refused(
    workspace: Path, secrets: tuple[Path, ...]
) -> None:
    """A symlink to a protected file is refused by its resolved name; a hard link (the same file
    under an innocent name) is refused by identity when opened, and skipped by grep."""
    data, key_file, _ = secrets
    os.symlink(data / "root_key", workspace / "innocent.txt")
    os.link(key_file, workspace / "notes.txt")
    os.link(data / "root_key", workspace / "src" / "more-notes.txt")
    context = ctx(workspace, protected=secrets)
    assert await failure_code(FsRead(), {"path": "innocent.txt"}, context) == "protected_path"
    assert await failure_code(FsRead(), {"path": "notes.txt"}, context) == "protected_path"
    assert await failure_code(Grep(), {"pattern": "a1", "path": "notes.txt"}, context) == (
        "protected_path"
    )
    found = await run(Grep(), {"pattern": "a1a1"}, context)
    assert found["matches"] == []


@pytest.mark.anyio
async def test_a_fifo_is_refused_without_blocking(workspace: Path) -> None:
    """Opening a FIFO would block until a writer comes; file tools open without blocking and
    refuse anything that is not a regular file (fs_read `not_a_file`; grep skips it)."""
    os.mkfifo(workspace / "pipe")
    context = ctx(workspace)
    assert await failure_code(FsRead(), {"path": "pipe"}, context) == "not_a_file"
    found = await run(Grep(), {"pattern": "hello", "ignore_case": True}, context)
    assert {m["path"] for m in found["matches"]} == {"src/app.py"}


def test_a_workspace_without_protected_paths_protects_nothing(workspace: Path) -> None:
    """The protection is exactly the configured paths: resolved once, compared by prefix."""
    guarded = Workspace.of(workspace, (workspace / "state",))
    assert guarded.is_protected((workspace / "state" / "x").resolve())
    assert not guarded.is_protected((workspace / "statement.txt").resolve())
    assert not Workspace.of(workspace).is_protected((workspace / "state").resolve())


# -- ripgrep, writing files ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_grep_runs_a_catastrophic_pattern_in_linear_time(workspace: Path) -> None:
    """`(a+)+$` over a line of forty `a`s and a `b` takes Python's `re` minutes; ripgrep's
    linear-time engine answers at once (the suite's per-test timeout is the bound)."""
    (workspace / "evil.txt").write_text("a" * 40 + "b\n" + "a" * 40 + "\n")
    found = await run(Grep(), {"pattern": "(a+)+$", "path": "evil.txt"}, ctx(workspace))
    assert [m["line"] for m in found["matches"]] == [2]
    assert (found["truncated"], found["timed_out"]) == (False, False)


@pytest.mark.anyio
async def test_grep_reports_truncation_and_narrows_by_glob(workspace: Path) -> None:
    many = workspace / "many"
    many.mkdir()
    for index in range(30):
        (many / f"f{index:02}.txt").write_text("needle\n")
    (many / "code.py").write_text("needle = 1\n")
    context = ctx(workspace)
    capped = await run(Grep(), {"pattern": "needle", "path": "many", "max_results": 5}, context)
    assert (len(capped["matches"]), capped["truncated"]) == (5, True)
    whole = await run(Grep(), {"pattern": "needle", "path": "many", "max_results": 500}, context)
    assert (len(whole["matches"]), whole["truncated"], whole["files_searched"]) == (31, False, 31)
    python = await run(Grep(), {"pattern": "needle", "glob": "*.py"}, context)
    assert [m["path"] for m in python["matches"]] == ["many/code.py"]


async def _write(args: dict[str, Any], context: ToolContext, tool: Tool | None = None) -> Any:
    outcome = await (tool or FsWrite()).run(args, context)
    assert isinstance(context.world, World)
    context.world.apply_all(outcome.deltas)
    return outcome


@pytest.mark.anyio
async def test_fs_write_and_fs_patch_change_the_file_and_commit_its_hash(workspace: Path) -> None:
    """fs_write creates folders and the file; fs_patch replaces its one anchor; each proposes a
    `file` resource whose value is the content's size and BLAKE3, versioned like any resource."""
    world = World()
    context = ctx(workspace, world)
    first = await _write({"path": "pkg/mod.py", "content": "x = 1\ny = 2\n"}, context)
    assert (workspace / "pkg" / "mod.py").read_text() == "x = 1\ny = 2\n"
    assert first.output["created"] is True
    assert first.deltas == (
        Delta(
            "create", "file", "pkg/mod.py", {"size": 12, "blake3": blake3_hex(b"x = 1\ny = 2\n")}
        ),
    )
    patched = await _write(
        {"path": "pkg/mod.py", "anchor": "y = 2", "replacement": "y = 3"}, context, FsPatch()
    )
    assert (workspace / "pkg" / "mod.py").read_text() == "x = 1\ny = 3\n"
    resource = world.get("file", "pkg/mod.py")
    assert resource is not None and resource.version == 2
    assert resource.value == {"size": 12, "blake3": blake3_hex(b"x = 1\ny = 3\n")}
    assert patched.deltas[0].expected_version == 1
    assert sorted(p.name for p in (workspace / "pkg").iterdir()) == ["mod.py"]  # no temp left


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("anchor", "code"), [("z = 9", "anchor_not_found"), ("=", "anchor_not_unique")]
)
async def test_fs_patch_needs_its_anchor_exactly_once(
    workspace: Path, anchor: str, code: str
) -> None:
    (workspace / "two.py").write_text("a = 1\nb = 2\n")
    args = {"path": "two.py", "anchor": anchor, "replacement": "c"}
    assert await failure_code(FsPatch(), args, ctx(workspace)) == code
    assert (workspace / "two.py").read_text() == "a = 1\nb = 2\n"


@pytest.mark.anyio
@pytest.mark.parametrize("path", [*ESCAPES, "out/file.txt", "src/../out/x.txt"])
async def test_writes_never_leave_the_workspace(workspace: Path, tmp_path: Path, path: str) -> None:
    """`..`, absolute paths and a symlinked folder (made during the run) pointing outside are all
    refused; nothing is written outside."""
    os.symlink(tmp_path / "outside", workspace / "out")
    before = sorted(p.name for p in (tmp_path / "outside").iterdir())
    code = await failure_code(FsWrite(), {"path": path, "content": "pwned"}, ctx(workspace))
    assert code in ("outside_workspace", "not_a_file")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == before


@pytest.mark.anyio
async def test_writes_never_reach_a_protected_path(
    workspace: Path, secrets: tuple[Path, ...]
) -> None:
    """A protected file, reached by its name, a symlink or a hard link, is never replaced."""
    _, key_file, _ = secrets
    os.symlink(key_file, workspace / "alias.txt")
    os.link(key_file, workspace / "hard.txt")
    original = key_file.read_bytes()
    context = ctx(workspace, protected=secrets)
    for path in ("alias.txt", "hard.txt"):
        code = await failure_code(FsWrite(), {"path": path, "content": "x"}, context)
        assert code == "protected_path", path
    assert key_file.read_bytes() == original


# -- commands in the sandbox --------------------------------------------------------------------


async def _shell(command: str, context: ToolContext, seconds: int = 20) -> Any:
    return await run(Shell(), {"command": command, "timeout_secs": seconds}, context)


@pytest.mark.anyio
async def test_the_sandbox_confines_a_command_to_the_workspace(
    workspace: Path, tmp_path: Path, secrets: tuple[Path, ...]
) -> None:
    """A sandboxed command reads and writes the workspace, but cannot read /etc/shadow, files
    outside the workspace or the server's own files inside it, cannot write outside it, sees no
    process of the server and none of its environment."""
    context = ctx(workspace, protected=secrets)
    done = await _shell("cat README.md | head -1; echo made > made.txt", context)
    assert done["exit_code"] == 0, done
    assert (workspace / "made.txt").read_text() == "made\n"
    for command in (
        "cat /etc/shadow",
        f"cat {tmp_path / 'secret.txt'}",
        f"echo x > {tmp_path / 'outside' / 'new.txt'}",
        "echo x > /tmp/thymos-escape.txt",
    ):
        refused = await _shell(command, context)
        assert refused["exit_code"] != 0, (command, refused)
        assert "hello secret" not in refused["stdout"]
    # The server's own files inside the workspace are covered: empty, or absent.
    hidden = await _shell("cat state/root_key signing.key policies/ops.cedar", context)
    assert ROOT_KEY not in hidden["stdout"] and "hello policy" not in hidden["stdout"]
    assert not (tmp_path / "outside" / "new.txt").exists()
    assert not await asyncio.to_thread(os.path.exists, "/tmp/thymos-escape.txt")
    seen = await _shell("ls /proc | grep -c '^[0-9]'; env", context)
    assert int(seen["stdout"].split("\n")[0]) <= 3  # bash, ls and grep: no server process
    assert "THYMOS" not in seen["stdout"] and "ANTHROPIC" not in seen["stdout"]


@pytest.mark.anyio
async def test_the_sandbox_bounds_time_and_output(workspace: Path) -> None:
    context = ctx(workspace)
    slow = await _shell("sleep 60", context, seconds=1)
    assert (slow["timed_out"], slow["exit_code"]) == (True, None)
    loud = await _shell("head -c 10000000 /dev/zero | tr '\\0' x", context)
    assert loud["truncated"] is True
    assert len(loud["stdout"]) <= 256 * 1024


@pytest.mark.anyio
async def test_test_run_without_network_runs_the_detected_command(
    workspace: Path, tmp_path: Path
) -> None:
    """test_run detects pytest for a Python project, runs it without network, and reports
    whether it passed; a connection to a listener on this machine fails inside it."""
    (workspace / "tests").mkdir()
    (workspace / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (workspace / ".venv" / "bin").mkdir(parents=True)
    (workspace / ".venv" / "bin" / "python").symlink_to(sys.executable)  # has pytest
    context = ctx(workspace)
    done = await run(TestRun(), {"args": ["-p", "no:cacheprovider"]}, context)
    assert done["passed"] is True, done
    assert "1 passed" in done["stdout"]
    probe = await run(
        TestRun(["bash", "-c", "echo hi > /dev/tcp/127.0.0.1/5432 && echo connected"]), {}, context
    )
    assert "connected" not in probe["stdout"]
    assert probe["exit_code"] != 0


# -- http_fetch -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://localhost/",
        "http://loopback.example/",
    ],
)
async def test_http_fetch_refuses_addresses_inside_the_servers_networks(
    workspace: Path, url: str
) -> None:
    """Literal addresses, `localhost`, and a name that resolves to loopback are refused after
    resolution, before any connection."""

    async def resolver(host: str, port: int) -> list[str]:
        if host == "loopback.example":
            return ["127.0.0.2"]
        from thymos.tools._http_fetch import system_resolver

        return await system_resolver(host, port)

    code = await failure_code(HttpFetch(resolver=resolver), {"url": url}, ctx(workspace))
    assert code == "address_refused"


class _Server:
    """A tiny HTTP server on loopback: `/hello` answers, `/away` redirects to `target`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1]
        if path == b"/away":
            head = f"HTTP/1.1 302 Found\r\nLocation: {self.target}\r\nContent-Length: 0\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n")
        else:
            body = b"hello " + request.split(b"\r\n")[1]
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> _Server:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.anyio
async def test_http_fetch_reaches_an_allowed_host_and_checks_every_redirect(
    workspace: Path,
) -> None:
    """With 127.0.0.1 allowed (THYMOS_HTTP_ALLOW), a fetch answers with status, headers and body
    (the request's Host is the name asked for); a redirect from there to `localhost` (not
    allowed) is refused."""
    async with _Server("http://localhost:9/secret") as server:
        fetch = HttpFetch(allow=frozenset({"127.0.0.1"}))
        base = f"http://127.0.0.1:{server.port}"
        done = await run(fetch, {"url": f"{base}/hello"}, ctx(workspace))
        assert done["status"] == 200
        assert done["body"] == f"hello Host: 127.0.0.1:{server.port}"
        assert done["headers"]["content-type"] == "text/plain"
        assert done["truncated"] is False
        code = await failure_code(fetch, {"url": f"{base}/away"}, ctx(workspace))
        assert code == "address_refused"
