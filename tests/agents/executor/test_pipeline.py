"""The executor end to end: real broker, real ledger, a real HTTP service under control."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from metaheal.agents.executor.approvals import load_signing_key, sign_for
from metaheal.agents.executor.service import Executor
from metaheal.config import Settings
from metaheal.events import (
    ApprovalDecision,
    ApprovalRequest,
    Directive,
    DirectiveAdvice,
    SignedOutcome,
)
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroSerializer, EventDecoder
from metaheal.ledger.signing import RecordSigner
from tests.agents.executor.conftest import send_directive, signed_headers, spawn_executor, write_config

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]


def directive(**kw) -> Directive:
    base = dict(
        directive_id=f"d-{uuid.uuid4().hex[:8]}",
        cycle_id=f"c-{uuid.uuid4().hex[:8]}",
        ts=time.time(),
        service="api",
        focus_area="capacity_strain",
        guardrail_level="loose",
        ml_advice=DirectiveAdvice(root_causes=["cpu_saturation"], recommended_playbooks=["scale_up_instances"]),
        confidence=0.9,
        time_budget_seconds=60,
    )
    base.update(kw)
    return Directive(**base)


def flag_directive(**kw) -> Directive:
    kw.setdefault("focus_area", "error_spike")
    kw.setdefault("ml_advice", DirectiveAdvice(root_causes=["bad_deployment"], recommended_playbooks=["rollback_flag"]))
    return directive(**kw)


async def actions(ex: Executor, cycle_id: str) -> list[tuple[str, str]]:
    return [(e.action, e.result) for e in await ex.log.replay_cycle(cycle_id)]


def read_all(settings: Settings, short: str) -> list:
    decoder = EventDecoder()
    with Consumer(settings.kafka, **{"fetch.wait.max.ms": 50}) as c:
        return [decoder(m.value()) for m in c.read_to_end(settings.topics.name(short))]


async def wait_until(predicate, timeout: float = 30.0, what: str = "condition", blocking: bool = False):
    """Poll ``predicate`` (in a worker thread if it does blocking Kafka reads, so the executor keeps running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate) if blocking else predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def pending_request(settings: Settings, plan_id: str) -> ApprovalRequest:
    async def find():
        for ev in await asyncio.to_thread(read_all, settings, "approvals"):
            if isinstance(ev, ApprovalRequest) and ev.plan_id == plan_id:
                return ev
        return None

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        req = await find()
        if req:
            return req
        await asyncio.sleep(0.1)
    raise AssertionError(f"no approval request for {plan_id}")


def send_decision(settings: Settings, decision: ApprovalDecision) -> None:
    with Producer(settings.kafka) as p:
        p.send(settings.topics.name("approvals"), AvroSerializer(ApprovalDecision)(decision), key=decision.plan_id)


def decide(settings: Settings, key: Path, req: ApprovalRequest, operator: str, decision: str, **kw: Any) -> None:
    """Sign ``decision`` for ``req`` with the operator's key file and publish it."""
    send_decision(settings, sign_for(load_signing_key(key), req, operator=operator, decision=decision, **kw))


# --- the auto-approved path ----------------------------------------------------------------------


