"""Signed records: forged directives, executor state, leases, outcomes and registrations, written by a plain
producer as an attacker with write access to the broker would, against the real components and a real local
HTTP service. Each shows: nothing called, nothing run, no state change, a dead letter (and, where one is
meaningful, a ``trust_violation`` ledger entry) naming the reason; and the legitimate path still works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nacl.signing import SigningKey

from metaheal.agents.executor.service import Executor
from metaheal.agents.executor.state import PlanRecord
from metaheal.agents.meta.leader import GUARDRAILS_KEY, LEADER_KEY
from metaheal.agents.meta.loop import MetaLoop
from metaheal.agents.meta.status import StatusClient
from metaheal.broker import free_port
from metaheal.config import ServiceSettings, Settings
from metaheal.events import (
    AgenticPlan,
    Directive,
    DirectiveAdvice,
    HealthWindow,
    LedgerEntry,
    Metric,
    PlanStep,
    RiskAssessment,
    SignalStats,
    SignedOutcome,
)
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.keys import KeyRegistry, init_system_keys, key_id_of
from metaheal.ledger.signing import HEADER, RecordSigner, Signed, signed_message
from metaheal.runtime import Runtime

from .conftest import await_for, dead_letters, read_all

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


class Service:
    """A real HTTP service on a free port that counts every request and publishes healthy telemetry."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.port = 0
        self.fixed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.calls[f"{request.method} {request.path}"] += 1
        if request.path == "/capacity":
            return web.json_response({"instances": 3, "ready_instances": 3})
        self.fixed = True
        return web.json_response({"ok": True, "instances": 5})

    async def emit(self, settings: Settings, stop: asyncio.Event) -> None:
        ser, producer = AvroSerializer(Metric), Producer(settings.kafka)
        while not stop.is_set():
            now = time.time()
            for metric, value in (("latency_p95_ms", 120.0 if self.fixed else 400.0), ("error_rate", 0.01)):
                producer.produce(settings.topics.name("telemetry"), ser(Metric(service="api", metric=metric,
                                 value=value, ts=now)), key="api")  # fmt: skip
            await asyncio.to_thread(producer.flush, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        producer.close(2.0)


@pytest.fixture
async def env(topics: Settings, tmp_path: Path) -> AsyncIterator[tuple[Settings, Service]]:
    init_system_keys(topics.keys)
    svc = Service()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", svc.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    svc.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", svc.port).start()
    stop = asyncio.Event()
    emitter = asyncio.create_task(svc.emit(topics, stop))
    topics.services = [ServiceSettings(name="api", admin_url=svc.url)]
    topics.playbooks = _fast_playbooks(tmp_path / "playbooks")
    topics.kafka.session_timeout_ms = 6000
    try:
        yield topics, svc
    finally:
        stop.set()
        await emitter
        await runner.cleanup()


def _fast_playbooks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for src in PLAYBOOKS.glob("*.yaml"):
        text = src.read_text().replace("within: 60", "within: 3").replace("timeout: 60", "timeout: 5")
        (folder / src.name).write_text(text.replace("timeout: 30", "timeout: 2"))
    return folder


def send(settings: Settings, short: str, value: bytes | None, key: str, headers: dict[str, bytes] | None = None):
    """What an attacker can do: a plain producer, any bytes, any headers."""
    with Producer(settings.kafka) as p:
        p.send(
            settings.topics.name(short), value, key=key, headers=headers, partition=0 if short == "control" else None
        )


def forged_envelope(record_type: str, actor: str, value: bytes, key: str, record_id: str = "") -> dict[str, bytes]:
    """An envelope signed by a key the attacker made, claiming to be ``actor``."""
    sk = SigningKey.generate()
    kid = key_id_of(sk.verify_key.encode())
    s = Signed(record_type, actor, kid, time.time(), record_id)
    sig = sk.sign(signed_message(record_type, actor, kid, s.ts, record_id, key.encode(), value)).signature.hex()
    return {HEADER: s.header_value(sig)}


