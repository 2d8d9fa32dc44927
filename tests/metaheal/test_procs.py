"""Children die with their parent (PDEATHSIG and the parent-watch fallback); PID files stop only what they name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metaheal.procs import PARENT_ENV, ProcessTable, alive, cmdline, start_time

#: the child: optionally without the kernel's parent-death signal, so only the polling watch is left
CHILD = textwrap.dedent(
    """
    import sys, time
    import metaheal.procs as procs
    if sys.argv[1] == "watch-only":
        procs.set_pdeathsig = lambda sig=0: False
    procs.watch_parent(interval=0.1, grace=5.0)
    print("ready", flush=True)
    time.sleep(120)
    """
)
#: the parent: starts the child with METAHEAL_PARENT_PID, prints its pid, then waits to be killed
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                             env={**os.environ, "METAHEAL_PARENT_PID": str(os.getpid())}, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid) or (Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("mode", ["pdeathsig", "watch-only"])
def test_a_child_dies_when_its_parent_is_sigkilled(mode: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mode],
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != PARENT_ENV},
    )
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert gone_within(child, 5.0), f"child {child} outlived its parent ({mode})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


def test_reap_stops_a_recorded_leftover_but_never_a_reused_pid(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    argv = [sys.executable, "-c", "import time; time.sleep(120)", "leftover"]
    leftover = subprocess.Popen(argv, start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "bystander"])
    try:
        table.record("streams", leftover.pid, argv, group=True)
        # a PID file whose PID now runs another program (a reused PID): must not be touched
        table.record("broker", bystander.pid, ["/usr/bin/tansu", "broker"])
        rec = table.read("broker")
        assert rec is not None and rec.started == start_time(bystander.pid)
        rec.started = None  # as on a system without /proc start times: only the command line decides
        (tmp_path / "run" / "broker.pid").write_text(json.dumps(rec.__dict__))
        assert cmdline(leftover.pid) == argv
        stopped = table.reap(grace=5.0)
        assert [r.role for r in stopped] == ["streams"]
        leftover.wait(5)  # (reaped by reap itself when it is our own child: the code is not ours to see)
        assert not alive(leftover.pid)
        assert bystander.poll() is None and alive(bystander.pid)
        assert table.records() == []  # both files gone: one stopped, one stale
    finally:
        for p in (leftover, bystander):
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_a_recycled_pid_with_another_start_time_is_not_the_recorded_process(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    argv = [sys.executable, "-c", "import time; time.sleep(120)"]
    proc = subprocess.Popen(argv)
    try:
        rec = table.record("streams", proc.pid, argv)
        assert rec.matches()
        if rec.started is not None:
            rec.started -= 1  # the recorded process started earlier: this PID belongs to someone else now
            assert not rec.matches()
    finally:
        proc.kill()
        proc.wait(5)
