"""Leader election on the control topic, failover without a duplicate directive, and status read from the topics."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

from typer.testing import CliRunner

from metaheal.agents.meta.leader import ControlTopic
from metaheal.agents.meta.loop import MetaLoop
from metaheal.agents.meta.status import StatusClient, current_cycle, outcome_history
from metaheal.cli import app
from metaheal.config import Settings
from metaheal.events import ApprovalDecision, ApprovalRequest, CycleFocus, Directive


def latency(h: Any, service: str = "api") -> Any:
    return h.window(service, h.stats("latency", "latency_p95_ms", mean=240, base=150, p95=245, base_p95=150))


REPLICA_SCRIPT = """
import asyncio, json, logging, sys
from metaheal.config import Settings
from metaheal.agents.meta.loop import MetaLoop
logging.basicConfig(level=logging.INFO)
asyncio.run(MetaLoop(Settings(**json.loads(sys.argv[1])), replica_id="replica-a").run(asyncio.Event()))
"""


async def test_second_replica_takes_over_after_kill_9_without_a_duplicate_directive(
    h: Any, meta: Settings, bus: Any
) -> None:
    meta.cycle.lease_seconds = 3.0
    meta.cycle.cycle_seconds = 2.0
    bus.publish("health", latency(h), "api")
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLICA_SCRIPT, meta.model_dump_json()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        [d] = await h.until(lambda: bus.aread("directives", Directive), timeout=30)
        b = MetaLoop(meta, replica_id="replica-b")
        async with h.running(b):
            await h.until(lambda: b.obs.directed)  # the standby has read A's directive
            assert not b._leading
            proc.send_signal(signal.SIGKILL)  # no goodbye: the lease has to expire
            proc.wait(10)
            killed = time.time()
            await h.until(lambda: b._leading, timeout=15)
            took_over = time.time() - killed
            cycles = await h.until(
                lambda: [
                    c
                    for c in bus.read("cycles", CycleFocus)
                    if c.cycle_id in b.obs.cycle_focus
                    and int(c.cycle_id.rsplit("_", 1)[1]) > int(d.cycle_id.rsplit("_", 1)[1])
                    and c.ts >= killed
                ]
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert took_over <= meta.cycle.lease_seconds + 2.0
    b_cycle = cycles[0]
    assert b_cycle.focus_area == "latency_drift" and b_cycle.target_services == ["api"]  # same evidence, same focus
    assert bus.read("directives", Directive) == [d]  # A's directive is still open: no duplicate
    assert b.directives_issued == []
    view = StatusClient(meta).control()
    assert view.leader is not None and view.leader.holder == "replica-b" and view.leader.epoch >= 2
    assert view.last_cycle is not None and view.last_cycle["holder"] == "replica-b"


async def test_replicas_started_together_elect_exactly_one_leader(h: Any, meta: Settings, bus: Any) -> None:
    meta.cycle.cycle_seconds = 1.0
    meta.cycle.lease_seconds = 6.0  # generous: a heartbeat delayed by a busy test machine must not look like a death
    bus.publish("health", latency(h, "web"), "web")
    loops = [MetaLoop(meta, replica_id=f"replica-{i}") for i in range(3)]
    stops = [asyncio.Event() for _ in loops]
    tasks = [asyncio.create_task(m.run(s)) for m, s in zip(loops, stops, strict=True)]
    try:
        await h.until(lambda: sum(m.cycles_run for m in loops) >= 3)
    finally:
        for s in stops:
            s.set()
        await asyncio.gather(*tasks)
    assert sum(1 for m in loops if m.cycles_run) == 1
    assert len(bus.read("directives", Directive)) == 1


def test_control_topic_first_claim_of_an_epoch_wins(meta: Settings) -> None:
    a, b = ControlTopic(meta, "a"), ControlTopic(meta, "b")
    try:
        a.refresh(), b.refresh()  # both see no lease, both claim epoch 1; the log orders them
        assert a.acquire_or_renew() is True
        b.view.leader = None  # b decides on a stale view (as if it read before a's claim)
        b._next_offset = 0
        b.put("meta_loop.leader", {"holder": "b", "epoch": 1, "expires_at": time.time() + 60})
        b.refresh()
        assert not b.is_leader() and b.view.leader.holder == "a"
        assert a.still_leader()
    finally:
        a.close(), b.close()


async def test_status_client_and_cli_read_everything_from_the_topics(h: Any, meta: Settings, bus: Any) -> None:
    bus.publish("health", latency(h), "api")
    now = time.time()
    for rid in ("req-open", "req-done", "req-old"):
        bus.publish(
            "approvals",
            ApprovalRequest(
                request_id=rid,
                plan_id=f"p-{rid}",
                cycle_id="c",
                service="api",
                playbook="restart_service",
                reason="impact high",
                plan_summary="restart api",
                requested_at=now,
                expires_at=now + (600 if rid != "req-old" else -1),
            ),
            f"p-{rid}",
        )
    bus.publish(
        "approvals",
        ApprovalDecision(
            decision_id="x",
            request_id="req-done",
            plan_id="p-req-done",
            operator="alice",
            decision="approve",
            decided_at=now,
            key_id="k",
            signature="00",
        ),
        "p-req-done",
    )
    for i in range(3):
        bus.publish("outcomes", h.outcome(i, "search", "success", ts=now - 100 + i), "search")
    async with h.running(MetaLoop(meta, replica_id="r1")):
        await h.until(lambda: bus.aread("directives", Directive))
    cycle = current_cycle(meta)
    assert cycle is not None and cycle.focus_area == "latency_drift"
    assert [o.outcome_id for o in outcome_history(meta, limit=2)] == ["out1", "out2"]
    snap = StatusClient(meta).snapshot()
    assert snap["current_cycle"]["cycle_id"] == cycle.cycle_id
    # three recent successes (rate 1.00 > 0.85) loosened the guardrails one level; status shows the new level
    assert (cycle.guardrail_adjustment, cycle.guardrail_level) == ("loosen", "loose")
    assert snap["guardrail_level"] == "loose"
    assert [p["probe"] for p in snap["active_probes"]] == ["latency_histograms"]
    assert [r["request_id"] for r in snap["pending_approvals"]] == ["req-open"]
    assert "Approvals pending on api: their plans stay open until an operator decides." in cycle.reasoning

    env = {"METAHEAL_TOPICS__PREFIX": meta.topics.prefix, "METAHEAL_BOOTSTRAP": meta.kafka.bootstrap}
    res = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["current_cycle"]["cycle_id"] == cycle.cycle_id and len(doc["last_outcomes"]) == 3
    res = CliRunner().invoke(app, ["status"], env=env)
    assert res.exit_code == 0, res.output
    assert cycle.cycle_id in res.output and "latency_drift" in res.output and "req-open" in res.output
    assert "Latency drift: 150ms -> 245ms on api" in res.output


def test_status_without_bootstrap_exits_2_with_a_message() -> None:
    res = CliRunner().invoke(app, ["status"], env={"METAHEAL_BOOTSTRAP": ""})
    assert res.exit_code == 2
    assert "no Kafka bootstrap" in res.output