def violations(settings: Settings) -> list[dict[str, Any]]:
    return [e.payload_dict | {"actor": e.actor} for e in read_all(settings, "ledger", LedgerEntry)
            if e.action == "trust_violation"]  # fmt: skip


def directive(**kw: Any) -> Directive:
    base: dict[str, Any] = {
        "directive_id": f"d-{uuid.uuid4().hex[:8]}",
        "cycle_id": "cycle_20250101_000000_1",
        "ts": time.time(),
        "service": "api",
        "focus_area": "latency_drift",
        "guardrail_level": "maintain",
        "ml_advice": DirectiveAdvice(root_causes=["cache_miss_rate_high"], recommended_playbooks=["warm_cache"]),
        "confidence": 0.95,
        "time_budget_seconds": 60,
    }
    return Directive(**(base | kw))


# --- executor ---------------------------------------------------------------------------------------------------


def shell_rollback_record(marker: Path, directive_id: str = "d-evil") -> PlanRecord:
    """Executor state claiming a plan mid-rollback whose rollback is ``/bin/sh -c 'touch marker'``."""
    step = PlanStep(action="command", params_json=json.dumps({"argv": ["/bin/sh", "-c", f"touch {marker}"]}))
    plan = AgenticPlan(
        plan_id="plan-evil", directive_id="d-evil", cycle_id="c", ts=time.time(), service="ghost",
        selected_playbook="restart_service", steps=[step], verifications=[], rollback_plan=[step],
        trust_approval_required=False, estimated_duration=1.0,
        risk_assessment=RiskAssessment(impact="low", blast_radius=1, risk_score=0.1), confidence=1.0,
    )  # fmt: skip
    d = directive(directive_id="d-evil", service="ghost")
    return PlanRecord(
        directive_id=directive_id, service="ghost", status="rolling_back", plan_id="plan-evil",
        directive_json=d.model_dump_json(), plan_json=plan.model_dump_json(), steps_done=1, rollback_started=None,
    )  # fmt: skip


async def test_forged_executor_state_with_a_shell_rollback_runs_nothing(env: tuple[Settings, Service], tmp_path):
    settings, svc = env
    marker = tmp_path / "pwned"
    for did, headers in (("d-evil", None), ("d-evil2", "forged")):
        value = shell_rollback_record(marker, did).model_dump_json().encode()
        hdrs = forged_envelope("executor_state", "executor", value, did, did) if headers else None
        send(settings, "executor-state", value, did, hdrs)
    ex = Executor(settings)
    await ex.start()
    try:
        await asyncio.sleep(2.0)
        assert ex.state.get("d-evil") is None and ex.state.get("d-evil2") is None and not ex._tasks
    finally:
        await ex.close()
    assert not marker.exists() and sum(svc.calls.values()) == 0
    reasons = {x.reason for x in dead_letters(settings)}
    assert {"untrusted executor_state: unsigned", "untrusted executor_state: unknown_key"} <= reasons
    refused = {v["reason"] for v in violations(settings) if v["record_type"] == "executor_state"}
    assert {"unsigned", "unknown_key"} <= refused