async def test_auto_approved_success_is_signed_published_and_learnable(env, executor: Executor):
    settings, svc, _ = env
    d = directive()
    outcome = await (await executor.submit(d))
    assert outcome.result == "success", outcome.rationale
    assert outcome.trust_decision == "auto_approved" and outcome.verification_passed is True
    assert svc.calls["POST /scale"] == 1 and svc.instances == 5
    acts = [a for a, _ in await actions(executor, d.cycle_id)]
    assert acts == ["plan_created", "trust_checked", "execution_started"] + ["step_executed"] * 6 + [
        "verification_result",
        "verification_result",
        "execution_outcome",
    ]
    published = [o for o in read_all(settings, "outcomes") if isinstance(o, SignedOutcome)]
    assert [o.outcome_id for o in published] == [outcome.outcome_id]
    assert published[0].actor_signature == outcome.actor_signature
    learned = await executor.log.get_signed_outcomes(subsystem="meta_coordinated_healing", hours_back=1)
    payload = json.loads(learned[-1].payload)
    # the design's vocabulary: the outcome is about the service, its result is the outcome's
    assert (learned[-1]["resource"], learned[-1]["result"], learned[-1]["playbook"]) == (
        "api",
        "success",
        "scale_up_instances",
    )
    assert {
        k: payload[k]
        for k in ("plan_id", "directive_id", "service", "playbook", "root_cause", "result", "verification_passed")
    } == {
        "plan_id": outcome.plan_id,
        "directive_id": d.directive_id,
        "service": "api",
        "playbook": "scale_up_instances",
        "root_cause": "cpu_saturation",
        "result": "success",
        "verification_passed": True,
    }
    verdicts = payload["verdicts"]
    assert (
        verdicts[0]["query"]["metric"] == "latency_p95_ms"
        and verdicts[0]["observed"]
        and verdicts[0]["threshold"] == 200
    )


# --- approvals -----------------------------------------------------------------------------------


async def test_approval_required_then_approved(env, executor: Executor):
    settings, svc, alice_key = env
    d = flag_directive(guardrail_level="tight", confidence=0.97)
    task = await executor.submit(d)
    req = await pending_request(settings, executor.state.get(d.directive_id).plan_id)
    assert "impact medium exceeds tight limit low" in req.reason
    assert svc.calls["POST /flags/rollback"] == 0  # nothing happens before the approval
    decide(settings, alice_key, req, "alice", "approve", reason="go")
    outcome = await task
    assert outcome.result == "success" and outcome.trust_decision == "approved_by:alice"
    assert svc.calls["POST /flags/rollback"] == 1
    acts = [a for a, _ in await actions(executor, d.cycle_id)]
    assert acts[:4] == ["plan_created", "trust_checked", "approval_requested", "approval_received"]


async def test_approval_denied_runs_nothing(env, executor: Executor):
    settings, svc, alice_key = env
    d = flag_directive(guardrail_level="tight", confidence=0.97)
    task = await executor.submit(d)
    req = await pending_request(settings, executor.state.get(d.directive_id).plan_id)
    decide(settings, alice_key, req, "alice", "deny", reason="not now")
    outcome = await task
    assert outcome.result == "denied" and outcome.trust_decision == "denied"
    assert sum(n for k, n in svc.calls.items() if k.startswith("POST")) == 0


async def test_forged_and_unauthorised_rejected_then_expiry_cancels(env):
    settings, svc, alice_key = env
    settings.executor.approval_expiry_seconds = 4
    ex = Executor(settings)
    await ex.start()
    try:
        d = flag_directive(guardrail_level="tight", confidence=0.97)
        task = await ex.submit(d)
        req = await pending_request(settings, ex.state.get(d.directive_id).plan_id)
        mallory = SigningKey.generate()  # claims to be alice
        send_decision(
            settings,
            sign_for(mallory, req, operator="alice", decision="approve"),
        )
        bob_key = next(
            p
            for p in settings.keys.glob("*.key")
            if p != alice_key and load_signing_key(p).verify_key.encode().hex() == settings.operators[1].public_key
        )
        decide(settings, bob_key, req, "bob", "approve")
        outcome = await task
        assert outcome.result == "expired" and outcome.trust_decision == "expired"
        assert sum(n for k, n in svc.calls.items() if k.startswith("POST")) == 0
        entries = await ex.log.replay_cycle(d.cycle_id)
        violations = [json.loads(e.payload)["reason"] for e in entries if e.action == "trust_violation"]
        assert any(v.startswith("forged") for v in violations), violations
        assert any(v.startswith("unauthorised") for v in violations), violations
        assert entries[-1].action == "execution_outcome" and entries[-1].result == "expired"
    finally:
        await ex.close()


