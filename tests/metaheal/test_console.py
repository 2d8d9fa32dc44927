"""The web console over HTTP against the embedded broker: pages built from the topics, decisions checked.

The browser itself (WebCrypto signing, live updates) is driven in test_console_browser.py;
here decisions are signed in Python exactly as ``metaheal approvals approve`` signs them,
so the server's checks are exercised directly: a wrong key, an expired request, a changed
plan and a cross-site request are refused, a valid decision is published on the topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

from metaheal.agents.executor.approvals import DECODER, plan_hash, sign_decision, sign_for
from metaheal.config import OperatorSettings, Settings
from metaheal.console import ConsoleServer, ConsoleUnavailable
from metaheal.console.view import plan_digest
from metaheal.events import (
    AgenticPlan,
    AnomalyScore,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    HealthWindow,
    PlanStep,
    RiskAssessment,
    ServiceRegistration,
    SignalStats,
    SignedOutcome,
)
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroSerializer

pytestmark = pytest.mark.broker
session_loop = pytest.mark.asyncio(loop_scope="session")  # the console fixture runs on the session loop

ALICE = SigningKey(b"a" * 32)
MALLORY = SigningKey(b"m" * 32)


def plan(plan_id: str, *, ts: float = 100.0) -> AgenticPlan:
    return AgenticPlan(
        plan_id=plan_id,
        directive_id="d1",
        cycle_id="cyc-1",
        ts=ts,
        service="api",
        selected_playbook="rollback_flag",
        steps=[PlanStep(action="http_admin", params_json='{"path": "/flags/rollback"}')],
        verifications=[],
        rollback_plan=[],
        trust_approval_required=True,
        estimated_duration=12.0,
        risk_assessment=RiskAssessment(impact="high", blast_radius=3, risk_score=0.7),
        confidence=0.8,
    )


def request(plan_id: str, *, expires_in: float = 600.0) -> ApprovalRequest:
    now = time.time()
    return ApprovalRequest(
        request_id=f"req-{plan_id}",
        plan_id=plan_id,
        cycle_id="cyc-1",
        service="api",
        playbook="rollback_flag",
        reason="impact high exceeds maintain guardrails",
        plan_summary="rollback_flag on api",
        requested_at=now,
        expires_at=now + expires_in,
        plan_hash=plan_hash(plan(plan_id)),
        nonce=f"nonce-{plan_id}",
    )


def publish(settings: Settings, short: str, event: object, key: str) -> None:
    with Producer(settings.kafka) as p:
        p.send(settings.topics.name(short), AvroSerializer(type(event))(event), key=key)


async def until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def console(topics: Settings) -> AsyncIterator[tuple[ConsoleServer, httpx.AsyncClient]]:
    topics.operators = [OperatorSettings(name="alice", public_key=ALICE.verify_key.encode().hex(), services=["api"])]
    cycle = CycleFocus(
        cycle_id="cyc-1",
        ts=time.time(),
        focus_area="error_spike",
        confidence=0.82,
        reasoning=["api error rate 9% vs baseline 0.5%", "a deployment 40 s before the spike"],
        guardrail_adjustment="tighten",
        guardrail_level="tight",
        time_budget_seconds=60,
        target_services=["api"],
    )
    publish(topics, "cycles", cycle, "cyc-1")
    reg = ServiceRegistration(name="api", admin_url="http://127.0.0.1:1", registered_by="test", ts=time.time())
    publish(topics, "services", reg, "api")
    now = time.time()
    for i in range(5):
        stats = SignalStats(signal="errors", metric="error_rate", count=20, mean=0.05 * i, p50=0.05 * i,
                            p95=0.01 + 0.05 * i, max=0.3, baseline_mean=0.005, baseline_p95=0.01)  # fmt: skip
        window = HealthWindow(service="api", window_start=now - 10 + 2 * i, window_end=now - 8 + 2 * i,
                              sample_count=20, signals=[stats])  # fmt: skip
        publish(topics, "health", window, "api")
    anomaly = AnomalyScore(service="api", metric="error_rate", signal="errors", value=0.21, baseline=0.01,
                           score=0.9999, threshold=0.99, crossed=True, model="hst", ts=now, window_start=now - 2,
                           window_end=now)  # fmt: skip
    publish(topics, "anomalies", anomaly, "api")
    for pid, expires in (("p-ok", 600.0), ("p-old", -1.0), ("p-changed", 600.0)):
        publish(topics, "plans", plan(pid), "api")
        publish(topics, "approvals", request(pid, expires_in=expires), pid)
    server = ConsoleServer(topics, port=0)
    stop = asyncio.Event()
    await server.start()
    task = asyncio.create_task(server.run(stop))
    await until(lambda: len(server.view.requests) == 3 and len(server.view.plans) == 3 and server.view.anomalies)
    base = server.url.rstrip("/")
    async with httpx.AsyncClient(base_url=base, headers={"Origin": base}, timeout=10) as client:
        yield server, client
    stop.set()
    await task


def body(d: ApprovalDecision, digest: str | None) -> dict[str, object]:
    return {"decision": d.model_dump(), "plan_digest": digest}


@session_loop
async def test_pages_show_what_the_topics_hold(console: tuple[ConsoleServer, httpx.AsyncClient]) -> None:
    server, client = console
    home = (await client.get("/")).text
    assert "api error rate 9% vs baseline 0.5%" in home and "error_spike" in home
    assert 'data-service="api"' in home and "registered" in home
    assert '<span class="badge anomaly"' in home and "×21.00" in home  # p95 0.21 against baseline 0.01
    assert re.search(r'<polyline points="0\.0,23\.0 [^"]+ 120\.0,1\.0"/>', home), "no sparkline of the 5 windows"
    approvals = (await client.get("/approvals")).text
    assert 'id="approval-p-ok"' in approvals and "blast radius <b>3</b>" in approvals
    assert "never leaves this browser" in approvals
    assert 'id="approval-p-old"' not in approvals  # expired: listed under answered and expired only
    fragment = await client.get("/approvals", headers={"X-Fragment": "1"})
    assert fragment.headers["X-Pending"] == "2" and "<header>" not in fragment.text
    assert (await client.get("/cycles?focus=error_spike")).text.count("/cycles/cyc-1") >= 1
    assert "No cycles match" in (await client.get("/cycles?focus=latency_drift")).text
    assert (await client.get("/cycles/nope")).status_code == 404
    async with client.stream("GET", "/events") as events:
        lines = events.aiter_lines()
        assert await anext(lines) == "event: hello"
        later = CycleFocus(cycle_id="cyc-2", ts=time.time(), focus_area="latency_drift", confidence=0.6,
                           reasoning=["p95 up"], guardrail_adjustment="maintain", guardrail_level="maintain",
                           time_budget_seconds=60)  # fmt: skip
        await asyncio.to_thread(publish, server.settings, "cycles", later, "cyc-2")
        async with asyncio.timeout(10):
            while not (line := await anext(lines)).startswith('data: {"topics"'):
                pass
        assert json.loads(line[6:])["topics"] == ["cycles"]
    assert 'data-cycle-id="cyc-2"' in (await client.get("/")).text


@session_loop
async def test_a_valid_decision_is_published_and_bad_ones_refused(
    console: tuple[ConsoleServer, httpx.AsyncClient],
) -> None:
    server, client = console
    settings = server.settings
    digest = plan_digest(server.view.plans["p-ok"])

    def signed(key: SigningKey, plan_id: str, operator: str = "alice") -> ApprovalDecision:
        return sign_for(key, server.view.requests[plan_id], operator=operator, decision="approve")

    r = await client.post("/api/decisions", json=body(signed(MALLORY, "p-ok"), digest))
    assert r.status_code == 403 and "wrong key" in r.json()["message"] and "not operator alice's" in r.json()["message"]
    tampered = signed(ALICE, "p-ok").model_copy(update={"reason": "changed after signing"})
    r = await client.post("/api/decisions", json=body(tampered, digest))
    assert r.status_code == 403 and "signature does not verify" in r.json()["message"]
    r = await client.post("/api/decisions", json=body(signed(ALICE, "p-old"), plan_digest(server.view.plans["p-old"])))
    assert r.status_code == 410 and "expired" in r.json()["message"]
    r = await client.post("/api/decisions", json=body(signed(ALICE, "p-changed"), "0" * 64))
    assert r.status_code == 409 and "plan changed" in r.json()["message"]
    r = await client.post(
        "/api/decisions", json=body(signed(ALICE, "p-ok"), digest), headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 403 and r.json()["kind"] == "cross_site"
    r = await client.post(
        "/api/decisions", json=body(signed(ALICE, "p-ok"), digest), headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert r.status_code == 403 and r.json()["kind"] == "cross_site"
    req = server.view.requests["p-ok"]
    other_plan = sign_decision(
        ALICE, plan_id="p-ok", request_id=req.request_id, operator="alice", decision="approve",
        plan_hash="ab" * 32, nonce=req.nonce,
    )  # fmt: skip
    r = await client.post("/api/decisions", json=body(other_plan, digest))
    assert r.status_code == 403 and "signed for a different plan" in r.json()["message"], r.text
    page = (await client.get("/approvals")).text
    assert f'data-plan-hash="{plan_hash(plan("p-ok"))}"' in page and 'data-nonce="nonce-p-ok"' in page
    r = await client.post("/api/decisions", json={"decision": {"plan_id": "p-ok"}, "plan_digest": digest})
    assert r.status_code == 400 and "decision.decision_id" in r.json()["message"]

    good = signed(ALICE, "p-ok")
    r = await client.post("/api/decisions", json=body(good, digest))
    assert r.status_code == 200 and r.json()["ok"], r.text
    with Consumer(settings.kafka) as c:
        seen = [DECODER(m.value()) for m in c.read_to_end(settings.topics.name("approvals"))]
    published = [e for e in seen if isinstance(e, ApprovalDecision)]
    assert published == [good]  # exactly the signed decision, and nothing that was refused
    await until(lambda: bool(server.view.decisions.get("p-ok")))
    r = await client.post("/api/decisions", json=body(signed(ALICE, "p-ok"), digest))
    assert r.status_code == 409 and "already answered" in r.json()["message"]


@session_loop
async def test_a_verdict_request_is_answered_keep_or_rollback_in_the_console(
    console: tuple[ConsoleServer, httpx.AsyncClient],
) -> None:
    server, client = console
    settings = server.settings
    # p-kept ran after its approval; its verification was inconclusive, so the change waits for a verdict
    publish(settings, "plans", plan("p-kept"), "api")
    publish(settings, "approvals", request("p-kept"), "p-kept")
    ran = sign_for(ALICE, request("p-kept"), operator="alice", decision="approve")
    publish(settings, "approvals", ran, "p-kept")
    verdict = request("p-kept").model_copy(
        update={
            "request_id": "verdict-p-kept",
            "reason": "verification inconclusive: expected 3 sample(s) of error_rate <= 0.05 from api; none since",
            "plan_summary": "rollback_flag on api is in place and unverified: keep (approve) or roll back (deny)",
        }
    )
    publish(settings, "approvals", verdict, "p-kept")
    kept = SignedOutcome(outcome_id="o-kept", plan_id="p-kept", directive_id="d1", cycle_id="cyc-1", service="api",
                         playbook="rollback_flag", result="inconclusive", duration_seconds=61.0,
                         trust_decision="approved_by:alice", actor="executor", actor_signature="00", ts=time.time(),
                         verdict_request_id="verdict-p-kept")  # fmt: skip
    publish(settings, "outcomes", kept, "api")
    await until(lambda: "o-kept" in server.view.outcomes and server.view.requests["p-kept"].asks_verdict)
    page = (await client.get("/approvals")).text
    assert 'id="approval-p-kept"' in page and "could not be verified" in page and "Keep the change (sign)" in page
    assert "(change kept, awaiting verdict)" in (await client.get("/outcomes")).text
    # the approval that let it run does not answer the verdict; a keep signed for the verdict request does
    digest = plan_digest(server.view.plans["p-kept"])
    keep = sign_for(ALICE, verdict, operator="alice", decision="approve")
    r = await client.post("/api/decisions", json=body(keep, digest))
    assert r.status_code == 200 and r.json()["message"].startswith("Kept the change of plan p-kept"), r.text


@session_loop
async def test_token_and_host_checks(topics: Settings, tmp_path: Path) -> None:
    server = ConsoleServer(topics, port=0, token="s3cret")
    stop = asyncio.Event()
    await server.start()
    task = asyncio.create_task(server.run(stop))
    try:
        base = server.url.rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await client.get("/", headers={"Authorization": "Bearer s3cret"})).status_code == 200
            r = await client.get("/cycles?token=s3cret&focus=x")
            assert r.status_code == 303 and r.headers["location"] == "/cycles?focus=x"
            assert (await client.get("/cycles")).status_code == 200  # the cookie now carries the token
            # DNS rebinding: a page on another name that resolves here is not served
            assert (await client.get("/", headers={"Host": "evil.example"})).status_code == 400
        other = ConsoleServer(topics, port=server.port)
        with pytest.raises(ConsoleUnavailable, match="cannot listen"):
            await other.start()
    finally:
        stop.set()
        await task


def test_metaheal_console_command(topics: Settings, tmp_path: Path) -> None:
    from metaheal.runtime import write_settings

    config = write_settings(topics, tmp_path / "metaheal.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    cli = [sys.executable, "-c", "from metaheal.cli import main; main()", "console"]
    missing = subprocess.run([*cli, "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no Kafka bootstrap" in missing.stderr
    log = tmp_path / "console.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cli, "--config", str(config), "--port", "0"], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"metaheal console on (http://\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert httpx.get(m.group(1) + "healthz", timeout=5).text == "ok\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()