async def test_signed_state_is_recovered_from_the_playbook_not_from_its_stored_plan(env, tmp_path):
    """Even a state record the executor signed is not replayed as stored: recovery renders the playbook again
    for the verified directive, and a stored plan that differs from it runs nothing."""
    settings, svc = env
    marker = tmp_path / "pwned"
    ex = Executor(settings)
    d = directive()
    value = AvroSerializer(Directive)(d)
    sig = RecordSigner(settings.keys, "meta_loop").sign("directive", value, key="api", record_id=d.directive_id)
    from metaheal.agents.executor.planner import plan as make_plan

    real, _ = make_plan(d, ex.playbooks, settings.services[0])
    evil = real.model_copy(update={"rollback_plan": [
        PlanStep(action="command", params_json=json.dumps({"argv": ["/bin/sh", "-c", f"touch {marker}"]}))
    ]})  # fmt: skip
    rec = PlanRecord(
        directive_id=d.directive_id, service="api", status="rolling_back", plan_id=real.plan_id,
        directive_json=d.model_dump_json(), directive_avro=value.hex(), directive_key=b"api".hex(),
        directive_envelope=sig[HEADER].decode(), plan_json=evil.model_dump_json(), trust_decision="auto_approved",
        steps_done=len(real.steps),
    )  # fmt: skip
    ex.state.put_sync(rec)  # signed by the executor's own key
    await ex.start()
    try:
        await await_for(lambda: (r := ex.state.get(d.directive_id)) is not None and r.status == "done", 20, "refusal")
        assert ex.state.get(d.directive_id).result == "recovery_refused:plan_mismatch"
    finally:
        await ex.close()
    assert not marker.exists() and sum(svc.calls.values()) == 0
    assert any(v["reason"] == "plan_mismatch" for v in violations(settings))


async def test_a_restart_recovers_a_mid_flight_plan_from_its_signed_directive(env):
    """The legitimate path: state the executor signed, for a directive the meta loop signed, is resumed."""
    settings, svc = env
    first = Executor(settings)
    d = directive()
    value = AvroSerializer(Directive)(d)
    sig = RecordSigner(settings.keys, "meta_loop").sign("directive", value, key="api", record_id=d.directive_id)
    from metaheal.agents.executor.planner import plan as make_plan

    plan, _ = make_plan(d, first.playbooks, settings.services[0])
    first.state.put_sync(PlanRecord(
        directive_id=d.directive_id, service="api", status="executing", plan_id=plan.plan_id,
        directive_json=d.model_dump_json(), directive_avro=value.hex(), directive_key=b"api".hex(),
        directive_envelope=sig[HEADER].decode(), plan_json=plan.model_dump_json(), trust_decision="auto_approved",
        execution_started_at=time.time(),
    ))  # fmt: skip  # as left by an executor that died after writing it
    first.state.close()
    first.producer.close(1.0)
    ex = Executor(settings)  # the restart
    await ex.start()
    try:
        await await_for(lambda: (r := ex.state.get(d.directive_id)) is not None and r.status == "done", 60, "resume")
    finally:
        await ex.close()
    rec = ex.state.get(d.directive_id)
    assert rec is not None and rec.result == "success", rec.rationale
    assert svc.calls["POST /cache/warm"] == 1
    assert any("recovered by" in line and "resume_steps" in line for line in rec.rationale)


