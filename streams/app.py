"""The faust-streaming app: one agent on ``<prefix>telemetry`` around :class:`Pipeline`.

Design choices, each measured on the tansu broker used here:

* aiokafka driver (``kafka://``): faust's ``confluent://`` driver stalls in recovery;
* records are consumed as raw bytes (``value_serializer="raw"``) and decoded by
  :class:`~metaheal.streams.intake.Intake`, so a bad record is a dead letter, not a
  crashed agent, and a whole MetricBatch is decoded in one call;
* outputs (health, anomalies, dead letters) go through one librdkafka producer
  (``produce`` is non-blocking and batches), not faust's per-event ``send``, which
  tops out at a few thousand messages/s;
* state lives in two changelog-backed stores (:mod:`~metaheal.streams.changelog`), not faust
  tables: ``windows`` (per service, changelog ``<app id>-windows-changelog``) and ``scorers``
  (per series, changelog = the compacted ``<prefix>scorer-state`` topic), written through one
  librdkafka producer and loaded by :class:`PartitionSync`. They are co-partitioned with
  telemetry, so each changelog needs telemetry's partition count;
* group joins are made fast with the session timeout from ``settings.kafka``
  (tansu completes a join in about half of it), no standby replicas and no
  recovery delay; the web server is off unless ``streams.web_port`` is set.

faust-streaming 0.15.3 flushes its producer buffer before committing offsets, but
``ProducerBuffer.flush`` gives up after 0.1 s without a send; under load a commit can
then overtake changelog writes, and a crash at that moment loses window state (seen as
a window short by one record in the SIGKILL test). :func:`_flush_fully` makes every
changelog record acknowledged, and this app's buffer drained, before every commit.

Even so, the SIGKILL test showed lost or double-applied records after a restart;
:class:`PartitionSync` (see there) makes the changelogs decide what has been counted.

faust's aiokafka consumer hard-codes ``fetch_max_wait_ms=1500`` (how long the broker
may hold a fetch for a partition with nothing new); :func:`_short_fetch_wait` lowers it
to ``streams.fetch_max_wait_ms`` (default 20 ms) for latency. Service states are
written to their table every ``streams.max_batch_records`` records or
``streams.flush_interval_seconds`` (a timer covers idle streams), not per record: per-record changelog writes
cut the worker to a few hundred small records/s.

Delivery is at-least-once: anomaly and health events of records between the last
commit and a crash can be published twice; the windows themselves never double-count
(each service state records the last offset it applied per partition).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from metaheal.config import KafkaSettings, Settings
from metaheal.errors import MetahealError
from metaheal.events import AnomalyScore, DeadLetter, HealthWindow
from metaheal.kafka import Consumer, Producer, aiokafka_security
from metaheal.kafka.producer import drain
from metaheal.kafka.serializers import MAGIC, AvroSerializer
from metaheal.observability import CONSUMER_LAG, DEADLETTERS, STREAMS_HEARTBEAT, TELEMETRY_SAMPLES
from metaheal.streams.changelog import ChangelogStore, ChangelogWriter, windows_changelog
from metaheal.streams.encoders import HealthWriter
from metaheal.streams.intake import Record
from metaheal.streams.otlp_bridge import OtlpBridge
from metaheal.streams.pipeline import Pipeline

logger = logging.getLogger(__name__)


class KafkaSink:
    """Avro single-object events through one non-blocking librdkafka producer.

    Profiled in the worker (py-spy, ``metaheal bench scorer``): a Python delivery callback
    per message plus ``poll(0)`` after every ``produce`` and ``model_dump`` per event cost
    about as much as decoding the input. So delivery reports are produced only for
    failures (``delivery.report.only.error``), callbacks are served every
    ``_POLL_EVERY`` input records (:meth:`poll`), and anomaly events are written straight
    from their field dict (``AvroSerializer.write_dict``: a compiled flat-record writer,
    ~3.5 us against fastavro's ~12 us per event). Each ``produce`` that follows other work cost 15-40 us
    (waking librdkafka's thread), against 3 us back to back, so the anomaly events of
    one input record are queued and handed over in one ``produce_batch`` at the end of
    the record (:meth:`poll`): no added latency, one wake-up per record.
    """

    _POLL_EVERY = 64

    def __init__(self, settings: Settings) -> None:
        overrides: dict[str, Any] = {
            "linger.ms": 2,
            "queue.buffering.max.messages": 500_000,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        self._producer = Producer(settings.kafka, **overrides).raw
        self._errors: list[Any] = []
        self._topics = {k: settings.topics.name(k) for k in ("health", "health-early", "anomalies", "deadletter")}
        self._health = HealthWriter()
        self._anomaly = AvroSerializer(AnomalyScore)
        self._dead = AvroSerializer(DeadLetter)
        self._pending: list[dict[str, Any]] = []  # anomaly events of the current input record
        self._records = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)
            logger.error("output not delivered error=%s", err)

    def _produce(self, topic: str, value: bytes, key: bytes | str | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)

    def health(self, event: HealthWindow) -> None:
        self._produce(self._topics["health"], self._health(event), event.service)

    def early(self, event: HealthWindow) -> None:
        self._produce(self._topics["health-early"], self._health(event), event.service)

    def anomaly(self, event: AnomalyScore) -> None:
        # AnomalyScore has flat fields only: its __dict__ is what model_dump() returns
        self._pending.append({"value": self._anomaly.write_dict(event.__dict__), "key": event.service})

    def dead_letter(self, event: DeadLetter) -> None:
        self._produce(self._topics["deadletter"], self._dead(event), event.key)
        DEADLETTERS.labels(event.reason).inc()

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        topic = self._topics["anomalies"]
        if self._producer.produce_batch(topic, pending) < len(pending):
            for m in pending:  # queue full (or another per-message error): one by one, waiting for room
                if "_error" in m:
                    self._produce(topic, m["value"], m["key"])

    def poll(self) -> None:
        """End of an input record: hand its anomaly events over; serve error reports now and then."""
        self._send_pending()
        self._records += 1
        if self._records % self._POLL_EVERY == 0:
            self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> None:
        self._send_pending()
        drain(self._producer, self._errors, timeout, "output record(s)")


def faust_security(kafka: KafkaSettings) -> dict[str, Any]:
    """faust's ``broker_credentials`` / ``ssl_context`` from ``kafka.client`` (librdkafka names).

    faust hands these to every aiokafka client it makes (consumer, producer, the admin
    client that creates table changelogs), so the worker joins a secured cluster with
    the settings the librdkafka clients use.
    """
    sec = aiokafka_security(kafka)
    protocol, ctx = sec["security_protocol"], sec.get("ssl_context")
    if protocol == "PLAINTEXT":
        return {}
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ctx), "ssl_context": ctx}
    if sec["sasl_mechanism"] == "GSSAPI":
        creds: faust.auth.Credentials = faust.GSSAPICredentials(
            kerberos_service_name=sec["sasl_kerberos_service_name"], ssl_context=ctx
        )
    else:
        creds = faust.SASLCredentials(
            username=sec["sasl_plain_username"],
            password=sec["sasl_plain_password"],
            ssl_context=ctx,
            mechanism=sec["sasl_mechanism"],
        )
    return {"broker_credentials": creds, "ssl_context": ctx} if ctx is not None else {"broker_credentials": creds}


def app_id(settings: Settings) -> str:
    """Consumer group and faust app id: per topic prefix, so test prefixes never share a group."""
    return f"{settings.topics.prefix}{settings.streams.group_id}"


def create_app(settings: Settings, *, datadir: Path | None = None, sink: Any = None) -> tuple[faust.App, Pipeline]:
    """Build the faust app and its pipeline (not started: ``await app.start()``)."""
    kafka = settings.kafka
    if not kafka.bootstrap:
        raise ValueError("kafka.bootstrap: the streams worker needs a Kafka bootstrap HOST:PORT")
    cfg = settings.streams
    partitions = settings.topics.partitions.get("telemetry", 4)
    state_parts = settings.topics.partitions.get("scorer-state", 4)
    if state_parts != partitions:
        raise ValueError(
            f"topics.partitions: scorer-state has {state_parts} partitions but telemetry has {partitions}; "
            "the scorer table is co-partitioned with telemetry, make them equal"
        )
    session_s = kafka.session_timeout_ms / 1000.0
    datadir = datadir or cfg.datadir or Path(tempfile.mkdtemp(prefix="metaheal-streams-"))
    web: dict[str, Any] = (
        {"web_enabled": True, "web_port": cfg.web_port, "web_bind": "127.0.0.1"}
        if cfg.web_port
        else {"web_enabled": False}
    )
    app = faust.App(
        app_id(settings),
        broker=[f"kafka://{b.strip()}" for b in kafka.bootstrap.split(",")],
        **faust_security(kafka),
        datadir=str(datadir),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 5),
        broker_rebalance_timeout=max(10.0, session_s * 2),
        broker_commit_interval=1.0,
        broker_max_poll_records=500,
        table_standby_replicas=0,
        stream_recovery_delay=0.0,
        stream_wait_empty=False,
        producer_linger_ms=5,
        **web,
    )
    changelog = ChangelogWriter(kafka)
    windows = ChangelogStore(windows_changelog(app_id(settings)), changelog)
    scorers = ChangelogStore(settings.topics.name("scorer-state"), changelog)
    pipeline = Pipeline(
        cfg,
        sink if sink is not None else KafkaSink(settings),
        windows,
        scorers,
        seed=cfg.seed,
        wall_clock=time.time,  # live telemetry: event time is bounded around now (replays use no wall clock)
        state_topic=windows.topic,
    )
    telemetry = app.topic(
        settings.topics.name("telemetry"), partitions=partitions, key_serializer="raw", value_serializer="raw"
    )
    sync = PartitionSync(
        settings,
        pipeline,
        telemetry.get_topic_name(),
        [windows, scorers],
        lambda: app.consumer.assignment(),
        ready=lambda: not app.in_recovery,
    )

    @app.agent(telemetry, name="metaheal.streams.telemetry")
    async def process(stream: faust.StreamT[Any]) -> None:
        # state is written every max_batch_records records or flush_interval_seconds
        # (and by the timer below when the stream is idle), not per record; faust's
        # take_events() stalled here under load, so events are taken one by one
        pending, last_flush = 0, loop_time()
        poll = getattr(pipeline.sink, "poll", None) or (lambda: None)
        _quiet_gc()
        async for event in stream.events():
            m = event.message
            await sync.process(Record(m.topic, m.partition, m.offset, m.key, m.value, _from_otlp(m.headers)))
            poll()
            pending += 1
            now = loop_time()
            if pending >= cfg.max_batch_records or now - last_flush >= cfg.flush_interval_seconds:
                pipeline.flush_state()
                pending, last_flush = 0, now

    if cfg.otlp_topics:
        bridge = OtlpBridge(telemetry_partitions=partitions)
        app.metaheal_otlp = bridge  # type: ignore[attr-defined]

        @app.agent(
            app.topic(*cfg.otlp_topics, key_serializer="raw", value_serializer="raw"), name="metaheal.streams.otlp"
        )
        async def otlp(stream: faust.StreamT[Any]) -> None:
            # OTLP -> one MetricBatch per service on telemetry, in the service's partition; the sends
            # are attached to the source event, so they are written before its offset is committed
            async for event in stream.events():
                m = event.message
                out = bridge.convert(Record(m.topic, m.partition, m.offset, m.key, m.value))
                for key, partition, value in out.records:
                    await telemetry.send(key=key, value=value, partition=partition, headers=OTLP_HEADERS)
                if out.samples:
                    TELEMETRY_SAMPLES.labels(out.format).inc(out.samples)
                if out.dead is not None:
                    pipeline.sink.dead_letter(out.dead)

    @app.timer(interval=5.0)
    async def report_health() -> None:
        """Heartbeat and consumer lag (records between each partition's position and its end) for /metrics."""
        STREAMS_HEARTBEAT.set(time.time())
        lag: dict[str, int] = {}
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                end, position = consumer.highwater(tp), await consumer.position(tp)
            except Exception:  # not positioned yet
                continue
            if position is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - position)
        for topic, n in lag.items():
            CONSUMER_LAG.labels(topic).set(n)

    @app.timer(interval=max(1.0, cfg.flush_interval_seconds))
    async def catch_up_skipped() -> None:
        await sync.catch_up()

    @app.timer(interval=cfg.flush_interval_seconds)
    async def flush_idle_state() -> None:
        if cfg.idle_close:
            pipeline.close_idle()
        # anomaly events of work done outside the loop above (idle closes, records that
        # PartitionSync reads directly) wait in KafkaSink until its poll
        send = getattr(pipeline.sink, "poll", None)
        if send is not None:
            send()
        pipeline.flush_state()
        changelog.poll()

    async def on_revoked(_sender: Any, revoked: set[TP], **_kw: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == telemetry.get_topic_name()}
        pipeline.flush_state()
        pipeline.forget(gone)
        sync.revoked(gone)
        try:
            await asyncio.to_thread(changelog.flush)
        except MetahealError as exc:  # the new owner resumes from the last progress marker that was written
            logger.error("changelog not fully written before the partitions were handed over: %s", exc)
        for store in (windows, scorers):
            store.drop(gone)
        flush = getattr(pipeline.sink, "flush", None)
        if flush is not None:
            flush()

    async def on_assigned(_sender: Any, assigned: set[TP], **_kw: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == telemetry.get_topic_name())
        logger.info("partitions assigned app=%s telemetry=%s", app.conf.id, ",".join(map(str, mine)) or "-")

    _flush_fully(app, changelog)
    _short_fetch_wait(app, cfg.fetch_max_wait_ms)
    # faust calls a receiver as (sender, partitions, signal=...); its types allow only (sender, *args, signal=...)
    app.on_partitions_revoked.connect(on_revoked, weak=False)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned, weak=False)  # type: ignore[arg-type]
    app.metaheal_process = process  # type: ignore[attr-defined]
    return app, pipeline


#: marks telemetry records the OTLP stage wrote (their samples were counted as OTLP)
OTLP_HEADERS = {"metaheal-origin": b"otlp"}


def _from_otlp(headers: Any) -> bool:
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == "metaheal-origin" for k, _ in items)