async def test_late_valid_approval_is_rejected_as_expired(env):
    settings, svc, alice_key = env
    settings.executor.approval_expiry_seconds = 2
    ex = Executor(settings)
    await ex.start()
    try:
        d = flag_directive(guardrail_level="tight", confidence=0.97)
        task = await ex.submit(d)
        req = await pending_request(settings, ex.state.get(d.directive_id).plan_id)
        decide(settings, alice_key, req, "alice", "approve", decided_at=req.expires_at + 1)
        outcome = await task
        assert outcome.result == "expired" and svc.calls["POST /flags/rollback"] == 0
    finally:
        await ex.close()


# --- failures and rollback -----------------------------------------------------------------------


async def test_verification_failure_rolls_back(env, executor: Executor):
    _, svc, _ = env
    svc.latency_after_fix = 400.0  # scaling does not help
    d = directive()
    outcome = await (await executor.submit(d))
    assert outcome.result == "rolled_back" and outcome.verification_passed is False
    assert [b["delta"] for k, b in svc.log if k == "POST /scale"] == [2, -2] and svc.instances == 3
    entries = await executor.log.replay_cycle(d.cycle_id)
    verdict = json.loads(next(e.payload for e in entries if e.action == "verification_result"))
    assert verdict["status"] == "fail" and min(verdict["observed"]) == 400.0 and verdict["threshold"] == 200
    assert [e.result for e in entries if e.action == "rollback_executed"] == ["started", "ok"]


async def test_missing_telemetry_is_inconclusive_never_a_pass(env, executor: Executor):
    # The service emits telemetry, but not the metric this verification asks for.
    executor.playbooks["warm_cache"].verifications[0].metric = "latency_nobody_sends"
    executor.playbooks["warm_cache"].verdict_expiry_seconds = 1.0  # nobody answers the verdict request
    d = directive(
        focus_area="latency_drift",
        ml_advice=DirectiveAdvice(root_causes=["cache_miss_rate_high"], recommended_playbooks=["warm_cache"]),
    )
    outcome = await (await executor.submit(d))
    # not a pass, and not a failure either: the change stays, unverified (test_inconclusive.py has the rest)
    assert outcome.verification_passed is None and outcome.result == "inconclusive"
    entries = await executor.log.replay_cycle(d.cycle_id)
    verdict = json.loads(next(e.payload for e in entries if e.action == "verification_result"))
    assert verdict["status"] == "inconclusive" and verdict["observed"] == []


async def test_step_timeout_rolls_back(env, executor: Executor):
    _, svc, _ = env
    svc.hang.add("POST /flags/rollback")
    d = flag_directive()
    outcome = await (await executor.submit(d))
    assert outcome.result == "rolled_back"
    assert svc.calls["POST /flags/rollback"] == 1 and svc.calls["POST /flags/restore"] == 1
    entries = await executor.log.replay_cycle(d.cycle_id)
    failed = json.loads(next(e.payload for e in entries if e.action == "step_executed" and e.result == "failed"))
    assert "timeout" in failed["error"] or "timed out" in failed["error"]


async def test_time_budget_exceeded_rolls_back(env, executor: Executor):
    _, svc, _ = env
    svc.hang.add("POST /flags/rollback")
    d = flag_directive(time_budget_seconds=1)
    outcome = await (await executor.submit(d))
    assert outcome.result == "rolled_back"
    assert any("time budget" in i for i in outcome.learned_insights), outcome.learned_insights
    assert outcome.duration_seconds < 10


# --- policies ------------------------------------------------------------------------------------


async def test_rate_limit_denies_second_action(env):
    settings, svc, _ = env
    settings.executor.rate_limits = {"api": 1}
    ex = Executor(settings)
    await ex.start()
    try:
        first = await (await ex.submit(directive()))
        assert first.result == "success"
        d2 = directive()
        second = await (await ex.submit(d2))
        assert second.result == "denied" and svc.calls["POST /scale"] == 1
        entries = await ex.log.replay_cycle(d2.cycle_id)
        violation = json.loads(next(e.payload for e in entries if e.action == "trust_violation"))
        assert violation["violations"] == ["rate_limit"]
    finally:
        await ex.close()