async def test_forged_loose_directive_without_verification_is_refused_and_a_real_one_runs_verified(env):
    settings, svc = env
    stop = asyncio.Event()
    ex = Executor(settings)
    runner = asyncio.create_task(ex.run(stop))
    ser = AvroSerializer(Directive)
    loose = directive(
        guardrail_level="loose", requires_verification=False, focus_area="capacity_strain",
        ml_advice=DirectiveAdvice(recommended_playbooks=["restart_service"]),
    )  # fmt: skip
    forged = directive(guardrail_level="loose", requires_verification=False)
    executor_signed = directive(guardrail_level="loose", requires_verification=False)
    stale = directive()
    meta = RecordSigner(settings.keys, "meta_loop")
    try:
        await asyncio.to_thread(ex.ready.wait, 30)
        send(settings, "directives", ser(loose), "api")  # unsigned
        send(settings, "directives", ser(forged), "api",
             forged_envelope("directive", "meta_loop", ser(forged), "api", forged.directive_id))  # fmt: skip
        send(settings, "directives", ser(executor_signed), "api", RecordSigner(settings.keys, "executor").sign(
            "outcome", ser(executor_signed), key="api", record_id=executor_signed.directive_id))  # fmt: skip
        old = meta.sign("directive", ser(stale), key="api", record_id=stale.directive_id, ts=time.time() - 3600)
        send(settings, "directives", ser(stale), "api", old)  # replayed an hour later
        tampered = loose.model_copy(update={"guardrail_level": "loose"})
        good_sig = meta.sign("directive", ser(directive(directive_id=tampered.directive_id)), key="api",
                             record_id=tampered.directive_id)  # fmt: skip
        send(settings, "directives", ser(tampered), "api", good_sig)  # a real signature over other bytes
        await await_for(lambda: len(dead_letters(settings)) >= 5, 30, "five dead letters")
        assert sum(svc.calls.values()) == 0 and ex.state.records == {}
        reasons = sorted(x.reason for x in dead_letters(settings))
        assert reasons == sorted(f"untrusted directive: {r}" for r in
                                 ("unsigned", "unknown_key", "wrong_type", "stale_ts", "bad_signature"))  # fmt: skip
        # the legitimate path: a directive the meta loop signed (requires_verification=false is ignored)
        real = directive(requires_verification=False)
        send(settings, "directives", ser(real), "api", meta.sign("directive", ser(real), key="api",
                                                                  record_id=real.directive_id))  # fmt: skip
        await await_for(lambda: (r := ex.state.get(real.directive_id)) is not None and r.status == "done", 60, "run")
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
    rec = ex.state.get(real.directive_id)
    assert rec is not None and rec.result == "success", (rec.rationale, svc.calls)
    assert svc.calls["POST /cache/warm"] == 1
    plan = AgenticPlan.model_validate_json(rec.plan_json or "{}")
    assert plan.verifications  # verified although the directive said it need not be
    assert any("requires_verification=false: ignored" in line for line in rec.rationale)
    found = {v["reason"] for v in violations(settings) if v["record_type"] == "directive"}
    assert {"unsigned", "unknown_key", "wrong_type", "stale_ts", "bad_signature"} <= found
    outcomes = read_all(settings, "outcomes", SignedOutcome)
    assert [o.verification_passed for o in outcomes if o.directive_id == real.directive_id] == [True]


async def test_a_signed_loose_directive_is_held_to_the_meta_loop_s_signed_tight_level(env):
    """The level a plan is checked against is never looser than the meta loop's signed control state."""
    settings, svc = env
    tight = json.dumps({"level": "tight", "ts": time.time()}).encode()
    send(settings, "control", tight, GUARDRAILS_KEY, RecordSigner(settings.keys, "meta_loop").sign(
        "control", tight, key=GUARDRAILS_KEY, record_id=GUARDRAILS_KEY))  # fmt: skip
    loose = json.dumps({"level": "loose", "ts": time.time()}).encode()
    send(settings, "control", loose, GUARDRAILS_KEY)  # unsigned: not followed
    ex = Executor(settings)
    await ex.start()
    try:
        await await_for(lambda: ex.guardrails.records >= 2, 20, "the control records")
        assert ex.guardrails.level == "tight"
        d = directive(guardrail_level="loose", confidence=0.9)  # auto-approved under loose, not under tight
        await ex.submit(d)
        await await_for(lambda: (r := ex.state.get(d.directive_id)) is not None and r.status == "awaiting_approval",
                        20, "the approval request")  # fmt: skip
        rec = ex.state.get(d.directive_id)
        assert rec is not None and sum(svc.calls.values()) == 0
        assert any("guardrails tight, not the directive's loose" in line for line in rec.rationale)
    finally:
        await ex.close()


# --- meta loop --------------------------------------------------------------------------------------------------


def _meta(settings: Settings) -> Settings:
    settings.cycle.lease_seconds = 3.0
    settings.cycle.cycle_seconds = 1.0
    settings.cycle.min_cycle_gap_seconds = 0.5
    settings.cycle.advice_wait_seconds = 0.0
    return settings


async def _running(loop: MetaLoop) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await await_for(lambda: loop.cycles_run >= 1, 30, "the first cycle")
    return stop, task