def _quiet_gc() -> None:
    """Take the start-up heap (faust, aiokafka, pydantic: ~6*10^4 objects) out of the collector.

    A full collection walks every tracked object: with the start-up heap included it is a
    pause of 60-90 ms (measured here) at irregular times, i.e. latency outliers. ``gc.freeze`` moves
    what exists now to a generation the collector never scans, and a larger gen-0
    threshold makes the collections that remain (a 500-sample record allocates ~10^3
    containers) rarer.
    """
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(20_000, g1, g2)


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def _flush_fully(app: faust.App, changelog: ChangelogWriter, timeout: float = 30.0) -> None:
    """Make the producer buffer's ``flush`` (called before each offset commit) drain it all, after
    every changelog record the worker wrote (:class:`ChangelogWriter`) was acknowledged."""
    buffer = cast(ProducerBuffer, app.producer.buffer)
    flush_atmost = buffer.flush_atmost

    async def flush() -> None:
        try:
            await asyncio.to_thread(changelog.flush, timeout)
        except MetahealError as exc:  # the progress markers that made it decide where a restart resumes
            logger.error("changelog not fully written before the offset commit: %s", exc)
        deadline = asyncio.get_running_loop().time() + timeout
        while buffer.size:
            await flush_atmost(None)
            if asyncio.get_running_loop().time() > deadline:
                logger.warning("producer buffer not drained within %.0fs size=%d", timeout, buffer.size)
                return

    buffer.flush = flush  # type: ignore[method-assign]


