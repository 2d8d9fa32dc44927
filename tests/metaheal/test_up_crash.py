"""SIGKILL of `metaheal up`'s whole process group at each point of a plan, then `metaheal up` again.

The fleet runs in its own process (`metaheal simulate`, which registers the services and
honours Idempotency-Key), so it outlives the kills and can tell how often each key reached
it. `up` runs the streams worker (a child in its own session, which a process-group kill
does not reach) and the executor. The kill is real: `METAHEAL_TEST_CRASH_AT` makes the
executor SIGKILL its own process group at that point. For each point the test shows: no
orphan process, no repeated call, exactly one outcome, the scale-up verified (not undone),
and a ledger that verifies clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from metaheal.agents.executor.recovery import CRASH_ENV, CRASH_POINTS
from metaheal.broker import EmbeddedBroker
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.events import Directive, DirectiveAdvice, SignedOutcome
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger.signing import RecordSigner
from metaheal.procs import ProcessTable, cmdline
from metaheal.registry import read_registry
from tests.conftest import TEST_SESSION_TIMEOUT_MS

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to look for orphans"),
]

CLI = [sys.executable, "-c", "from metaheal.cli import main; main()"]
SERVICE = "api_cluster"
#: scale_up_instances with test-sized timeouts, whose verification needs the two new instances serving
PLAYBOOK = """
name: scale_up_instances
description: add two instances, wait until they serve, verify they still do
applies_to: {focus_areas: [capacity_strain], root_causes: [traffic_surge]}
impact: low
blast_radius: 1
prior_success: 0.7
steps:
  - {action: http.get, params: {url: "{{ service.admin_url }}/capacity"}, timeout: 5, save_as: capacity}
  - {action: http.post, params: {url: "{{ service.admin_url }}/scale", json: {delta: 2}}, timeout: 10, idempotent: true}
  - {action: wait_for, params: {metric: instances, op: ">=", value: "{{ capacity.instances + 2 }}"}, timeout: 15}
verifications:
  - {type: metric_threshold, metric: instances, op: ">=", value: "{{ capacity.instances + 2 }}", within: 15,
     min_samples: 2}
  - {type: http_check, url: "{{ service.admin_url }}/health", expect_status: 200, within: 15}
rollback:
  - {action: http.post, params: {url: "{{ service.admin_url }}/scale", json: {delta: -2}}, timeout: 10,
     idempotent: true}
"""
#: what recovery does at each kill point (the ledger's `plan_recovered` entries)
RECOVERY = {
    "after_write_ahead": ["resend"],
    "after_call": ["resend"],
    "during_verification": ["resume_verification"],
    "before_publish": [],  # the signed outcome exists: recovery only publishes it
}
#: how often the service received the scale-up's key: once, or a re-send of the same request
KEY_CALLS = {"after_write_ahead": 1, "after_call": 2, "during_verification": 1, "before_publish": 1}


def wait_for(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def outcomes(settings: Settings, directive_id: str) -> list[SignedOutcome]:
    de = AvroDeserializer(SignedOutcome)
    with Consumer(settings.kafka, **{"fetch.wait.max.ms": 50}) as c:
        msgs = list(c.read_to_end(settings.topics.name("outcomes")))
    return [o for o in (de(m.value()) for m in msgs if m.value()) if o.directive_id == directive_id]


def processes_mentioning(text: str) -> dict[int, str]:
    """Live (non-zombie) processes whose command line contains ``text``: the orphan check needs no PID file."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = cmdline(int(entry.name))
        try:
            zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if argv and not zombie and text in " ".join(argv):
            found[int(entry.name)] = " ".join(argv)[:200]
    return found


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


