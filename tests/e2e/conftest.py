"""Fixtures for the black-box tests: a real `thymos serve` on a free port per test (or module).

Every server gets a fresh data dir and a workspace with a couple of files. Teardown sends
SIGTERM and requires exit code 0, and fails the test if the server ever answered a 5xx other
than 503 (a 5xx is a bug, never the answer to anything a client sent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e._harness import ServerProcess

ServerFactory = Callable[..., ServerProcess]

README = "# Demo workspace\n\nThis workspace belongs to the black-box tests.\nTODO: nothing.\n"
NOTES = "alpha\nbeta\ngamma\n"


def make_workspace(root: Path) -> Path:
    workspace = root / "workspace"
    (workspace / "docs").mkdir(parents=True)
    (workspace / "README.md").write_text(README)
    (workspace / "docs" / "notes.txt").write_text(NOTES)
    return workspace


def _factory(root: Path) -> tuple[ServerFactory, list[ServerProcess]]:
    made: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None, *, start: bool = True) -> ServerProcess:
        index = len(made)
        base = root / f"server{index}"
        base.mkdir(parents=True)
        server = ServerProcess(
            data_dir=base / "data",
            workspace=make_workspace(base),
            log_dir=base,
            env_extra=dict(env or {}),
        )
        made.append(server)
        if start:
            server.start()
        return server

    return make, made


def _finish(made: list[ServerProcess]) -> None:
    problems: list[str] = []
    for server in made:
        if server.running:
            server.signal_stop()
            code = server.wait_exit()
            if code != 0:
                problems.append(f"server exited {code} after SIGTERM:\n{server.log_tail()}")
        errors = server.server_errors()
        if errors:
            problems.append(f"server answered 5xx: {errors}\n{server.log_tail()}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Makes servers (each on its own data dir); all are stopped cleanly at teardown."""
    make, made = _factory(tmp_path)
    yield make
    _finish(made)


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """One running server with default settings, for this test only."""
    return server_factory()


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like `server_factory`, shared by the tests of one module (one per xdist worker)."""
    make, made = _factory(tmp_path_factory.mktemp("servers"))
    yield make
    _finish(made)