async def test_forged_lease_with_a_huge_epoch_does_not_stop_cycles(env):
    settings = _meta(env[0])
    loop = MetaLoop(settings, replica_id="r1")
    stop, task = await _running(loop)
    try:
        lease = json.dumps({"holder": "mallory", "epoch": 10**15, "expires_at": time.time() + 1e9, "ts": time.time()})
        send(settings, "control", lease.encode(), LEADER_KEY)
        send(settings, "control", lease.encode(), LEADER_KEY,
             forged_envelope("control", "meta_loop", lease.encode(), LEADER_KEY, LEADER_KEY))  # fmt: skip
        send(settings, "control", lease.encode(), LEADER_KEY, RecordSigner(settings.keys, "executor").sign(
            "outcome", lease.encode(), key=LEADER_KEY, record_id=LEADER_KEY))  # fmt: skip
        before = loop.cycles_run
        await await_for(lambda: loop.cycles_run >= before + 3, 30, "three more cycles")
        view = loop._control.view
        assert view.leader is not None and view.leader.holder == "r1" and view.leader.epoch < 10
        assert loop._leading
        shown = await asyncio.to_thread(StatusClient(settings).control)  # `metaheal status` is not fooled either
        assert shown.leader is not None and shown.leader.holder == "r1"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    reasons = {x.reason for x in dead_letters(settings)}
    assert {f"untrusted control record: {r}" for r in ("unsigned", "unknown_key", "wrong_type")} <= reasons


def _health(now: float) -> HealthWindow:
    stats = SignalStats(signal="latency", metric="latency_p95_ms", count=30, mean=900.0, p50=880.0, p95=950.0,
                        max=990.0, baseline_mean=200.0, baseline_p95=250.0)  # fmt: skip
    return HealthWindow(service="api", window_start=now - 30, window_end=now, sample_count=30, signals=[stats])


async def test_forged_far_future_outcome_neither_stales_evidence_nor_moves_guardrails(env):
    settings = _meta(env[0])
    settings.cycle.cycle_seconds = 3600.0  # one cycle: the evidence and guardrails are looked at, not changed
    loop = MetaLoop(settings, replica_id="r1")
    stop, task = await _running(loop)
    ser = AvroSerializer(SignedOutcome)
    try:
        now = time.time()
        send(settings, "health", AvroSerializer(HealthWindow)(_health(now)), "api")
        await await_for(lambda: any(w.service == "api" for w in loop.obs.evidence(time.time()).health), 20, "health")
        level, learned = loop.guardrails.level, loop.learner.count_since(0.0)

        def outcome(i: int, ts: float) -> SignedOutcome:
            return SignedOutcome(
                outcome_id=f"o-evil-{i}", plan_id=f"p{i}", directive_id=f"d{i}", cycle_id="c", service="api",
                playbook="warm_cache", result="failed", duration_seconds=1.0, trust_decision="auto_approved",
                actor="executor", actor_signature="00", ts=ts,
            )  # fmt: skip

        far = now + 10 * 365 * 86400
        send(settings, "outcomes", ser(outcome(1, far)), "api")  # unsigned
        send(settings, "outcomes", ser(outcome(2, far)), "api",
             forged_envelope("outcome", "executor", ser(outcome(2, far)), "api", "o-evil-2"))  # fmt: skip
        send(
            settings,
            "outcomes",
            ser(outcome(3, far)),
            "api",
            RecordSigner(settings.keys, "executor").sign(
                "outcome", ser(outcome(3, far)), key="api", record_id="o-evil-3"
            ),
        )  # fmt: skip  signed, stamped ahead
        await await_for(lambda: loop._inputs.refused_count >= 3, 20, "three refused outcomes")
        assert loop.obs.last_outcome_ts.get("api", 0.0) == 0.0
        assert any(w.service == "api" for w in loop.obs.evidence(time.time()).health)  # not made stale
        assert loop.guardrails.level == level and loop.learner.count_since(0.0) == learned
        await await_for(lambda: any(v["record_type"] == "outcome" for v in violations(settings)), 20, "ledger")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    reasons = {x.reason for x in dead_letters(settings)}
    assert {f"untrusted outcome: {r}" for r in ("unsigned", "unknown_key", "future_ts")} <= reasons
    assert all(v["actor"] == "meta_loop" for v in violations(settings) if v["record_type"] == "outcome")