@dataclass
class Fleet:
    """One simulated fleet (its own process) shared by the kill points: it outlives every `up`."""

    settings: Settings
    config: Path
    admin: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def fleet(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from metaheal.runtime import write_settings
    from metaheal.topics import ensure_topics

    root = tmp_path_factory.mktemp("fleet")
    (root / "playbooks").mkdir()
    (root / "playbooks" / "scale_up_instances.yaml").write_text(PLAYBOOK)
    s = Settings(
        kafka=KafkaSettings(bootstrap=broker.bootstrap, session_timeout_ms=TEST_SESSION_TIMEOUT_MS),
        topics=TopicSettings(prefix=f"t{uuid.uuid4().hex[:10]}."),
        keys=root / "keys",
        playbooks=root / "playbooks",
    )
    s.ledger.writer_lease_seconds = 1.5  # the killed writer's ledger lease lapses sooner
    config = write_settings(s, root / "metaheal.yaml")
    ensure_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    sim_log = root / "simulate.log"
    sim_args = ["--interval", "0.25", "--ready-delay", "0.5", "--day-amplitude", "0", "--seed", "0"]
    sim = start([*CLI, "simulate", "--config", str(config), *sim_args], sim_log, env)
    try:
        admin = wait_for(
            lambda: (reg := read_registry(s, timeout=5).services.get(SERVICE)) and reg.admin_url,
            60,
            "the simulator's registrations",
            sim_log,
        )
        yield Fleet(s, config, admin, env)
    finally:
        assert stop(sim) == 0, sim_log.read_text()[-3000:]


# this plan is auto-approved: it never reaches "after_approval" (tests/security/test_approvals.py kills there)
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "after_approval"])
def test_sigkill_of_up_at_each_point_of_a_plan_then_restart(fleet: Fleet, tmp_path: Path, point: str) -> None:
    from metaheal.ledger import ImmutableLog
    from metaheal.ledger.verify import verify_ledger

    s, admin, env = fleet.settings, fleet.admin, fleet.env
    workdir = tmp_path / "up"
    workdir.mkdir()
    up_log = tmp_path / "up.log"
    up_args = [*CLI, "up", "--config", str(fleet.config), "--workdir", str(workdir), "--role", "streams,executor"]
    up = None
    try:
        up = start(up_args, up_log, {**env, CRASH_ENV: point})
        wait_for(lambda: "executor_assigned" in up_log.read_text(), 60, "the executor to join", up_log)
        worker = wait_for(lambda: ProcessTable(workdir).read("streams"), 30, "the streams worker", up_log)
        before = httpx.get(f"{admin}/capacity", timeout=5).json()["instances"]
        d = Directive(
            directive_id=f"d-{uuid.uuid4().hex[:8]}",
            cycle_id=f"c-{uuid.uuid4().hex[:8]}",
            ts=time.time(),
            service=SERVICE,
            focus_area="capacity_strain",
            guardrail_level="loose",
            ml_advice=DirectiveAdvice(root_causes=["traffic_surge"], recommended_playbooks=["scale_up_instances"]),
            confidence=0.9,
            time_budget_seconds=90,
        )
        with Producer(s.kafka) as p:
            value = AvroSerializer(Directive)(d)  # as the meta loop sends it: signed with its key
            headers = RecordSigner(s.keys, "meta_loop").sign("directive", value, key=SERVICE, record_id=d.directive_id)
            p.send(s.topics.name("directives"), value, key=SERVICE, headers=headers)

        # 1. killed at the point: the whole group by SIGKILL; the worker (its own session) must follow
        assert up.wait(60) == -signal.SIGKILL, up_log.read_text()[-3000:]
        assert f"test crash point reached point={point}" in up_log.read_text()
        orphans = wait_for(lambda: not processes_mentioning(str(workdir)), 20, "the children to die with up")
        assert orphans and worker.pid not in processes_mentioning(str(workdir))
        killed_at = up_log.stat().st_size

        # 2. restarted: recovery finishes the plan
        up = start(up_args, up_log, env)
        found = wait_for(lambda: outcomes(s, d.directive_id), 90, "the plan's outcome after the restart", up_log)
        assert stop(up) == 0, up_log.read_text()[-3000:]
        up = None
        after_restart = up_log.read_text(errors="replace")[killed_at:]
        assert not processes_mentioning(str(workdir)), "a child outlived a clean stop"
        assert ProcessTable(workdir).records() == []  # PID files removed on a clean stop

        # exactly one outcome, a verified success (the good change kept, not undone)
        found = outcomes(s, d.directive_id)
        assert len(found) == 1, [(o.result, o.outcome_id) for o in found]
        assert found[0].result == "success" and found[0].verification_passed is True, found[0].rationale
        # no repeated action: the scale-up's key reached the service once, or was re-sent and applied once
        calls = httpx.get(f"{admin}/idempotency", timeout=5).json()["calls"]
        mine = {k: n for k, n in calls.items() if k.startswith(f"{found[0].plan_id}/")}
        assert mine == {f"{found[0].plan_id}/1": KEY_CALLS[point]}, calls  # and no rollback key
        assert httpx.get(f"{admin}/capacity", timeout=5).json()["instances"] == before + 2
        # the ledger tells the story and verifies clean
        log = ImmutableLog(s)
        try:
            entries = log.replay_cycle_sync(d.cycle_id)
        finally:
            log.close()
        story = [e.action for e in entries]
        assert story.count("execution_outcome") == 1 and "rollback_executed" not in story, story
        recovered = [json.loads(e.payload)["recovery"] for e in entries if e.action == "plan_recovered"]
        assert recovered == RECOVERY[point], story
        if point == "before_publish":
            assert "published_now=True" in after_restart
        report = verify_ledger(s)
        assert report.clean, [str(f) for f in report.findings]
    finally:
        if up is not None:
            stop(up)
        for pid in processes_mentioning(str(workdir)):  # a failed run must not leave its orphans behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