async def test_lock_denies_a_second_plan_on_the_same_service(env, executor: Executor):
    settings, svc, alice_key = env
    waiting = flag_directive(guardrail_level="tight", confidence=0.97)
    task = await executor.submit(waiting)
    req = await pending_request(settings, executor.state.get(waiting.directive_id).plan_id)
    d2 = directive()
    second = await (await executor.submit(d2))
    assert second.result == "denied" and svc.calls["POST /scale"] == 0
    entries = await executor.log.replay_cycle(d2.cycle_id)
    violation = json.loads(next(e.payload for e in entries if e.action == "trust_violation"))
    assert violation["violations"] == ["lock"] and req.plan_id in violation["reasons"][0]
    decide(settings, alice_key, req, "alice", "deny")
    assert (await task).result == "denied"


async def test_kill_switch_denies_everything(env, tmp_path: Path):
    settings, svc, _ = env
    switch = tmp_path / "KILL"
    settings.executor.kill_switch_file = switch
    ex = Executor(settings)
    await ex.start()
    try:
        switch.touch()
        d = directive()
        outcome = await (await ex.submit(d))
        assert outcome.result == "denied" and sum(svc.calls.values()) == 0
        entries = await ex.log.replay_cycle(d.cycle_id)
        assert (
            "kill_switch" in json.loads(next(e.payload for e in entries if e.action == "trust_violation"))["violations"]
        )
        switch.unlink()
        assert (await (await ex.submit(directive()))).result == "success"
    finally:
        await ex.close()


async def test_deny_list_makes_planner_choose_another_playbook(env):
    settings, svc, _ = env
    settings.executor.deny_playbooks = {"api": ["scale_up_instances"]}
    ex = Executor(settings)
    await ex.start()
    try:
        d = directive(
            focus_area="latency_drift",
            ml_advice=DirectiveAdvice(
                root_causes=["database_slow_query"], recommended_playbooks=["scale_up_instances", "warm_cache"]
            ),
        )
        outcome = await (await ex.submit(d))
        assert outcome.playbook == "warm_cache" and svc.calls["POST /scale"] == 0
    finally:
        await ex.close()


# --- exactly once --------------------------------------------------------------------------------


async def test_duplicate_and_invalid_directives_on_the_topic(env):
    """A directive delivered twice runs once (also after a restart); bad bytes go to the dead-letter topic."""
    settings, svc, _ = env
    settings.kafka.session_timeout_ms = 3000  # tansu group joins take about half of it
    stop = asyncio.Event()
    ex = Executor(settings)
    runner = asyncio.create_task(ex.run(stop))
    d = directive()
    later = directive(
        focus_area="latency_drift",
        ml_advice=DirectiveAdvice(root_causes=["cache_miss_rate_high"], recommended_playbooks=["warm_cache"]),
    )
    ser = AvroSerializer(Directive)
    topic = settings.topics.name("directives")

    def outcomes(directive_id: str) -> list[SignedOutcome]:
        return [
            o for o in read_all(settings, "outcomes") if isinstance(o, SignedOutcome) and o.directive_id == directive_id
        ]

    try:
        with Producer(settings.kafka) as p:
            p.send(topic, ser(d), key=d.service, headers=signed_headers(settings, d, d.service))
            p.send(topic, ser(d), key=d.service, headers=signed_headers(settings, d, d.service))
            junk = b'{"not": "avro"}'  # signed, so what is refused is the encoding (unsigned: tests/security)
            p.send(
                topic,
                junk,
                key="api",
                headers=RecordSigner(settings.keys, "meta_loop").sign("directive", junk, key="api"),
            )
        await wait_until(lambda: outcomes(d.directive_id), 60, "first outcome", blocking=True)
        with Producer(settings.kafka) as p:  # same key, same partition: after the duplicate and the bad record
            p.send(topic, ser(later), key=later.service, headers=signed_headers(settings, later, later.service))
        await wait_until(lambda: outcomes(later.directive_id), 60, "second outcome", blocking=True)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
    assert len(outcomes(d.directive_id)) == 1 and svc.calls["POST /scale"] == 1
    assert outcomes(later.directive_id)[0].result == "success"
    letters = read_all(settings, "deadletter")
    assert [(x.reason, x.value) for x in letters] == [("invalid directive", b'{"not": "avro"}')]
    assert "invalid Directive" in letters[0].error or "single-object" in letters[0].error
    again = Executor(settings)  # a restarted executor remembers through the durable state
    await again.start()
    try:
        assert await again.submit(d) is None
    finally:
        await again.close()


