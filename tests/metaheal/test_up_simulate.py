"""The operator path: `metaheal up` in one process, `metaheal simulate --scenario` started after it in another.

The two processes share only the broker: no services are configured for `up`, so the
fault can only be healed if the simulator's registrations on `<prefix>services` reach
the running executor. Demo tunings (short cycles and windows) keep it near a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from metaheal.config import Settings
from metaheal.events import SignedOutcome
from metaheal.kafka import Consumer
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.registry import read_registry

CLI = [sys.executable, "-c", "from metaheal.cli import main; main()"]
#: the demo's fleet tunings (metaheal.demo.run_demo)
SIM_ARGS = [
    "--interval",
    "0.5",
    "--ready-delay",
    "3",
    "--restart-seconds",
    "3",
    "--day-amplitude",
    "0.03",
    "--day-seconds",
    "600",
    "--seed",
    "0",
]


def outcomes(settings: Settings) -> list[SignedOutcome]:
    de = AvroDeserializer(SignedOutcome)
    with Consumer(settings.kafka) as c:
        return [de(m.value()) for m in c.read_to_end(settings.topics.name("outcomes"))]


def wait_for_text(path: Path, needle: str, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_up_heals_a_fault_of_a_simulator_started_after_it(settings: Settings, tmp_path: Path) -> None:
    from metaheal.demo import demo_settings
    from metaheal.runtime import write_settings
    from metaheal.topics import ensure_topics

    s = demo_settings(settings, tmp_path, settings.topics.prefix)
    assert s.services == []
    config = write_settings(s, tmp_path / "metaheal.yaml")
    ensure_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    up_log, sim_log = tmp_path / "up.log", tmp_path / "simulate.log"
    with open(up_log, "wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", "--config", str(config), "--workdir", str(tmp_path)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    sim = None
    try:
        assert wait_for_text(up_log, "runtime starting", 60, up), up_log.read_text()[-3000:]
        with open(sim_log, "wb") as out:
            sim = subprocess.Popen(
                [*CLI, "simulate", "--config", str(config), "--scenario", "db_slow_query", "--at", "25", *SIM_ARGS],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        assert wait_for_text(sim_log, "scenario injected", 60, sim), sim_log.read_text()[-3000:]
        injected = time.time()
        healed: list[SignedOutcome] = []
        deadline = time.monotonic() + 90
        while not healed and time.monotonic() < deadline and up.poll() is None:
            time.sleep(1.0)
            # db's fix: fail it over to the replica (the executor acts on db itself or on its caller)
            healed = [
                o
                for o in outcomes(s)
                if o.ts >= injected - 1
                and o.service in ("db", "api_cluster")
                and o.playbook == "failover_dependency"
                and o.result == "success"
                and o.verification_passed
            ]
        log = up_log.read_text(errors="replace")
        assert healed, (
            "no verified failover for db; outcomes: "
            + "; ".join(f"{o.playbook}@{o.service}:{o.result}" for o in outcomes(s))
            + "\n"
            + log[-4000:]
        )
        # the executor knew the fleet only from the simulator's registrations
        assert f"service registered name={healed[0].service} admin_url=http://127.0.0.1:" in log
        assert healed[0].trust_decision == "auto_approved"
        # healed: every service's own /health (at the registered admin URL) is OK again
        registry = read_registry(s).services
        assert set(registry) == {"web", "api_cluster", "db", "cache", "payments"}
        sick = {
            n: r.text
            for n, r in ((n, httpx.get(f"{reg.admin_url}/health", timeout=5)) for n, reg in registry.items())
            if r.status_code != 200
        }
        assert not sick, sick
        # a simulator that stops takes its admin URLs away: the running control plane forgets them
        assert stop(sim) == 0, sim_log.read_text()[-2000:]
        assert wait_for_text(up_log, "service deregistered name=db", 15, up), up_log.read_text()[-3000:]
    finally:
        if sim is not None:
            stop(sim)
        code = stop(up)
    assert code == 0 and "up stopped cleanly" in up_log.read_text(), up_log.read_text()[-3000:]
