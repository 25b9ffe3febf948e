"""Child processes that never outlive us: free ports, die-with-parent, and a logged child that is up
once a URL answers. Used by the embedded tritonserver, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port nothing listens on right now (for tests and ephemeral servers), never the same one twice in
    this process: the kernel can offer a port it has just offered again, and a tritonserver given one
    port for both gRPC and metrics refuses to start."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


# Sets PR_SET_PDEATHSIG (1), which survives exec, then becomes the command. Exits instead when the
# parent (argv[1]) died before the signal was armed.
_DIE_WITH_PARENT_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, wrapped so that the kernel sends it SIGTERM when this process dies, however it dies
    (kill -9 included).

    A small shim arms the signal and execs the command. Arming it in a `preexec_fn` instead makes
    Popen fork with gRPC's fork handlers in place: with gRPC threads busy in this process, about one
    child in fifty aborted (SIGABRT in gRPC's event engine) before it ever ran the command.
    """
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT_SHIM, str(os.getpid()), *command]


def url_answers(url: str) -> bool:
    """An HTTP URL answers 200, or for "tcp://host:port", the port accepts a connection."""
    try:
        if url.startswith("tcp://"):
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class ChildFailed(RuntimeError):
    """A child exited or did not become ready in time; the message ends with its log's last lines."""


@dataclass
class Child:
    """A die-with-parent child in its own process group, its output in a log file that is deleted
    after a clean stop and kept (for the error message) otherwise."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False) as log:
            process = subprocess.Popen(die_with_parent(command), stdout=log, stderr=subprocess.STDOUT,
                                       env=None if env is None else dict(env), start_new_session=True)
        return cls(name, process, Path(log.name))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, ready_url: str, timeout_s: float, cancelled: Callable[[], bool] | None = None) -> None:
        """Until `ready_url` answers (see `url_answers`); ChildFailed if the child exits, time runs out or
        `cancelled()` becomes true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cancelled is not None and cancelled():
                raise ChildFailed(f"{self.name}: start-up cancelled")
            if self.exited():
                raise ChildFailed(f"{self.name} exited with code {self.reap()} during start-up. "
                                  f"Last lines of its log ({self.log_path}):\n{self.log_tail()}")
            if url_answers(ready_url):
                return
            time.sleep(0.2)
        raise ChildFailed(f"{self.name} was not ready at {ready_url} after {timeout_s:.0f} s. "
                          f"Last lines of its log ({self.log_path}):\n{self.log_tail()}")

    def exited(self) -> bool:
        """Whether the child has exited, without reaping it: until `reap`, its pid and its process group
        id stay reserved, so signalling the group can never hit an unrelated process."""
        if self.process.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def reap(self) -> int:
        """After the child exited: kill whatever is left of its process group (children it started, such
        as python-backend stubs, which outlive a killed parent), then collect its exit status."""
        if self.process.returncode is not None:  # reaped before: its group was cleared then
            return self.process.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self.process.wait()
        wait_group_gone(self.pid)
        return code

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the child shuts down its own children), then SIGKILL of the whole group, whose
        members are gone on return. The log is deleted only after a clean exit."""
        if not self.exited():
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.reap()
        if self.process.returncode == 0:
            self.log_path.unlink(missing_ok=True)


def _proc_file(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name>, empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            return file.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses), or None when gone."""
    stat = _proc_file(pid, "stat")
    return stat.rsplit(b")", 1)[1].split() if stat else None


def _process_state(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent, process group) of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0].decode(), int(fields[1]), int(fields[2]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0.0 once it is gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Live processes below `pid`: its children, theirs, and so on."""
    children_of: dict[int, list[int]] = {}
    for child in _pids():
        state = _process_state(child)
        if state is not None:
            children_of.setdefault(state[1], []).append(child)
    found, todo = [], list(children_of.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children_of.get(current, []))
    return found


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def command_line(pid: int) -> list[str]:
    """A process's argv; empty once it is gone."""
    return [os.fsdecode(arg) for arg in _proc_file(pid, "cmdline").split(b"\0")[:-1]]


def children(pid: int, name: str) -> list[int]:
    """Live child processes of `pid` whose executable is called `name` (/proc/<child>/comm)."""
    found = []
    for child in _pids():
        state = _process_state(child)
        if state is not None and state[1] == pid and state[0] not in "ZX" \
                and _proc_file(child, "comm").decode(errors="replace").strip() == name:
            found.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped) is not alive."""
    state = _process_state(pid)
    return state is not None and state[0] not in "ZX"


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded: they hold no memory and run nothing)."""
    members = []
    for pid in _pids():
        state = _process_state(pid)
        if state is not None and state[2] == pgid and state[0] not in "ZX":
            members.append(pid)
    return members


def wait_group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """Until no live process is left in the group (SIGKILLed members take a moment to die)."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def running_child(name: str, command: Sequence[str], ready_url: str, timeout_s: float = 120.0) -> Iterator[Child]:
    """A child that is ready (see `Child.wait_ready`) for the block, and stopped after it."""
    child = Child.start(name, command)
    try:
        child.wait_ready(ready_url, timeout_s)
        yield child
    finally:
        child.stop(15)
    child.log_path.unlink(missing_ok=True)  # kept only when something went wrong
