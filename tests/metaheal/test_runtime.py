"""``metaheal up`` starts and stops cleanly; the runtime's shutdown rules hold."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaheal.broker import EmbeddedBroker
from metaheal.runtime import (
    Component,
    ComponentFailed,
    SubprocessService,
    expand_roles,
    run_components,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")


class Waits:
    """A well-behaved component: returns once stop is set."""

    def __init__(self) -> None:
        self.stopped = False

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopped = True


class Crashes:
    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")


@ASYNC
async def test_one_component_crashing_stops_the_others_and_is_reported() -> None:
    ok = Waits()
    stop = asyncio.Event()
    with pytest.raises(ComponentFailed, match=r"crasher: RuntimeError\('boom'\)"):
        await asyncio.wait_for(run_components([Component("ok", ok), Component("crasher", Crashes())], stop), 5)
    assert stop.is_set() and ok.stopped


@ASYNC
async def test_stop_ends_every_component() -> None:
    comps = [Component(f"c{i}", Waits()) for i in range(3)]
    stop = asyncio.Event()
    task = asyncio.create_task(run_components(comps, stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 3)
    assert all(c.service.stopped for c in comps)  # type: ignore[attr-defined]


@ASYNC
async def test_subprocess_component_is_terminated_on_stop(tmp_path: Path) -> None:
    svc = SubprocessService("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], grace=5)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 8)
    assert svc.returncode == -signal.SIGTERM


def test_unknown_role_is_named() -> None:
    with pytest.raises(ValueError, match="--role: unknown 'exec'"):
        expand_roles(["exec"])


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_up_starts_and_stops_cleanly_on_sigterm(broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    env["METAHEAL_TOPICS__PREFIX"] = f"up{time.time_ns() % 10**9}."
    env["METAHEAL_KEYS"] = str(tmp_path / "keys")
    env["METAHEAL_KAFKA__SESSION_TIMEOUT_MS"] = "6000"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from metaheal.cli import main; main()",
            "up",
            "--bootstrap",
            broker.bootstrap,
            "--role",
            "meta,executor,simulator",
            "--workdir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        if "runtime starting" in line:
            break
    assert any("runtime starting roles=simulator,meta,executor" in line for line in log), "".join(log)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    text = "".join(log) + err
    assert proc.returncode == 0, text
    assert "signal received signal=SIGTERM" in text
    assert "runtime stopped" in text and "up stopped cleanly" in text
    # the simulator's admin servers are gone with the process (no orphans listening)
    assert "simulator stopped" in text
