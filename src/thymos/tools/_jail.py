"""The sandbox's first process: confine, then become the tool's command.

Run as `python -I -S _jail.py SPEC_JSON` by `thymos.tools._sandbox` (standard library only, so it
starts fast and imports nothing of the server). In order:

1. `no_new_privs`, then new mount and PID namespaces, and a new network namespace (loopback only,
   down) unless the spec allows the network; mounts are made private, and every path to hide
   (the server's own files inside visible folders) is covered (an empty tmpfs, or /dev/null).
2. Fork. This process waits for the child and exits with its status. The child is PID 1 of the
   new namespace: it mounts a fresh /proc (only the sandbox's processes are visible, so nothing of
   the server, its environment included, can be read), sets resource limits, applies Landlock
   (read and execute the system's folders and the workspace, write only where the spec says,
   nothing else; signals and abstract sockets scoped to the sandbox where the kernel can), and
   executes the command with exactly the spec's environment. When it exits, the kernel kills
   whatever it left behind in the namespace.

Exit status 125 with a message on stderr means the sandbox could not be set up: nothing ran.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_SYM
)
FILE_ACCESS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
"""What a rule on a file (not a folder) may grant."""

SETUP_FAILED = 125

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    result = _libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return int(result) if result > 0 else 0


def _handled(abi: int) -> int:
    handled = READ | WRITE | MAKE_CHAR | MAKE_BLOCK
    if abi >= 2:
        handled |= REFER
    if abi >= 3:
        handled |= TRUNCATE
    if abi >= 5:
        handled |= IOCTL_DEV
    return handled


def apply_landlock(rules: list[tuple[str, str]], abi: int) -> None:
    """Allow exactly `rules` ((path, "read" | "write")); everything else is refused."""
    handled = _handled(abi)
    attr = RulesetAttr(handled, 0, (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else 8
    ruleset = _check(
        _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    for path, mode in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a folder this system does not have
        try:
            allowed = READ | (WRITE | REFER | TRUNCATE if mode == "write" else 0)
            if mode == "device":
                allowed = READ_FILE | WRITE_FILE
            if not os.path.isdir(path):
                allowed &= FILE_ACCESS
            rule = PathBeneathAttr(allowed & handled, fd)
            _check(
                _libc.syscall(
                    SYS_LANDLOCK_ADD_RULE,
                    ruleset,
                    LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                ),
                f"landlock_add_rule {path}",
            )
        finally:
            os.close(fd)
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def _mount(source: str | None, target: str, kind: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            kind.encode() if kind else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _hide(path: str) -> None:
    if os.path.isdir(path):
        _mount(
            "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=000"
        )
    elif os.path.exists(path):
        _mount("/dev/null", path, None, MS_BIND, None)


def _limits(limits: dict[str, int]) -> None:
    for name, value in (
        ("cpu_s", resource.RLIMIT_CPU),
        ("memory_bytes", resource.RLIMIT_AS),
        ("file_bytes", resource.RLIMIT_FSIZE),
        ("open_files", resource.RLIMIT_NOFILE),
    ):
        if name in limits:
            resource.setrlimit(value, (limits[name], limits[name]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (the server, killed or crashed, must not leave a
    command running that nobody will record)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(SETUP_FAILED)


def main(spec: dict[str, object]) -> int:
    _die_with_parent(int(spec.get("parent", os.getppid())))  # type: ignore[call-overload]
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    flags = CLONE_NEWNS | CLONE_NEWPID | (0 if spec.get("network") else CLONE_NEWNET)
    _check(_libc.unshare(flags), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for path in spec.get("hide", []):  # type: ignore[attr-defined]
        _hide(str(path))
    child = os.fork()
    if child:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)
    try:
        # The command (the new PID namespace's init: everything in it dies with it) dies with
        # this process.
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        _limits(dict(spec.get("limits", {})))  # type: ignore[call-overload]
        abi = landlock_abi()
        if abi:
            apply_landlock([(str(p), str(m)) for p, m in spec["rules"]], abi)  # type: ignore[attr-defined]
        elif spec.get("landlock_required", True):
            raise OSError(0, "this kernel has no Landlock")
        os.chdir(str(spec["cwd"]))
        argv = [str(a) for a in spec["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in dict(spec["env"]).items()}  # type: ignore[call-overload]
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        sys.stderr.write(f"thymos sandbox: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)


if __name__ == "__main__":
    try:
        code = main(json.loads(sys.argv[1]))
    except OSError as exc:
        sys.stderr.write(f"thymos sandbox: {exc}\n")
        code = SETUP_FAILED
    sys.exit(code)