async def _kill_when(settings: Settings, svc, proc: subprocess.Popen, what: str, pred) -> Directive:
    try:
        d = directive()
        send_directive(settings, d)
        await wait_until(pred, 60, what)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    svc.hang.clear()
    svc.hang_after.clear()
    return d


async def _recover(settings: Settings, d: Directive):
    ex = Executor(settings)
    await ex.start()  # finds the mid-flight plan and recovers it
    try:
        await wait_until(
            lambda: ex.state.get(d.directive_id) and ex.state.get(d.directive_id).status == "done", 60, "recovery"
        )
        return await ex.log.replay_cycle(d.cycle_id)
    finally:
        await ex.close()


def _published(settings: Settings, directive_id: str) -> list[SignedOutcome]:
    return [
        o for o in read_all(settings, "outcomes") if isinstance(o, SignedOutcome) and o.directive_id == directive_id
    ]


async def test_sigkill_mid_call_resends_an_idempotent_step_with_its_key(env, tmp_path: Path):
    settings, svc, _ = env
    svc.hang.add("POST /scale")  # the executor is killed while step 1 is in flight
    settings.ledger.writer_lease_seconds = 1.5  # the dead writer's ledger lease lapses sooner
    settings.kafka.session_timeout_ms = 3000  # tansu group joins take about half of it
    proc = spawn_executor(settings, tmp_path)
    d = await _kill_when(settings, svc, proc, "step 1 in flight", lambda: svc.calls["POST /scale"] == 1)
    entries = await _recover(settings, d)
    assert svc.calls["GET /capacity"] == 1
    sent = [b for k, b in svc.log if k == "POST /scale"]
    # the same request twice (the first never answered), applied once; nothing to undo
    assert [b["delta"] for b in sent] == [2, 2] and len({b["idempotency_key"] for b in sent}) == 1
    assert sent[0]["idempotency_key"].endswith("/1") and svc.instances == 5
    story = [(e.action, e.result) for e in entries]
    assert story == [
        ("plan_created", "planned"),
        ("trust_checked", "auto_approve"),
        ("execution_started", "started"),
        ("step_executed", "started"),
        ("step_executed", "ok"),
        ("step_executed", "started"),
        ("plan_recovered", "resend"),
        ("step_executed", "started"),
        ("step_executed", "ok"),
        ("step_executed", "started"),
        ("step_executed", "ok"),
        ("verification_result", "pass"),
        ("verification_result", "pass"),
        ("execution_outcome", "success"),
    ], story
    assert json.loads(entries[7].payload)["phase"] == "resend"
    assert [o.result for o in _published(settings, d.directive_id)] == ["success"]


def _not_idempotent(settings: Settings) -> None:
    path = settings.playbooks / "scale_up_instances.yaml"
    path.write_text(path.read_text().replace("idempotent: true", "idempotent: false"))


async def test_sigkill_after_a_non_idempotent_call_applied_verifies_it_instead_of_undoing(env, tmp_path: Path):
    settings, svc, _ = env
    _not_idempotent(settings)
    svc.hang_after.add("POST /scale")  # the scale-up takes effect; its answer never comes back
    settings.ledger.writer_lease_seconds = 1.5
    settings.kafka.session_timeout_ms = 3000
    proc = spawn_executor(settings, tmp_path)
    d = await _kill_when(settings, svc, proc, "step 1 applied", lambda: svc.instances == 5)
    entries = await _recover(settings, d)
    assert [b["delta"] for k, b in svc.log if k == "POST /scale"] == [2]  # never repeated, never undone
    story = [(e.action, e.result) for e in entries]
    assert story[6:] == [
        ("plan_recovered", "verify_effect"),
        ("verification_result", "pass"),
        ("verification_result", "pass"),
        ("execution_outcome", "success"),
    ], story
    assert [o.result for o in _published(settings, d.directive_id)] == ["success"]