# --- service registry -------------------------------------------------------------------------------------------


async def test_unsigned_registration_does_not_register_a_service(env, tmp_path):
    settings, _ = env
    runtime = Runtime(settings, ["executor"], workdir=tmp_path)
    await runtime.follow_registry()
    try:
        evil = {"name": "evil", "admin_url": "http://169.254.169.254/", "registered_by": "x", "ts": time.time()}
        send(settings, "services", json.dumps(evil).encode(), "evil")
        send(settings, "services", None, "api")  # an unsigned tombstone for a configured name
        good = {"name": "web", "admin_url": "http://127.0.0.1:9", "registered_by": "ops", "ts": time.time()}
        value = json.dumps(good).encode()
        send(settings, "services", value, "web", RecordSigner(settings.keys, "registrar").sign(
            "service_registration", value, key="web", record_id="web"))  # fmt: skip
        await await_for(lambda: settings.service("web") is not None, 20, "the signed registration")
        assert settings.service("evil") is None and settings.service("api") is not None
        await await_for(lambda: len(dead_letters(settings)) >= 2, 20, "dead letters")
    finally:
        runtime.close()
    assert [x.reason for x in dead_letters(settings)] == ["untrusted service registration: unsigned"] * 2


async def test_revoked_key_signs_nothing_that_is_accepted(topics: Settings) -> None:
    from metaheal.errors import RecordRefused
    from metaheal.ledger.keys import revoke_key
    from metaheal.ledger.signing import RecordVerifier

    init_system_keys(topics.keys)
    headers = RecordSigner(topics.keys, "meta_loop").sign("directive", b"v", key="api", record_id="d1")
    verifier = RecordVerifier.for_settings(topics, live=True)
    assert verifier.verify("directive", b"v", b"api", headers).actor == "meta_loop"
    revoke_key(topics.keys, KeyRegistry.load(topics.keys).current("meta_loop").key_id)
    await asyncio.sleep(1.1)  # the verifier re-reads the registry at most once a second
    with pytest.raises(RecordRefused, match="key_revoked"):
        verifier.verify("directive", b"v", b"api", headers)


async def test_unsigned_probe_command_switches_nothing_on(topics: Settings) -> None:
    from metaheal.events import ProbeCommand
    from metaheal.simulator.fleet import Fleet
    from metaheal.simulator.probes import ProbeListener

    init_system_keys(topics.keys)
    fleet = Fleet()
    listener = ProbeListener(topics, fleet)
    ser = AvroSerializer(ProbeCommand)
    now = time.time()

    def probe(pid: str, probe: str, issued_at: float = now) -> ProbeCommand:
        return ProbeCommand(probe_id=pid, cycle_id="c", probe=probe, services=["api_cluster"], ttl_seconds=600,
                            issued_at=issued_at)  # fmt: skip

    evil, ahead, good = probe("p-evil", "stack_traces"), probe("p-ahead", "error_tracking", now + 1e6), probe(
        "p-good", "latency_histograms")  # fmt: skip
    meta = RecordSigner(topics.keys, "meta_loop")
    send(topics, "probes", ser(evil), "p-evil")
    send(topics, "probes", ser(ahead), "p-ahead", meta.sign("probe_command", ser(ahead), key="p-ahead",
                                                              record_id="p-ahead"))  # fmt: skip
    send(topics, "probes", ser(good), "p-good", meta.sign("probe_command", ser(good), key="p-good",
                                                            record_id="p-good"))  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        await await_for(lambda: listener.applied >= 1 and listener.refused >= 2, 20, "probes read")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert fleet.active_probes("api_cluster") == ["latency_histograms"]
    reasons = sorted(x.reason for x in dead_letters(topics))
    assert reasons == ["untrusted probe_command: future_ts", "untrusted probe_command: unsigned"]
