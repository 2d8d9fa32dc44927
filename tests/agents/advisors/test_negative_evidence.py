"""Negative evidence end to end: the simulated fleet (real admin HTTP servers, telemetry on the real broker)
through the streams pipeline into the advisor service.

An error spike from a bad feature flag on api_cluster, on a fleet that publishes no deployment counter; its
dependencies (db, cache, payments) stay healthy. The scorer's noise puts one crossed sample on api_cluster's
``dependency_error_rate`` towards payments (as ~60 series at a tight threshold do now and then): by itself that
makes ``upstream_outage`` the leading cause. The dependency's windows, at their baseline, must keep it out.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

from metaheal.agents.advisors.anomaly import AnomalyAdvisor
from metaheal.agents.advisors.root_cause import RootCauseSuggester
from metaheal.agents.advisors.service import AdvisorService
from metaheal.config import ServiceSettings, Settings
from metaheal.events import AnomalyScore, CycleFocus, MLAdvice
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.keys import init_system_keys
from metaheal.simulator.runner import Simulator
from metaheal.streams.app import KafkaSink
from metaheal.streams.intake import Record
from metaheal.streams.pipeline import Pipeline
from tests.agents.advisors.conftest import cycle_focus

pytestmark = pytest.mark.broker

UPSTREAM = "upstream_outage"


def publish(settings: Settings, short: str, event: AnomalyScore | CycleFocus, key: str) -> None:
    Producer(settings.kafka).send(settings.topics.name(short), AvroSerializer(type(event))(event), key=key)


async def read_advice(settings: Settings, cycle_id: str, timeout: float = 30.0) -> MLAdvice:
    de = AvroDeserializer(MLAdvice)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:

        def scan() -> list[MLAdvice]:
            with Consumer(settings.kafka) as c:
                topic = settings.topics.name("advice")
                return [de(m.value()) for m in c.read_to_end(topic) if m.key() == cycle_id.encode()]

        found = await asyncio.to_thread(scan)
        if found:
            return found[-1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no advice for {cycle_id} within {timeout}s")


@pytest.fixture
def cfg(topics: Settings) -> Settings:
    init_system_keys(topics.keys)
    s = topics.model_copy(deep=True)
    s.streams.window_seconds = 2.0
    s.streams.allowed_lateness_seconds = 0.5
    s.streams.reporting_floor = 0.9999
    s.streams.anomaly_threshold = 0.9999
    s.services = [
        ServiceSettings(name="web", dependencies=["api_cluster"]),
        ServiceSettings(name="api_cluster", dependencies=["cache", "db", "payments"]),
        ServiceSettings(name="db"),
        ServiceSettings(name="cache"),
        ServiceSettings(name="payments"),
    ]
    return s


async def _stream(cfg: Settings, stop: asyncio.Event) -> None:
    """The worker's stage logic on the broker: telemetry in, health windows and anomalies out."""
    sink = KafkaSink(cfg)
    pipeline = Pipeline(cfg.streams, sink, {}, {}, seed=0)
    consumer = Consumer(cfg.kafka)
    await asyncio.to_thread(consumer.assign_topics, [cfg.topics.name("telemetry")])
    try:
        while not stop.is_set():
            for m in await asyncio.to_thread(consumer.poll_batch, 500, 0.2):
                pipeline.process_one(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
                sink.poll()
            sink.flush()
    finally:
        await asyncio.to_thread(consumer.close)


def _noise(now: float) -> AnomalyScore:
    """One crossed sample on the caller's view of a healthy dependency (what scorer noise publishes)."""
    return AnomalyScore(
        service="api_cluster",
        metric="dependency_error_rate",
        signal="dependency",
        value=0.0045,
        baseline=0.002,
        score=0.99995,
        threshold=0.9999,
        crossed=True,
        confidence=0.9,
        model="residual",
        ts=now - 1.0,
        window_start=now - 2.0,
        window_end=now,
        labels={"dependency": "payments"},
    )


async def test_a_healthy_dependency_keeps_upstream_outage_from_the_top(cfg: Settings) -> None:
    sim = Simulator(cfg, seed=5, interval=0.1, scenario="bad_deployment_nohint", at=10.0, probes=False, register=False)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sim.run(stop)), asyncio.create_task(_stream(cfg, stop))]
    log = ImmutableLog(cfg)
    svc = AdvisorService(cfg, log=log)
    tasks.append(asyncio.create_task(svc.run(stop)))
    cycle = ""
    try:
        await asyncio.wait_for(svc.ready.wait(), 60)
        await asyncio.wait_for(sim.ready.wait(), 30)
        deadline = time.monotonic() + 60
        while not sim.injected:
            assert time.monotonic() < deadline, "scenario not injected"
            await asyncio.sleep(0.2)
        await asyncio.sleep(5.0)  # two windows of the fault closed
        urls = sim.admin.urls
        async with httpx.AsyncClient(timeout=5.0) as http:
            api = (await http.get(f"{urls['api_cluster']}/health")).json()
            pay = (await http.get(f"{urls['payments']}/health")).json()
        assert api["status"] != "ok" and pay["status"] == "ok", (api, pay)
        # no deployment counter in this fleet: the telemetry hint is gone
        assert "deployments" in sim.fleet.hidden["api_cluster"]

        now = time.time()
        publish(cfg, "anomalies", _noise(now), "api_cluster")
        cycle = f"c-{uuid.uuid4().hex[:8]}"
        cf = cycle_focus(["api_cluster"], area="error_spike", cycle_id=cycle, ts=now)
        publish(cfg, "cycles", cf, cycle)
        advice = await read_advice(cfg, cycle)

        # control: the same evidence without the dependencies' health windows puts upstream_outage on top
        ctx = svc.context(cf)
        assert any(w.service == "payments" for w in ctx.health), "no health windows of payments reached us"
        assert any(a.labels.get("dependency") == "payments" for a in ctx.anomalies)
        ctx.health = [w for w in ctx.health if w.service == "api_cluster"]
        ctx.health = [w.model_copy(update={"signals": [s for s in w.signals if not s.dependency]}) for w in ctx.health]
        AnomalyAdvisor(0.9999, 0.9999).advise(ctx)
        RootCauseSuggester(graph={s.name: list(s.dependencies) for s in cfg.services}).advise(ctx)
        assert ctx.candidates[0].cause == UPSTREAM, [(c.cause, c.probability) for c in ctx.candidates[:3]]
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        log_entries = await log.replay_cycle(cycle)
        log.close()

    cands = advice.root_cause_candidates
    assert cands[0].cause != UPSTREAM, [(c.cause, c.probability) for c in cands[:3]]
    up = next(c for c in cands if c.cause == UPSTREAM)
    assert up.probability < cfg.ml.unknown_below
    against = [e for e in up.evidence if e.startswith("against: ")]
    assert against and all("LR=" in e and "z=" in e for e in against), up.evidence
    # the numbers behind it are signed into the advice
    [entry] = [e for e in log_entries if e.action == "advice_provided"]
    neg = json.loads(entry.payload)["negative_evidence"]["api_cluster"]
    pay = [a for a in neg["dep_errors_up"] if a["dependency"] == "payments"]
    assert pay and pay[0]["lr"] < 0.5 and abs(pay[0]["z"]) < 2.0
    assert abs(pay[0]["observed"] - pay[0]["baseline"]) < 0.01
