"""Ledger throughput and latency on the embedded broker (or --bootstrap).

    python benchmarks/bench_ledger.py [--appends 20000] [--entries 200000] [--only appends|verify|replay]

Prints, from one run:
* appends/s with signing and broker acknowledgement: ``--appends`` concurrent
  ``ImmutableLog.append`` calls (the sequencer batches them into shared flushes),
  and one appender awaiting each append in turn (latency-bound);
* verify entries/s (all checks of ``metaheal ledger verify`` on records already
  read) next to raw PyNaCl Ed25519 verifications/s on the same messages, and
  their ratio;
* replay_cycle latency for one cycle in a ledger of ``--entries`` entries (built
  in-process and produced in one batch; the index is rebuilt from the ledger by a
  fresh ImmutableLog, as after an index loss): from a warm ImmutableLog, from a new
  ImmutableLog in this process, and from fresh processes (what ``metaheal ledger
  replay`` users hit: the time of ``replay_cycle`` itself, then the whole CLI's
  wall clock including interpreter start and imports).

    python benchmarks/bench_ledger.py --only replay --entries 1000000

Numbers on a shared 2-core machine are noisy; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nacl.signing import VerifyKey

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.events import LedgerEntry
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.chain import message, record_headers, record_key
from metaheal.ledger.keys import KeyRegistry, init_system_keys
from metaheal.ledger.sequencer import Sequencer
from metaheal.ledger.verify import Verifier, read_raw
from metaheal.topics import ensure_topics

ACTORS = [
    ("meta_loop", "cycle_focus_decided"),
    ("ml_advisors", "advice_provided"),
    ("agentic_planner", "plan_created"),
    ("executor", "step_executed"),
    ("executor", "execution_outcome"),
]


def fresh_settings(kafka: KafkaSettings, keys: Path) -> Settings:
    return Settings(kafka=kafka, topics=TopicSettings(prefix=f"bench{uuid.uuid4().hex[:8]}."), keys=keys)


async def bench_appends(settings: Settings, n: int) -> None:
    log = ImmutableLog(settings)
    await log.append(actor="meta_loop", action="cycle_focus_decided", cycle_id="warmup", payload={})
    payload = {"service": "checkout", "confidence": 0.87, "reasons": ["p95 up 40%", "cache hit rate down"]}
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            log.append(
                actor=a,
                action=act,
                resource="svc",
                subsystem="bench",
                payload=payload,
                result="ok",
                cycle_id=f"c{i // 20}",
            )
            for i, (a, act) in ((i, ACTORS[i % len(ACTORS)]) for i in range(n))
        )
    )
    dt = time.perf_counter() - t0
    print(f"appends (concurrent, n={n}):        {n / dt:10.0f} appends/s   ({dt:.2f} s, signed + acked)")
    m = min(500, n)
    t0 = time.perf_counter()
    for i in range(m):
        await log.append(actor="executor", action="step_executed", payload=payload, cycle_id=f"s{i // 20}")
    dt = time.perf_counter() - t0
    print(f"appends (one awaiting appender):    {m / dt:10.0f} appends/s   ({dt / m * 1000:.2f} ms per append)")
    log.close()


def bench_verify(settings: Settings, rounds: int = 5) -> None:
    """Best of ``rounds`` alternating runs of each, so both see the same machine load."""
    records = list(read_raw(settings))
    registry = KeyRegistry.load(settings.keys)
    de = AvroDeserializer(LedgerEntry)
    entries = [de(r.value) for r in records if r.value]
    keys = {k: VerifyKey(bytes.fromhex(rec.public_key)) for k, rec in registry.records.items()}
    msgs = [(keys[e.key_id], message(e), bytes.fromhex(e.signature)) for e in entries]
    best_v = best_raw = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        v = Verifier(registry)
        for r in records:
            v.feed(r)
        report = v.finish()
        best_v = max(best_v, len(records) / (time.perf_counter() - t0))
        assert report.clean, report.findings[:3]
        t0 = time.perf_counter()
        for vk, m, sig in msgs:
            vk.verify(m, sig)
        best_raw = max(best_raw, len(msgs) / (time.perf_counter() - t0))
    print(f"verify (all checks, n={len(records)}):    {best_v:10.0f} entries/s   (best of {rounds})")
    print(
        f"raw PyNaCl Ed25519 verify:          {best_raw:10.0f} verifications/s   "
        f"-> verify at {best_v / best_raw:.0%} of raw"
    )


def build_large(settings: Settings, n: int) -> str:
    """Produce ``n`` signed entries (cycles of 20) in one batch; return a cycle id from the middle."""
    init_system_keys(settings.keys)
    reg = KeyRegistry.load(settings.keys)
    signers = {a: reg.signing_key(a) for a, _ in ACTORS}
    ledger = reg.signing_key("ledger")
    seq = Sequencer(checkpoint_every_entries=settings.ledger.checkpoint_every_entries, checkpoint_every_seconds=1e12)
    ensure_topics(settings)
    enc = AvroSerializer(LedgerEntry)
    p = Producer(settings.kafka, **{"linger.ms": 50, "batch.size": 1_000_000})
    topic = settings.topics.name("ledger")
    ts = "2026-01-01T00:00:00.000000Z"
    t0 = time.perf_counter()
    for i in range(n):
        a, act = ACTORS[i % len(ACTORS)]
        fields = dict(
            actor=a,
            action=act,
            resource=f"svc{i % 13}",
            subsystem="bench",
            cycle_id=f"cycle-{i // 20}",
            payload=f'{{"i":{i},"score":0.5}}',
            result="ok",
        )
        for e in seq.add(fields, signers[a], ledger, timestamp=ts):
            p.produce(topic, enc(e), key=record_key(e), headers=record_headers(e), partition=0)
    p.flush(600)
    print(
        f"built ledger: {n} entries (+{n // settings.ledger.checkpoint_every_entries} checkpoints) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return f"cycle-{(n // 20) // 2}"


async def bench_replay(settings: Settings, n: int) -> None:
    cycle = build_large(settings, n)
    log = ImmutableLog(settings, timeout=600)
    t0 = time.perf_counter()
    await asyncio.to_thread(log._write_batch, [])  # resume: no index yet, so rebuild it from the ledger
    print(f"index rebuilt from the ledger:      {time.perf_counter() - t0:10.1f} s   ({n} entries)")
    t0 = time.perf_counter()
    got = await log.replay_cycle(cycle)
    print(f"replay_cycle (first call):          {(time.perf_counter() - t0) * 1000:10.1f} ms   ({len(got)} entries)")
    lat = []
    for _ in range(20):
        t0 = time.perf_counter()
        got = await log.replay_cycle(cycle)
        lat.append(time.perf_counter() - t0)
    assert len(got) == 20, len(got)
    log.close()
    fresh = ImmutableLog(settings, timeout=600)
    t0 = time.perf_counter()
    await fresh.replay_cycle(cycle)
    cold = time.perf_counter() - t0
    fresh.close()
    print(
        f"replay_cycle in a {n}-entry ledger: median {statistics.median(lat) * 1000:.1f} ms  "
        f"max {max(lat) * 1000:.1f} ms  (n=20, warm ImmutableLog)"
    )
    print(f"replay_cycle, new ImmutableLog in this process:  {cold * 1000:.0f} ms")
    fresh_process_replay(settings, cycle)


_CHILD = """
import sys, time
t0 = time.perf_counter()
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.ledger import ImmutableLog
t1 = time.perf_counter()
s = Settings(kafka=KafkaSettings(bootstrap=sys.argv[1]), topics=TopicSettings(prefix=sys.argv[2]), keys=sys.argv[3])
log = ImmutableLog(s)
t2 = time.perf_counter()
got = log.replay_cycle_sync(sys.argv[4])
t3 = time.perf_counter()
log.close()
assert len(got) == 20, len(got)
print(f"{(t1 - t0) * 1000:.1f} {(t3 - t2) * 1000:.1f}")
"""


def fresh_process_replay(settings: Settings, cycle: str, runs: int = 5) -> None:
    """What ``metaheal ledger replay`` users hit: a new process that knows nothing of the index."""
    args = [settings.kafka.bootstrap, settings.topics.prefix, str(settings.keys), cycle]
    inner, imports = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _CHILD, *args], check=True, capture_output=True, text=True)
        imp, rep = map(float, out.stdout.split())
        imports.append(imp)
        inner.append(rep)
    print(
        f"replay_cycle in a fresh process:    median {statistics.median(inner):.1f} ms  max {max(inner):.1f} ms  "
        f"(n={runs}; imports before it: median {statistics.median(imports):.0f} ms)"
    )
    env = {**os.environ, "METAHEAL_TOPICS__PREFIX": settings.topics.prefix, "METAHEAL_KEYS": str(settings.keys)}
    cli = [
        str(Path(sys.executable).with_name("metaheal")),
        "ledger",
        "replay",
        cycle,
        "--json",
        "--bootstrap",
        settings.kafka.bootstrap,
    ]
    wall = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(cli, check=True, capture_output=True, text=True, env=env)
        wall.append(time.perf_counter() - t0)
        assert len(out.stdout.splitlines()) == 20, out.stdout[-500:]
    print(
        f"`metaheal ledger replay --json` wall clock (whole process): median {statistics.median(wall) * 1000:.0f} ms "
        f"(n={runs})"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--appends", type=int, default=20_000)
    ap.add_argument("--entries", type=int, default=200_000, help="ledger size for the replay benchmark")
    ap.add_argument(
        "--only",
        choices=("appends", "verify", "replay"),
        action="append",
        help="run only these parts (repeatable; verify needs appends)",
    )
    args = ap.parse_args()
    broker = None
    if args.bootstrap:
        kafka = KafkaSettings(bootstrap=args.bootstrap)
    else:
        broker = EmbeddedBroker(port=free_port())
        broker.start()
        kafka = broker.kafka_settings()
    try:
        with tempfile.TemporaryDirectory() as keys:
            init_system_keys(keys)
            s = fresh_settings(kafka, Path(keys))
            only = set(args.only or ("appends", "verify", "replay"))
            if only & {"appends", "verify"}:
                await bench_appends(s, args.appends)
            if "verify" in only:
                bench_verify(s)
            if "replay" in only:
                await bench_replay(fresh_settings(kafka, Path(keys)), args.entries)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