async def test_sigkill_before_a_non_idempotent_call_ran_is_not_compensated_blind(env, tmp_path: Path):
    settings, svc, _ = env
    _not_idempotent(settings)
    svc.hang.add("POST /scale")  # killed before the service applied anything
    settings.ledger.writer_lease_seconds = 1.5
    settings.kafka.session_timeout_ms = 3000
    proc = spawn_executor(settings, tmp_path)
    d = await _kill_when(settings, svc, proc, "step 1 in flight", lambda: svc.calls["POST /scale"] == 1)
    entries = await _recover(settings, d)
    # no effect to see (latency stays high): not repeated, and no compensating scale-down of a step that never ran
    assert [b["delta"] for k, b in svc.log if k == "POST /scale"] == [2] and svc.instances == 3
    story = [(e.action, e.result) for e in entries]
    assert story[6] == ("plan_recovered", "verify_effect") and story[-1] == ("execution_outcome", "failed"), story
    assert "rollback_executed" not in [a for a, _ in story]
    outcome = json.loads(entries[-1].payload)
    assert any("manual check needed" in line for line in outcome["learned_insights"]), outcome


async def test_cli_lists_and_approves_a_pending_plan(env, executor: Executor, tmp_path: Path):
    from typer.testing import CliRunner

    from metaheal.cli import app

    settings, _svc, alice_key = env
    cfg = write_config(settings, tmp_path / "metaheal.yaml")
    d = flag_directive(guardrail_level="tight", confidence=0.97)
    task = await executor.submit(d)
    plan_id = executor.state.get(d.directive_id).plan_id
    await pending_request(settings, plan_id)
    runner = CliRunner()
    listed = await asyncio.to_thread(runner.invoke, app, ["approvals", "list", "--json", "--config", str(cfg)])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["plan_id"], r["state"]) for r in rows] == [(plan_id, "pending")]
    wrong = await asyncio.to_thread(
        runner.invoke, app, ["approvals", "approve", "plan-nope", "--key", str(alice_key), "--config", str(cfg)]
    )
    assert wrong.exit_code == 1 and "no approval request for plan plan-nope" in wrong.output
    req = await pending_request(settings, plan_id)
    changed = await asyncio.to_thread(
        runner.invoke,
        app,
        ["approvals", "approve", plan_id, "--key", str(alice_key), "--plan-hash", "00000000", "--config", str(cfg)],
    )
    assert changed.exit_code == 1 and "you reviewed" in changed.output and "00000000" in changed.output
    assert [r["plan_hash"] for r in rows] == [req.plan_hash]
    ok = await asyncio.to_thread(
        runner.invoke,
        app,
        [
            "approvals",
            "approve",
            plan_id,
            "--key",
            str(alice_key),
            "--reason",
            "checked dashboards",
            "--plan-hash",
            req.plan_hash[:12],
            "--config",
            str(cfg),
        ],
    )
    assert ok.exit_code == 0 and f"approve {plan_id} by alice" in ok.stdout
    outcome = await task
    assert outcome.result == "success" and outcome.trust_decision == "approved_by:alice"


