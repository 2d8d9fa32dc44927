"""The advisor service against the real broker and the real ledger."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from metaheal.agents.advisors.base import Advisor, AdvisorOutput, CycleContext
from metaheal.agents.advisors.playbook_ranker import PlaybookRanker
from metaheal.agents.advisors.root_cause import RootCauseSuggester
from metaheal.agents.advisors.service import (
    AdvisorActionForbidden,
    AdvisorService,
    default_advisors,
)
from metaheal.config import ServiceSettings, Settings
from metaheal.events import AnomalyScore, CycleFocus, MLAdvice, SignedOutcome
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.keys import init_system_keys
from tests.agents.advisors.conftest import cycle_focus

pytestmark = pytest.mark.broker


@pytest.fixture
def cfg(topics: Settings) -> Settings:
    init_system_keys(topics.keys)
    return topics.model_copy(
        update={
            "services": [
                ServiceSettings(name="api", dependencies=["orders-db"]),
                ServiceSettings(name="web", dependencies=["api"]),
                ServiceSettings(name="orders-db"),
            ]
        }
    )


@pytest.fixture
async def log(cfg: Settings) -> AsyncIterator[ImmutableLog]:
    lg = ImmutableLog(cfg)
    yield lg
    lg.close()


class Running:
    def __init__(self, svc: AdvisorService) -> None:
        self.svc, self.stop = svc, asyncio.Event()
        self.task = asyncio.create_task(svc.run(self.stop))

    async def __aenter__(self) -> AdvisorService:
        ready = asyncio.create_task(self.svc.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()  # raise the service's error
        assert ready in done, "advisor service not ready within 60 s"
        return self.svc

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        t0 = time.monotonic()
        await asyncio.wait_for(self.task, timeout=10)
        assert time.monotonic() - t0 < 2.5, "run() must return promptly after stop"


def publish(settings: Settings, short: str, event, key: str) -> None:
    Producer(settings.kafka).send(settings.topics.name(short), AvroSerializer(type(event))(event), key=key)


def focus(cycle_id: str, services: list[str], area: str = "latency_drift") -> CycleFocus:
    return cycle_focus(services, area=area, cycle_id=cycle_id, ts=time.time())


def anomaly(service: str, metric: str, signal: str | None, value: float, baseline: float, **labels: str):
    now = time.time()
    return AnomalyScore(
        service=service,
        metric=metric,
        signal=signal,
        value=value,
        baseline=baseline,
        score=0.9999,
        threshold=0.99,
        crossed=True,
        confidence=0.9,
        model="test",
        ts=now - 5,
        window_start=now - 15,
        window_end=now - 5,
        labels=labels,
    )


async def read_advice(settings: Settings, cycle_id: str, timeout: float = 30.0):
    de = AvroDeserializer(MLAdvice)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:

        def scan():
            with Consumer(settings.kafka) as c:
                return [
                    (de(m.value()), m)
                    for m in c.read_to_end(settings.topics.name("advice"))
                    if m.key() == cycle_id.encode()
                ]

        found = await asyncio.to_thread(scan)
        if found:
            return found[-1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no advice for {cycle_id} within {timeout}s")


def count(settings: Settings, short: str) -> int:
    with Consumer(settings.kafka) as c:
        return sum(1 for _ in c.read_to_end(settings.topics.name(short)))


async def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_advice_for_a_cycle_end_to_end(cfg: Settings, log: ImmutableLog) -> None:
    publish(cfg, "anomalies", anomaly("api", "latency_p95_ms", "latency", 900.0, 200.0), "api")
    publish(
        cfg,
        "anomalies",
        anomaly("api", "dependency_latency_ms", "dependency", 400.0, 20.0, dependency="orders-db"),
        "api",
    )
    publish(cfg, "anomalies", anomaly("billing", "error_rate", "errors", 0.5, 0.01), "billing")  # not in scope
    async with Running(AdvisorService(cfg, log=log)) as svc:
        cycle = f"c-{uuid.uuid4().hex[:8]}"
        cf = focus(cycle, ["api"])
        publish(cfg, "cycles", cf, cycle)
        advice, msg = await read_advice(cfg, cycle)
        # a re-published cycle is not advised twice (cycles is one partition: once the next
        # cycle is answered, the duplicate has been seen)
        publish(cfg, "cycles", cf, cycle)
        nxt = f"c-{uuid.uuid4().hex[:8]}"
        publish(cfg, "cycles", focus(nxt, ["api"]), nxt)
        await read_advice(cfg, nxt)
        assert svc.advised == 2
    assert advice.cycle_id == cycle
    assert set(advice.confidence_scores) == {"anomaly_scorer", "root_cause", "playbook_ranker"}
    top = advice.root_cause_candidates[0]
    assert (top.cause, top.service) == ("database_slow_query", "api") and top.probability > 0.5
    assert top.evidence and all(0 <= c.probability <= 1 for c in advice.root_cause_candidates)
    assert {r.service for r in advice.recommendations} == {"api"}
    assert any("latency_p95_ms" in r.sentence for r in advice.recommendations)
    names = [p.name for p in advice.ranked_playbooks]
    assert names and set(names) <= set(svc.playbooks)
    assert [p.score for p in advice.ranked_playbooks] == sorted(
        (p.score for p in advice.ranked_playbooks), reverse=True
    )
    assert advice.evidence
    # signed into the ledger before it was published
    [entry] = [e for e in await log.replay_cycle(cycle) if e.action == "advice_provided"]
    assert entry.actor == "ml_advisors"
    assert (entry.resource, entry.subsystem, entry.result) == ("self_heal", "meta_coordinated_healing", "advised")
    payload = json.loads(entry.payload)
    assert payload["root_causes"] == [c.cause for c in advice.root_cause_candidates]
    assert payload["top_playbooks"] == names[:3]
    assert payload["root_cause_candidates"][0]["cause"] == "database_slow_query"
    assert payload["features"]["api"]["db_latency_up"] > 0
    signed = datetime.strptime(entry.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert signed.timestamp() * 1000 <= msg.timestamp()[1] + 1, "signed before published"


async def _advised_cycle(cfg: Settings, svc: AdvisorService, service: str) -> str:
    cycle = f"c-{uuid.uuid4().hex[:8]}"
    publish(cfg, "anomalies", anomaly(service, "latency_p95_ms", "latency", 900.0, 200.0), service)
    publish(
        cfg,
        "anomalies",
        anomaly(service, "dependency_latency_ms", "dependency", 400.0, 20.0, dependency="orders-db"),
        service,
    )
    publish(cfg, "cycles", focus(cycle, [service]), cycle)
    await read_advice(cfg, cycle)
    return cycle


async def _outcome(log: ImmutableLog, cycle: str, service: str, playbook: str, ok: bool) -> str:
    oid = f"o-{uuid.uuid4().hex[:8]}"
    await log.append(
        actor="executor",
        action="execution_outcome",
        resource=service,
        subsystem="agents",
        payload={
            "plan_id": f"p-{oid}",
            "directive_id": f"d-{oid}",
            "outcome_id": oid,
            "service": service,
            "playbook": playbook,
            "root_cause": "database_slow_query",
            "result": "success" if ok else "failed",
            "verification_passed": ok,
            "ts": time.time(),
        },
        result="success" if ok else "failed",
        cycle_id=cycle,
    )
    return oid


def _order(svc: AdvisorService, service: str) -> list[str]:
    ranker = next(a for a in svc.advisors if isinstance(a, PlaybookRanker))
    ranker.explore = False
    return [r.name for r in ranker.rank(service, "latency_drift", "database_slow_query", now=time.time())]


async def test_state_survives_a_restart_by_replay_from_the_ledger(cfg: Settings, log: ImmutableLog) -> None:
    async with Running(AdvisorService(cfg, log=log)) as first:
        cycle = await _advised_cycle(cfg, first, "api")
        before = _order(first, "api")
    assert before[0] != "warm_cache"  # declared priors put something else first
    for _ in range(4):
        await _outcome(log, cycle, "api", "warm_cache", ok=True)
        await _outcome(log, cycle, "api", before[0], ok=False)
    # a new process: new ledger client, new service, nothing in memory
    fresh_log = ImmutableLog(cfg)
    try:
        async with Running(AdvisorService(cfg, log=fresh_log)) as second:
            assert len(second.learned) == 8
            assert _order(second, "api")[0] == "warm_cache"
            assert _order(second, "web") == before, "api's outcomes do not move web's ranking"
            rc = next(a for a in second.advisors if isinstance(a, RootCauseSuggester))
            assert rc.learned == 4, "features for learning were read back from the signed advice"
    finally:
        fresh_log.close()


async def test_learns_online_only_from_outcomes_the_ledger_signed(cfg: Settings, log: ImmutableLog) -> None:
    async with Running(AdvisorService(cfg, log=log)) as svc:
        cycle = await _advised_cycle(cfg, svc, "api")
        forged = SignedOutcome(
            outcome_id="forged",
            plan_id="p",
            directive_id="d",
            cycle_id=cycle,
            service="api",
            playbook="restart_service",
            result="success",
            duration_seconds=1.0,
            verification_passed=True,
            trust_decision="auto",
            actor="executor",
            actor_signature="00",
            ts=time.time(),
        )
        publish(cfg, "outcomes", forged, "api")
        oid = await _outcome(log, cycle, "api", "warm_cache", ok=True)
        publish(cfg, "outcomes", forged.model_copy(update={"outcome_id": oid, "playbook": "warm_cache"}), "api")
        await wait_for(lambda: oid in svc.learned)
        assert "forged" not in svc.learned
        assert not await svc._on_outcome(forged)


class Garbage(Advisor):
    """Extreme, malformed output: must end up clamped or dropped, never acted on."""

    name = "garbage"

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        return AdvisorOutput(
            confidence=float("inf"),
            recommendations=[
                "drop table",
                SimpleNamespace(service="api", severity="apocalyptic", finding="x", sentence="y"),
            ],
            candidates=[SimpleNamespace(cause="everything", probability=7.0, service="api", evidence=["trust me"])],
            ranked=[("nuke_cluster", float("nan"), 5.0), ("restart_everything", 1e300, -3.0), "oops"],
            evidence=["garbage advisor ran"],
        )


class Rogue(Advisor):
    """Tries to act: publish a directive through the only producer the service has."""

    name = "rogue"

    def __init__(self, svc_ref: list[AdvisorService], directives: str) -> None:
        self.svc_ref, self.directives = svc_ref, directives
        self.refused: list[Exception] = []

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        try:
            self.svc_ref[0].producer.send(self.directives, b"scale everything", key="api")
        except AdvisorActionForbidden as exc:
            self.refused.append(exc)
            raise
        return AdvisorOutput()


class Crashing(Advisor):
    name = "crashing"

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        raise RuntimeError("model file corrupt")


async def test_a_misbehaving_advisor_cannot_cause_an_action(cfg: Settings, log: ImmutableLog) -> None:
    from metaheal.agents.common.playbooks import load_playbooks

    ref: list[AdvisorService] = []
    rogue = Rogue(ref, cfg.topics.name("directives"))
    advisors = [*default_advisors(cfg, load_playbooks(cfg.playbooks)), Garbage(), rogue, Crashing()]
    svc = AdvisorService(cfg, log=log, advisors=advisors)
    ref.append(svc)
    async with Running(svc):
        cycle = f"c-{uuid.uuid4().hex[:8]}"
        publish(cfg, "anomalies", anomaly("api", "error_rate", "errors", 0.4, 0.01), "api")
        publish(cfg, "cycles", focus(cycle, ["api"], "error_spike"), cycle)
        advice, _ = await read_advice(cfg, cycle)
    assert rogue.refused, "the rogue advisor's publish to directives was refused"
    assert advice.confidence_scores["garbage"] == 0.0 and advice.confidence_scores["crashing"] == 0.0
    assert all(0 <= c.probability <= 1 for c in advice.root_cause_candidates)
    ranked = [p.name for p in advice.ranked_playbooks]
    assert ranked and set(ranked) <= set(svc.playbooks), "only real playbooks, garbage names dropped"
    assert all(0 <= p.score <= 1 for p in advice.ranked_playbooks)
    assert any("crashing failed: RuntimeError" in e for e in advice.evidence)
    assert any("rogue failed: AdvisorActionForbidden" in e for e in advice.evidence)
    for short in ("directives", "plans", "approvals"):
        assert count(cfg, short) == 0, f"an advisor caused a record on {short}"
    with pytest.raises(AdvisorActionForbidden):
        svc.producer.send(cfg.topics.name("plans"), b"x", key="api")
    with pytest.raises(AdvisorActionForbidden):
        await svc.producer.publish(SimpleNamespace(cycle_id="c"))  # type: ignore[arg-type]
    assert not [v for v in vars(svc).values() if isinstance(v, Producer)], "no general-purpose producer"
    ref.clear()  # break the rogue -> service cycle so its client goes before the broker does


async def test_advice_that_cannot_be_signed_is_not_published(cfg: Settings, tmp_path) -> None:
    unkeyed = cfg.model_copy(update={"keys": tmp_path / "no-keys"})  # the ml_advisors key is missing
    lg = ImmutableLog(unkeyed)
    try:
        async with Running(AdvisorService(unkeyed, log=lg)) as svc:
            cycle = f"c-{uuid.uuid4().hex[:8]}"
            publish(cfg, "cycles", focus(cycle, ["api"]), cycle)
            await wait_for(lambda: svc.unsigned == 1)
            assert svc.advised == 0
        assert count(cfg, "advice") == 0
    finally:
        lg.close()


async def test_successes_whose_symptom_did_not_recover_are_not_learned(cfg: Settings, log: ImmutableLog) -> None:
    cycle = f"c-{uuid.uuid4().hex[:8]}"

    async def outcome(playbook: str, verdicts: list[dict], focus: str = "latency_drift") -> None:
        oid = f"o-{uuid.uuid4().hex[:8]}"
        payload = {
            "plan_id": f"p-{oid}",
            "directive_id": f"d-{oid}",
            "outcome_id": oid,
            "service": "api",
            "playbook": playbook,
            "focus_area": focus,
            "root_cause": "database_slow_query",
            "result": "success",
            "verification_passed": True,
            "verdicts": verdicts,
            "ts": time.time(),
        }
        await log.append(
            actor="executor",
            action="execution_outcome",
            resource="api",
            subsystem="agents",
            payload=payload,
            result="success",
            cycle_id=cycle,
        )

    # written before symptom verdicts: a "success" that the next plan on the same incident shows was hollow
    await outcome("scale_up_instances", [])
    await outcome("warm_cache", [])
    # a success whose symptom verdict failed (never written by the executor, but not evidence if it were)
    await outcome("restart_service", [{"check": "symptom", "status": "fail"}], focus="error_spike")
    fresh_log = ImmutableLog(cfg)
    try:
        async with Running(AdvisorService(cfg, log=fresh_log)) as svc:
            ranker = next(a for a in svc.advisors if isinstance(a, PlaybookRanker))
            learned = {pb for (service, cause, pb) in ranker.counts if service == "api" and cause == "*"}
            assert learned == {"warm_cache"}, (ranker.counts, svc.learned)
            assert len(svc.learned) == 3  # read, and two of them knowingly not learned
    finally:
        fresh_log.close()