def _short_fetch_wait(app: faust.App, wait_ms: int) -> None:
    consumer: Any = app.consumer  # faust's ThreadDelegateConsumer; its worker thread is private to faust
    thread = consumer._thread
    create = thread._create_worker_consumer

    def create_worker_consumer(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    thread._create_worker_consumer = create_worker_consumer


#: direct reads (changelogs at assignment, telemetry the stream missed) sit on the agent's
#: path: short broker waits make an empty read ~50 ms instead of ~1 s (measured here)
_DIRECT_READ: dict[str, Any] = {"fetch.wait.max.ms": 20, "fetch.error.backoff.ms": 10}


def _read_changelog(
    settings: Settings, topic: str, partitions: list[int]
) -> list[tuple[int, bytes | None, bytes | None]]:
    with Consumer(settings.kafka, **_DIRECT_READ) as c:
        return [
            (m.partition(), m.key(), m.value())
            for m in c.read_to_end(topic, partitions=partitions, timeout=120, wait=0.05)
        ]


def _read_gap(settings: Settings, topic: str, partition: int, start: int, end: int | None = None) -> list[Record]:
    """Telemetry records ``start <= offset < end`` of one partition (``end=None``: to its current end)."""
    out: list[Record] = []
    with Consumer(settings.kafka, **_DIRECT_READ) as c:
        for m in c.read_to_end(topic, partitions=[partition], start_offsets={partition: start}, timeout=120, wait=0.05):
            if end is not None and m.offset() >= end:
                break
            out.append(Record(topic, partition, m.offset(), m.key(), m.value(), _from_otlp(m.headers())))
    return out


class PartitionSync:
    """Makes the changelogs and the log itself, not faust's bookkeeping, decide what is counted.

    Measured on tansu: faust stops table recovery at the changelog high watermark (which
    tansu can report short of the real end), its offset commit can overtake changelog
    writes, and after a restart it sometimes delivered a partition from a later offset
    than the committed one. So before the first record of a newly assigned partition the
    changelogs are read to partition EOF (reliable) into the stores, and whenever a
    record arrives past the next expected offset (the state's progress marker + 1, then
    the last record + 1) the records in between are read directly and processed first.
    Stream records below the next expected offset (what a restarted worker re-reads after
    its committed offset, what :meth:`catch_up` already read directly) are dropped before
    decoding; records at or below what a service's state applied are skipped as duplicates.

    The third failure had no later record to reveal it. Right after a restart faust's
    fetcher can hand over records from past the committed offset before its seek to the
    committed offset lands; its read offset then stays ahead and it silently drops every
    record below it (``DROPPED MESSAGE`` in faust's dev log), or a partition's delivery
    stops altogether; either way a partition's tail was never processed (the SIGKILL test
    hung in about one run of three on 2 busy cores). :meth:`catch_up`, on a timer, asks
    the log itself: a partition that made no progress for a whole tick is read directly
    from the next expected offset to its end (records only queued in the stream show up
    as progress; an idle partition is looked at again after a growing pause, up to
    :attr:`MAX_IDLE_RECHECK` s). The read happens outside the lock; only processing is
    serialised with :meth:`process`. While the stream keeps delivering other partitions'
    records, a stalled partition is left to it for up to :attr:`MAX_BUSY_STALL` s: with a
    backlog, faust's queue holds one partition's records behind another's for seconds;
    reading them directly then fetched them twice and made the queued copies
    duplicates (in ``metaheal bench scorer`` over a third of the records went that way).
    """

    MAX_IDLE_RECHECK = 16.0
    MAX_BUSY_STALL = 10.0

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        topic: str,
        stores: list[Any],
        assignment: Any,
        ready: Any = None,
        clock: Any = None,
    ) -> None:
        self.settings, self.pipeline, self.topic, self.stores = settings, pipeline, topic, stores
        self.assignment = assignment  # () -> the consumer's assigned TopicPartitions
        self.ready = ready or (lambda: True)  # () -> faust's own table recovery is over
        self.clock = clock or time.monotonic
        self.next_offset: dict[int, int | None] = {}  # partition -> next expected offset (None: unknown)
        self.seen: dict[int, int | None] = {}  # partition -> next expected offset at the previous tick
        self.recheck: dict[int, tuple[float, float]] = {}  # idle partition -> (not before, pause)
        self.lock = asyncio.Lock()
        self.skipped = 0  # stream records below the next expected offset: dropped before decoding
        self.delivered = 0  # records the stream handed to process()
        self._delivered_seen = 0  # ... as of the previous catch_up tick
        self.stalled: dict[int, float] = {}  # partition without progress -> since when (clock)

    def _process_one(self, record: Record) -> None:
        """Process a record, counting its samples by format (the OTLP stage counted its own records)."""
        stats = self.pipeline.stats
        before = stats.samples
        self.pipeline.process_one(record)
        if stats.samples != before and not record.from_otlp:
            fmt = "avro" if record.value is not None and record.value[:2] == MAGIC else "json"
            TELEMETRY_SAMPLES.labels(fmt).inc(stats.samples - before)

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            self.next_offset.pop(p, None)
            self.seen.pop(p, None)
            self.recheck.pop(p, None)
            self.stalled.pop(p, None)

    def _read(self, partitions: list[int]) -> list[list[tuple[int, bytes | None, bytes | None]]]:
        """Every changelog's records of ``partitions``, to partition EOF (blocking: run in a thread)."""
        return [_read_changelog(self.settings, store.topic, partitions) for store in self.stores]

    def _load(
        self, partitions: list[int], logs: list[list[tuple[int, bytes | None, bytes | None]]]
    ) -> dict[int, int | None]:
        """Replace what the stores hold of ``partitions`` by the changelogs read (on the loop: the
        stores are not touched from two threads)."""
        for store, entries in zip(self.stores, logs, strict=True):
            store.drop(set(partitions))
            held = store.load(entries)
            logger.info(
                "changelog loaded topic=%s partitions=%s records=%d keys_held=%d",
                store.topic,
                partitions,
                len(entries),
                held,
            )
        markers = self.pipeline.progress(partitions)
        return {p: (markers[p] + 1 if p in markers else None) for p in partitions}

    def _assigned(self) -> set[int]:
        return {tp.partition for tp in self.assignment() if tp.topic == self.topic}

    async def _ensure_loaded(self, p: int | None = None) -> None:
        """Load state of every newly assigned partition at once: one changelog read per table."""
        parts = sorted(({p} if p is not None else set()) | self._assigned() - set(self.next_offset))
        if parts:
            self.pipeline.forget(set(parts))
            logs = await asyncio.to_thread(self._read, parts)
            self.next_offset.update(self._load(parts, logs))

    def _apply(self, p: int, records: list[Record]) -> int:
        """Process directly read records not processed yet (the caller holds the lock); returns how many."""
        expected = self.next_offset.get(p)
        if p not in self.next_offset:  # revoked while reading: another worker owns it now
            return 0
        fresh = [r for r in records if expected is None or r.offset >= expected]
        for r in fresh:
            self._process_one(r)
        if fresh:
            self.next_offset[p] = fresh[-1].offset + 1
        return len(fresh)

    async def process(self, record: Record) -> None:
        self.delivered += 1
        async with self.lock:
            p = record.partition
            if p not in self.next_offset:
                await self._ensure_loaded(p)
            expected = self.next_offset[p]
            if expected is not None and record.offset < expected:
                self.skipped += 1  # processed already (read directly, or in the state's changelog)
                return
            if expected is not None and record.offset > expected:
                logger.warning(
                    "records missing before offset topic=%s partition=%d expected=%d got=%d: reading them directly",
                    self.topic,
                    p,
                    expected,
                    record.offset,
                )
                self._apply(
                    p, await asyncio.to_thread(_read_gap, self.settings, self.topic, p, expected, record.offset)
                )
            self._process_one(record)  # at or below what a service's state applied: a duplicate
            if record.offset + 1 > (self.next_offset[p] or 0):
                self.next_offset[p] = record.offset + 1

    async def catch_up(self) -> int:
        """Read directly what the stream did not deliver; returns how many partitions it advanced."""
        if not self.ready():
            return 0  # faust is still between assignment and its seek to the committed offsets
        async with self.lock:
            await self._ensure_loaded()
        now, advanced = self.clock(), 0
        busy, self._delivered_seen = self.delivered != self._delivered_seen, self.delivered
        for p in sorted(self._assigned()):
            expected = self.next_offset.get(p)
            previous, self.seen[p] = self.seen.get(p, -1), expected
            if expected is None or previous != expected:
                self.recheck.pop(p, None)  # progress since the last tick, or nothing to go from
                self.stalled.pop(p, None)
                continue
            if busy and now - self.stalled.setdefault(p, now) < self.MAX_BUSY_STALL:
                continue  # the stream is working through other partitions' records: this one's turn comes
            not_before, pause = self.recheck.get(p, (0.0, 0.0))
            if now < not_before:
                continue
            records = await asyncio.to_thread(_read_gap, self.settings, self.topic, p, expected)
            async with self.lock:
                n = self._apply(p, records)
            if n:
                logger.warning(
                    "records not delivered by the consumer topic=%s partition=%d from=%d count=%d: read them directly",
                    self.topic,
                    p,
                    expected,
                    n,
                )
                self.seen[p] = self.next_offset.get(p)
                self.recheck.pop(p, None)
                self.stalled.pop(p, None)
                advanced += 1
            else:
                pause = min(self.MAX_IDLE_RECHECK, max(1.0, pause * 2))
                self.recheck[p] = (now + pause, pause)
        return advanced