async def test_sigkill_during_verification_resumes_verification(env, tmp_path: Path):
    settings, svc, _ = env
    svc.hang.add("GET /health")  # killed while the http_check is in flight
    settings.kafka.session_timeout_ms = 3000  # the dead member's partitions are reassigned sooner
    settings.ledger.writer_lease_seconds = 1.5  # and its ledger lease lapses sooner
    proc = spawn_executor(settings, tmp_path)
    try:
        d = directive()
        send_directive(settings, d)
        await wait_until(lambda: svc.calls["GET /health"] == 1, 60, "verification in flight")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    svc.hang.clear()
    # The successor joins the consumer group and recovers the plans of the partitions it is assigned.
    stop = asyncio.Event()
    ex = Executor(settings)
    runner = asyncio.create_task(ex.run(stop))
    try:
        await wait_until(
            lambda: ex.state.get(d.directive_id) and ex.state.get(d.directive_id).status == "done", 60, "recovery"
        )
        entries = await ex.log.replay_cycle(d.cycle_id)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
    assert [b["delta"] for k, b in svc.log if k == "POST /scale"] == [2]  # no step again, no rollback
    story = [(e.action, e.result) for e in entries]
    assert story[-4:] == [
        ("plan_recovered", "resume_verification"),
        ("verification_result", "pass"),
        ("verification_result", "pass"),
        ("execution_outcome", "success"),
    ], story
    assert [a for a, _ in story].count("step_executed") == 6


async def test_ledger_failure_halts_the_plan_which_resumes_in_place_when_the_ledger_is_back(env, tmp_path: Path):
    from typer.testing import CliRunner

    from metaheal.agents.meta.status import StatusClient
    from metaheal.cli import app
    from metaheal.ledger.keys import KeyRegistry

    settings, svc, _ = env
    ex = Executor(settings)
    await ex.start()
    try:
        # the planner's ledger key (its first append: plan_created) goes: the ledger refuses, fail closed
        # (the executor's own key stays: it signs the durable state that shows the halt)
        planner_key = KeyRegistry.load(settings.keys).current("agentic_planner").key_id
        key_file = settings.keys / f"{planner_key}.key"
        saved = key_file.read_bytes()
        key_file.unlink()
        d = directive()
        task = await ex.submit(d)
        halted = await wait_until(
            lambda: (r := ex.state.get(d.directive_id)) is not None and r.halted and r.resume_attempts >= 2 and r,
            30,
            "the plan halted (and retried)",
        )
        assert sum(svc.calls.values()) == 0 and not task.done()
        assert halted.step_started is None and halted.status != "done"  # nothing ran
        shown = await asyncio.to_thread(StatusClient(settings).plans_in_flight)
        row = next(p for p in shown if p["directive_id"] == d.directive_id)
        assert row["status"] == "halted" and row["halted"] and row["next_resume_at"] is not None
        shown = await asyncio.to_thread(
            CliRunner().invoke, app, ["status", "--config", str(write_config(settings, tmp_path / "m.yaml"))]
        )
        assert shown.exit_code == 0 and "Plans in flight" in shown.stdout and "halted" in shown.stdout, shown.output
        key_file.write_bytes(saved)  # the ledger is back: the plan resumes without a restart
        outcome = await asyncio.wait_for(task, 60)
        assert outcome is not None and outcome.result == "success", outcome
        assert svc.calls["POST /scale"] == 1
        rec = ex.state.get(d.directive_id)
        assert rec.status == "done" and rec.halted is None
        acts = [a for a, _ in await actions(ex, d.cycle_id)]
        # each resume records itself (plan_recovered), then the plan is made once it can be recorded
        planned = acts.index("plan_created")
        assert set(acts[:planned]) == {"plan_recovered"} and acts[planned + 1] == "trust_checked"
        assert acts.count("plan_created") == 1 and acts.count("execution_outcome") == 1
        shown = await asyncio.to_thread(StatusClient(settings).plans_in_flight)
        assert d.directive_id not in {p["directive_id"] for p in shown}
    finally:
        await ex.close()


async def test_dry_run_plans_and_checks_without_executing(env):
    settings, svc, _ = env
    settings.executor.dry_run = True
    ex = Executor(settings)
    await ex.start()
    try:
        d = directive()
        assert await (await ex.submit(d)) is None
        rec = ex.state.get(d.directive_id)
        assert rec.status == "done" and rec.result == "dry_run"
        assert sum(n for k, n in svc.calls.items() if k.startswith("POST")) == 0
        plans = [p for p in read_all(settings, "plans") if getattr(p, "directive_id", None) == d.directive_id]
        assert plans and plans[0].selected_playbook == "scale_up_instances"
    finally:
        await ex.close()
