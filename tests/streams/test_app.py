"""PartitionSync against the real broker: records the stream never delivered are read directly, once."""

from __future__ import annotations

import asyncio
import json

from faust.types import TP

from metaheal.config import Settings
from metaheal.kafka import Consumer, Producer
from metaheal.streams.app import PartitionSync
from metaheal.streams.intake import Record
from metaheal.streams.pipeline import ListSink, Pipeline
from metaheal.streams.scoring import DictStore

N = 30  # records on partition 0, 8 samples each


def produce(settings: Settings) -> list[Record]:
    topic = settings.topics.name("telemetry")
    with Producer(settings.kafka) as p:
        for i in range(N):
            samples = [
                {"service": "api", "metric": "latency_ms", "value": 100.0 + j, "ts": i + j / 8} for j in range(8)
            ]
            p.produce(topic, json.dumps({"samples": samples}).encode(), key="api", partition=0)
        p.flush()
    with Consumer(settings.kafka) as c:
        return [Record(topic, 0, m.offset(), m.key(), m.value()) for m in c.read_to_end(topic, partitions=[0])]


def test_catch_up_reads_records_the_stream_never_delivered_exactly_once(stream_topics: Settings) -> None:
    s = stream_topics
    records = produce(s)
    assert len(records) == N
    topic = records[0].topic
    pipeline = Pipeline(s.streams, ListSink(), DictStore(), DictStore())
    sync = PartitionSync(s, pipeline, topic, [], lambda: {TP(topic, 0)})

    async def scenario() -> list[int]:
        for r in records[:10]:  # the stream delivers the first 10 records, then nothing
            await sync.process(r)
        first = await sync.catch_up()  # first look: the rest may only be queued
        second = await sync.catch_up()  # no progress for a whole tick: read the log directly
        third = await sync.catch_up()  # progress (its own): nothing to do
        for r in records[10:]:  # a stuck stream that wakes up later: every record a duplicate
            await sync.process(r)
        return [first, second, third]

    assert asyncio.run(scenario()) == [0, 1, 0]
    assert pipeline.stats.records == N
    assert pipeline.stats.samples == N * 8  # each sample counted once
    assert sync.skipped == N - 10  # dropped by offset, before decoding
    assert sync.next_offset[0] == records[-1].offset + 1


def test_catch_up_leaves_queued_records_to_the_stream(stream_topics: Settings) -> None:
    s = stream_topics
    records = produce(s)
    topic = records[0].topic
    pipeline = Pipeline(s.streams, ListSink(), DictStore(), DictStore())
    clock = [0.0]
    sync = PartitionSync(s, pipeline, topic, [], lambda: {TP(topic, 0)}, clock=lambda: clock[0])

    async def scenario() -> list[int]:
        filled = []
        for chunk in range(0, N, 10):  # the stream delivers 10 records between ticks: progress every tick
            for r in records[chunk : chunk + 10]:
                await sync.process(r)
            filled.append(await sync.catch_up())
        filled.append(await sync.catch_up())  # no progress: the log is read, it has nothing new
        # an idle partition is read again only after a growing pause
        clock[0] += 0.5
        filled.append(await sync.catch_up())
        assert sync.recheck[0] == (1.0, 1.0)
        return filled

    assert asyncio.run(scenario()) == [0, 0, 0, 0, 0]
    assert pipeline.stats.records == N
    assert pipeline.stats.duplicates == 0


def test_a_stalled_partition_is_left_to_a_busy_stream_for_a_while(stream_topics: Settings) -> None:
    s = stream_topics
    records = produce(s)  # partition 0
    topic = records[0].topic
    with Producer(s.kafka) as p:  # partition 1: what keeps the stream busy
        for i in range(N):
            p.produce(
                topic,
                json.dumps({"service": "db", "metric": "latency_ms", "value": 5.0, "ts": i}).encode(),
                key="db",
                partition=1,
            )
        p.flush()
    with Consumer(s.kafka) as c:
        other = [Record(topic, 1, m.offset(), m.key(), m.value()) for m in c.read_to_end(topic, partitions=[1])]
    pipeline = Pipeline(s.streams, ListSink(), DictStore(), DictStore())
    clock = [0.0]
    sync = PartitionSync(s, pipeline, topic, [], lambda: {TP(topic, 0), TP(topic, 1)}, clock=lambda: clock[0])

    async def scenario() -> list[int]:
        advanced = []
        for r in records[:10]:
            await sync.process(r)
        for tick in range(N // 2):  # partition 1 gets two records a tick, partition 0 none
            for r in other[2 * tick : 2 * tick + 2]:
                await sync.process(r)
            advanced.append(await sync.catch_up())
            clock[0] += 1.0
        return advanced

    advanced = asyncio.run(scenario())
    # first tick: partition 0 may only be queued; then it waits MAX_BUSY_STALL ticks; then it is read once
    stall = int(PartitionSync.MAX_BUSY_STALL)
    assert advanced == [0] * (stall + 1) + [1] + [0] * (N // 2 - stall - 2)
    assert pipeline.stats.samples == N * 8 + N
