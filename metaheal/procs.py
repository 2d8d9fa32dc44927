"""Child processes that die with their parent, and PID files to stop leftovers of a killed run.

Three layers, so that no ``metaheal up`` child outlives it however it ends:

* :func:`die_with_parent` (a ``preexec_fn``): the kernel signals the child when the
  thread that started it exits (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere);
* :func:`watch_parent`, called by a Python child at start-up: sets the same signal from
  inside the child and, as a fallback where the OS has none (or the parent died before
  the child got that far), a daemon thread that polls ``os.getppid()`` and stops the
  process when its parent is gone (SIGTERM first, SIGKILL after a grace period);
* :class:`ProcessTable`: PID files under ``<workdir>/run/``. ``up`` records each child it
  starts; on the next start it stops the ones still alive whose command line is still
  the recorded one (a reused PID is never killed).

>>> table = ProcessTable(Path("/tmp/metaheal-doctest-procs"))
>>> table.path("streams").name
'streams.pid'
>>> same_cmdline(["python", "-m", "x"], ["python", "-m", "x"]), same_cmdline(["python"], ["node"])
(True, False)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
#: environment variable a launcher sets to its own PID so a Python child can watch it
PARENT_ENV = "METAHEAL_PARENT_PID"


def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig))) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """``preexec_fn``: have the kernel SIGTERM the child when its parent dies.

    A killed test run or a crashed ``metaheal up`` must not leave brokers behind.
    PDEATHSIG fires when the creating *thread* exits: pass it only from the main thread
    (:func:`preexec_for_child` does that check).
    """
    set_pdeathsig(signal.SIGTERM)


def preexec_for_child() -> Callable[[], None] | None:
    """:func:`die_with_parent` when called on the main thread, else None (see its note)."""
    return die_with_parent if threading.current_thread() is threading.main_thread() else None


def watch_parent(expected: int | None = None, *, interval: float = 0.5, grace: float = 10.0) -> threading.Thread | None:
    """In a child: stop this process when its parent dies (PDEATHSIG plus a polling fallback).

    ``expected`` is the parent's PID (default: :data:`PARENT_ENV`, then the current
    parent). If the parent is already gone the process is stopped at once. Returns the
    watcher thread, or None when there is no parent to watch (started by init).
    """
    if expected is None:
        raw = os.environ.get(PARENT_ENV, "")
        expected = int(raw) if raw.isdigit() else os.getppid()
    if expected <= 1:
        return None
    set_pdeathsig(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(interval)
        logger.warning("parent gone parent_pid=%d action=stop pid=%d", expected, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        logger.error("did not stop within %.0fs after its parent died: killing pid=%d", grace, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


# --- PID files ---------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None if it does not exist (or cannot be read)."""
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.is_dir():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        return [p.decode(errors="replace") for p in raw.split(b"\0") if p] or None
    if sys.platform.startswith("linux"):
        return None
    try:  # macOS and other systems without /proc
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split() if out.returncode == 0 and out.stdout.strip() else None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def same_cmdline(recorded: list[str], live: list[str] | None) -> bool:
    """Whether ``live`` is the recorded command line (``ps`` output is split on spaces)."""
    if live is None:
        return False
    return live == recorded or " ".join(live) == " ".join(recorded)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PidRecord:
    role: str
    pid: int
    argv: list[str]
    #: the process-start time from /proc (None where unknown): a recycled PID has another one
    started: int | None = None
    #: PID of the ``up`` process that started it
    owner: int | None = None
    #: True when the child leads its own process group (its group is stopped with it)
    group: bool = False

    def matches(self) -> bool:
        """The recorded process is alive and is still the same program (never a reused PID)."""
        if not alive(self.pid):
            return False
        live_start = start_time(self.pid)
        if self.started is not None and live_start is not None:
            if live_start != self.started:
                return False  # the PID was recycled
            if same_cmdline(self.argv, cmdline(self.pid)):
                return True
            # same PID *and* same start time is the same process even if it retitled itself
            # (faust calls setproctitle when that package is installed)
            return cmdline(self.pid) is not None
        return same_cmdline(self.argv, cmdline(self.pid))


class ProcessTable:
    """PID files for one workdir's processes: ``<workdir>/run/<role>.pid`` (JSON)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "run"

    def path(self, role: str) -> Path:
        return self.dir / f"{role}.pid"

    def record(self, role: str, pid: int, argv: list[str], *, group: bool = False) -> PidRecord:
        """Write ``role``'s PID file (atomically: a crash leaves the old file or the new one)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = PidRecord(role, pid, [str(a) for a in argv], start_time(pid), os.getpid(), group)
        tmp = self.path(role).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.__dict__))
        tmp.replace(self.path(role))
        return rec

    def forget(self, role: str, pid: int | None = None) -> None:
        """Remove ``role``'s PID file (only if it still names ``pid``, when given)."""
        rec = self.read(role)
        if rec is not None and (pid is None or rec.pid == pid):
            with contextlib.suppress(FileNotFoundError):
                self.path(role).unlink()

    def read(self, role: str) -> PidRecord | None:
        try:
            doc = json.loads(self.path(role).read_text())
            return PidRecord(**doc)
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[PidRecord]:
        if not self.dir.is_dir():
            return []
        return [r for p in sorted(self.dir.glob("*.pid")) if (r := self.read(p.stem)) is not None]

    def running(self, role: str) -> PidRecord | None:
        """``role``'s recorded process if it is still running (and still that program)."""
        rec = self.read(role)
        return rec if rec is not None and rec.matches() else None

    def reap(self, *, skip: tuple[str, ...] = (), grace: float = 10.0) -> list[PidRecord]:
        """Stop every recorded process still running (SIGTERM, SIGKILL after ``grace``); returns them.

        Stale files (process gone, or the PID now runs something else) are removed
        without touching the process that holds the PID now.
        """
        stopped = []
        for rec in self.records():
            if rec.role in skip:
                continue
            if rec.matches():
                logger.warning(
                    "leftover process role=%s pid=%d owner=%s action=stop argv=%s",
                    rec.role,
                    rec.pid,
                    rec.owner,
                    " ".join(rec.argv)[:200],
                )
                stop_process(rec.pid, group=rec.group, grace=grace)
                stopped.append(rec)
            self.forget(rec.role, rec.pid)
        return stopped


def stop_process(pid: int, *, group: bool = False, grace: float = 10.0) -> bool:
    """SIGTERM ``pid`` (its group when ``group``), SIGKILL after ``grace``; True once it is gone."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie child of ours is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    if not alive(pid):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return alive(pid)
    return state[state.rindex(")") + 2] != "Z"


__all__ = [
    "PARENT_ENV",
    "PidRecord",
    "ProcessTable",
    "alive",
    "cmdline",
    "die_with_parent",
    "preexec_for_child",
    "same_cmdline",
    "set_pdeathsig",
    "start_time",
    "stop_process",
    "watch_parent",
]
