"""Executor latency: directive -> outcome on the auto-approved path, and overhead per step.

Starts an embedded broker, the test suite's FakeService (a real aiohttp service
under control that emits its own telemetry) and one Executor, then measures:

1. **directive -> outcome**: a Directive produced to ``<prefix>directives`` until
   its SignedOutcome is read back from ``<prefix>outcomes`` (consumer group,
   planning, trust check, write-ahead ledger entries, 3 steps, 2 verifications on
   live telemetry, outcome). Sequential directives, after one warm-up.
2. **overhead per step**: the same executor runs a playbook of 1 and of 1+N
   no-op ``http.get`` steps (no verification); ``(t(1+N) - t(1)) / N`` is the
   cost of one step, and the raw actuator call measured in the same run is
   subtracted to get the executor's own overhead (two signed, acknowledged
   ledger appends and two acknowledged state writes per step).

    python benchmarks/bench_executor.py [--runs 5] [--steps 10]

Numbers on a shared 2-core machine are noisy; ratios from the same run are
what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from metaheal.agents.common.playbooks import load_playbooks, parse_playbook
from metaheal.agents.executor.actuators import StepContext, get_actuator
from metaheal.agents.executor.service import Executor
from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, ServiceSettings, Settings, TopicSettings
from metaheal.events import Directive, DirectiveAdvice, SignedOutcome
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner
from metaheal.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def _fake_service_class():
    path = ROOT / "tests" / "agents" / "executor" / "conftest.py"
    spec = importlib.util.spec_from_file_location("executor_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["executor_conftest"] = mod
    spec.loader.exec_module(mod)
    return mod.FakeService


def noop_playbook(n: int):
    steps = "\n".join(
        '  - {action: http.get, params: {url: "{{ service.admin_url }}/capacity"}, timeout: 5}' for _ in range(n)
    )
    return parse_playbook(f"""
name: noop_{n}
description: {n} read-only steps
applies_to: {{focus_areas: [routine_maintenance]}}
impact: low
blast_radius: 1
prior_success: 0.9
steps:
{steps}
""")


def directive(playbook: str, focus: str = "capacity_strain", verify: bool = True) -> Directive:
    return Directive(
        directive_id=f"d-{uuid.uuid4().hex[:8]}",
        cycle_id=f"c-{uuid.uuid4().hex[:8]}",
        ts=time.time(),
        service="api",
        focus_area=focus,
        guardrail_level="loose",
        ml_advice=DirectiveAdvice(root_causes=["cpu_saturation"], recommended_playbooks=[playbook]),
        confidence=0.9,
        time_budget_seconds=120,
        requires_verification=verify,
    )


async def main(runs: int, steps: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    broker = EmbeddedBroker(port=free_port(), log_path=tmp / "tansu.log")
    broker.start()
    try:
        settings = Settings(
            kafka=KafkaSettings(bootstrap=broker.bootstrap, session_timeout_ms=6000),
            topics=TopicSettings(prefix=f"b{uuid.uuid4().hex[:6]}."),
            keys=tmp / "keys",
            playbooks=ROOT / "playbooks",
        )
        settings.executor.max_actions_per_hour = 10_000
        ensure_topics(settings)
        init_system_keys(settings.keys)
        svc = _fake_service_class()(latency_ms=150.0, latency_after_fix=150.0)
        async with svc.running(settings):
            settings.services = [ServiceSettings(name="api", admin_url=svc.url)]
            playbooks = load_playbooks(settings.playbooks)
            playbooks.update({p.name: p for p in (noop_playbook(1), noop_playbook(1 + steps))})
            stop = asyncio.Event()
            ex = Executor(settings, playbooks=playbooks)
            runner = asyncio.create_task(ex.run(stop))
            await asyncio.to_thread(ex.ready.wait, 30)

            # 1. directive -> outcome through Kafka
            producer = Producer(settings.kafka)
            ser, de = AvroSerializer(Directive), AvroDeserializer(SignedOutcome)
            reader = Consumer(settings.kafka)
            from confluent_kafka import OFFSET_END, TopicPartition

            reader.raw.assign([TopicPartition(settings.topics.name("outcomes"), 0, OFFSET_END)])

            def wait_outcome(directive_id: str) -> SignedOutcome:
                while True:
                    for m in reader.poll_batch(10, 0.05):
                        o = de(m.value())
                        if o.directive_id == directive_id:
                            return o

            signer = RecordSigner(settings.keys, "meta_loop")
            latencies = []
            for i in range(runs + 1):
                d = directive("scale_up_instances")
                t0 = time.perf_counter()
                value = ser(d)  # signed as the meta loop signs it: the executor verifies it before planning
                headers = signer.sign("directive", value, key=d.service, record_id=d.directive_id)
                producer.send(settings.topics.name("directives"), value, key=d.service, headers=headers)
                o = await asyncio.to_thread(wait_outcome, d.directive_id)
                dt = time.perf_counter() - t0
                assert o.result == "success", o.rationale
                if i > 0:  # the first run pays for ledger and client warm-up
                    latencies.append(dt)
            print(
                f"directive->outcome (auto-approved scale_up_instances, 3 steps + 2 verifications, Kafka in/out): "
                f"median {statistics.median(latencies) * 1000:.0f} ms, min {min(latencies) * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms over {runs} runs (verification waits for 3 fresh latency samples; "
                f"the service emits every 0.2 s)"
            )

            # 2. overhead per step (in-process submit, no verification)
            async def timed(name: str) -> float:
                t0 = time.perf_counter()
                out = await (await ex.submit(directive(name, focus="routine_maintenance", verify=False)))
                assert out.result == "success", out.rationale
                return time.perf_counter() - t0

            short, long_ = [], []
            for _ in range(runs):
                short.append(await timed("noop_1"))
                long_.append(await timed(f"noop_{1 + steps}"))
            raw = []
            for _ in range(20):
                t0 = time.perf_counter()
                await get_actuator("http.get").run({"url": f"{svc.url}/capacity"}, StepContext(service="api"), 5)
                raw.append(time.perf_counter() - t0)
            per_step = (statistics.median(long_) - statistics.median(short)) / steps
            raw_ms = statistics.median(raw) * 1000
            print(
                f"plan with 1 step: median {statistics.median(short) * 1000:.0f} ms; with {1 + steps} steps: "
                f"median {statistics.median(long_) * 1000:.0f} ms"
            )
            print(
                f"per step: {per_step * 1000:.1f} ms, of which the actuator call (http.get) {raw_ms:.1f} ms -> "
                f"executor overhead {per_step * 1000 - raw_ms:.1f} ms per step "
                f"(2 signed+acked ledger appends, 2 acked state writes); ratio step/actuator "
                f"{per_step * 1000 / raw_ms:.1f}x"
            )
            stop.set()
            await runner
            reader.close()
    finally:
        broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.steps))
