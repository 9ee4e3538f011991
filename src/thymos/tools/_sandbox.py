"""The sandbox every tool subprocess runs in.

`Sandbox.run` starts `_jail.py` (a fresh interpreter, standard library only) with a spec built
from the call: the command, the workspace as its folder, what it may read (the system's
programs and libraries, a few files of /etc, the workspace), what it may write (the workspace,
only for tools whose effect is `write` or more; a private temporary folder always), whether it
may use the network (only tools whose effect is `external` or more), resource limits, and an
environment built from an allowlist (nothing of the server's: no provider or API keys, no root
key, no `THYMOS_*`). The jail confines itself (namespaces, Landlock, limits) and then becomes the
command; the server's side bounds time and output and kills the whole process group
(`run_process`). The server's own files inside the workspace are hidden by a mount.

`probe()` says what this kernel offers; where Landlock or namespaces are missing, tools that
need the sandbox are refused (`unavailable`) unless the operator opts out
(`THYMOS_SANDBOX=off`, documented as unsafe): the server never pretends.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from thymos.core import ToolFailureCode

from ._contract import ToolFailure
from ._process import ProcessResult, run_process
from ._workspace import Workspace

JAIL = Path(__file__).with_name("_jail.py")
SETUP_FAILED = 125

SYSTEM_READ = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/opt",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/proc",
)
"""What every sandboxed program may read and execute (besides the interpreter's own prefix and
the workspace). Not /etc as a whole: `/etc/shadow` and friends stay out of reach."""

DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/tty")

ENV_ALLOWED = ("PATH", "LANG", "LC_ALL", "TERM", "TZ")
"""Server variables passed through (values only); everything else is dropped."""

MEMORY_BYTES_MAX = 4 * 1024**3
FILE_BYTES_MAX = 256 * 1024**2
OPEN_FILES_MAX = 1024


@dataclass(frozen=True, slots=True)
class SandboxSupport:
    landlock_abi: int
    namespaces: bool
    reason: str | None
    """Why the sandbox cannot run here (None when it can)."""

    @property
    def usable(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, object]:
        return {
            "usable": self.usable,
            "landlock_abi": self.landlock_abi,
            "namespaces": self.namespaces,
            "reason": self.reason,
        }


def _interpreter_prefixes() -> list[str]:
    return sorted({sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))})


class Sandbox:
    def __init__(self, workspace: Workspace, *, enforce: bool = True) -> None:
        self.workspace = workspace
        self.enforce = enforce
        """False only when the operator opted out (`THYMOS_SANDBOX=off`): commands then run with
        the scrubbed environment and limits but without namespaces or Landlock."""
        self.support: SandboxSupport | None = None

    async def probe(self) -> SandboxSupport:
        """Run `true` in a sandbox once and say what worked."""
        from ._jail import landlock_abi

        abi = landlock_abi()
        started = False
        try:
            done = await self._jailed(["/bin/true"], write=False, network=False, timeout_s=30)
            started = done.exit_code == 0
            reason = (
                None
                if started
                else done.stderr.decode("utf-8", "replace").strip() or "the sandbox did not start"
            )
        except OSError as exc:
            reason = f"the sandbox did not start: {exc}"
        if not abi:
            reason = reason or "this kernel has no Landlock"
        # Namespaces are set up before Landlock: a jail that ran `true` had them.
        self.support = SandboxSupport(abi, started and self.enforce, reason)
        return self.support

    async def run(
        self,
        argv: Sequence[str],
        *,
        write: bool,
        network: bool,
        timeout_s: float,
        output_max: int,
        env: Mapping[str, str] | None = None,
        started: Callable[[int], None] | None = None,
    ) -> ProcessResult:
        """Run `argv` in the workspace, confined. `ToolFailure(unavailable)` when this server
        cannot sandbox and the operator has not opted out."""
        if self.enforce and self.support is None:
            await self.probe()
        if self.enforce and (self.support is None or not self.support.usable):
            why = self.support.reason if self.support else "the sandbox was not probed"
            raise ToolFailure(
                ToolFailureCode.UNAVAILABLE, f"commands cannot run here: {why} (see /health)"
            )
        done = await self._jailed(
            argv,
            write=write,
            network=network,
            timeout_s=timeout_s,
            output_max=output_max,
            env=env,
            started=started,
        )
        if done.exit_code == SETUP_FAILED and done.stderr.startswith(b"thymos sandbox:"):
            raise ToolFailure(
                ToolFailureCode.UNAVAILABLE,
                done.stderr.decode("utf-8", "replace").strip()[:500],
            )
        return done

    def _readable(self) -> tuple[str, ...]:
        return (*SYSTEM_READ, *_interpreter_prefixes(), str(self.workspace.root))

    def _resolve(self, program: str, path: str) -> str:
        """`program` as the sandbox can execute it: the first match on PATH whose real path is
        in a folder the sandbox may read (a shim in a home folder is skipped)."""
        if os.sep in program:
            return program
        readable = self._readable()
        for folder in path.split(os.pathsep):
            candidate = os.path.join(folder, program)
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                continue
            real = os.path.realpath(candidate)
            if any(real == r or real.startswith(r.rstrip("/") + "/") for r in readable):
                return candidate
        return shutil.which(program, path=path) or program

    def command(
        self,
        argv: Sequence[str],
        *,
        write: bool,
        network: bool,
        scratch: str,
        cpu_s: int | None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that run `argv` confined (through the jail), for callers that
        start the process themselves (a long-lived MCP server, say). Unconfined (the
        operator's opt-out) it is `argv` itself with the scrubbed environment."""
        workspace = self.workspace
        environment = {k: os.environ[k] for k in ENV_ALLOWED if k in os.environ}
        environment.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        environment.update(HOME=scratch, TMPDIR=scratch)
        environment.update(env or {})
        program = self._resolve(argv[0], environment["PATH"])
        if not self.enforce:
            return [program, *argv[1:]], environment
        rules = [(p, "read") for p in (*SYSTEM_READ, *_interpreter_prefixes())]
        rules += [(p, "device") for p in DEVICES]
        rules += [(str(workspace.root), "write" if write else "read"), (scratch, "write")]
        limits = {
            "memory_bytes": MEMORY_BYTES_MAX,
            "file_bytes": FILE_BYTES_MAX,
            "open_files": OPEN_FILES_MAX,
        }
        if cpu_s is not None:
            limits["cpu_s"] = cpu_s
        spec = {
            "argv": [program, *argv[1:]],
            "cwd": str(workspace.root),
            "env": environment,
            "network": network,
            "rules": rules,
            "hide": [
                str(p)
                for p in workspace.protected
                if p == workspace.root or workspace.root in p.parents
            ],
            "limits": limits,
            "landlock_required": True,
            "parent": os.getpid(),
        }
        return [sys.executable, "-I", "-S", str(JAIL), json.dumps(spec)], {
            "PATH": environment["PATH"]
        }

    async def _jailed(
        self,
        argv: Sequence[str],
        *,
        write: bool,
        network: bool,
        timeout_s: float,
        output_max: int = 64 * 1024,
        env: Mapping[str, str] | None = None,
        started: Callable[[int], None] | None = None,
    ) -> ProcessResult:
        scratch = tempfile.mkdtemp(prefix="thymos-sandbox-")
        try:
            command, environment = self.command(
                argv,
                write=write,
                network=network,
                scratch=scratch,
                cpu_s=max(1, int(timeout_s) + 1),
                env=env,
            )
            return await run_process(
                command,
                cwd=self.workspace.root,
                env=environment,
                timeout_s=timeout_s,
                output_max=output_max,
                started=started,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
