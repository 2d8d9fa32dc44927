"""metaheal.producer against the embedded broker."""

from __future__ import annotations

import pytest

from metaheal.broker import free_port
from metaheal.config import Settings
from metaheal.events import Metric
from metaheal.kafka import Consumer, KafkaUnavailable
from metaheal.kafka.serializers import TelemetryDeserializer
from metaheal.producer import MetricsProducer

pytestmark = pytest.mark.broker


def _read(settings: Settings) -> list[tuple[str, list[Metric]]]:
    de = TelemetryDeserializer()
    with Consumer(settings.kafka) as c:
        msgs = list(c.read_to_end(settings.topics.name("telemetry")))
    return [(m.key().decode(), de(m.value())) for m in sorted(msgs, key=lambda m: (m.partition(), m.offset()))]


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_single_and_batched_samples_arrive_keyed_by_service(topics: Settings, fmt: str) -> None:
    with MetricsProducer(bootstrap=topics.kafka.bootstrap, prefix=topics.topics.prefix, fmt=fmt, max_batch=2) as mp:  # type: ignore[arg-type]
        mp.send("checkout", "latency_ms", 245.0, ts=1.0, labels={"host": "h1"})
        queued = mp.send_batch(
            [
                ("checkout", "error_rate", 0.02, 2.0),
                {"service": "payments", "metric": "latency_ms", "value": 80.0, "ts": 3.0},
                Metric(service="checkout", metric="latency_ms", value=250.0, ts=4.0),
                ("checkout", "latency_ms", 260.0, 5.0, {"host": "h2"}),
            ]
        )
        assert queued == 4
    assert mp.sent == 5
    records = _read(topics)
    # 1 single + checkout batches of 2 and 1 + one payments batch
    assert sorted(len(samples) for _, samples in records) == [1, 1, 1, 2]
    assert all(all(s.service == key for s in samples) for key, samples in records)
    got = sorted((s.ts, s.service, s.metric, s.value, s.labels) for _, samples in records for s in samples)
    assert got == [
        (1.0, "checkout", "latency_ms", 245.0, {"host": "h1"}),
        (2.0, "checkout", "error_rate", 0.02, {}),
        (3.0, "payments", "latency_ms", 80.0, {}),
        (4.0, "checkout", "latency_ms", 250.0, {}),
        (5.0, "checkout", "latency_ms", 260.0, {"host": "h2"}),
    ]
    # Per service, order is kept (one key, one partition).
    checkout = [s.ts for key, samples in records if key == "checkout" for s in samples]
    assert checkout == sorted(checkout)


def test_a_bad_sample_sends_nothing(topics: Settings) -> None:
    mp = MetricsProducer(settings=topics)
    with pytest.raises(ValueError, match=r"invalid metric: value: Input should be a finite number \(got inf\)"):
        mp.send_batch([("api", "latency_ms", 1.0), ("api", "latency_ms", float("inf"))])
    with pytest.raises(ValueError, match="invalid metric: service: String should have at least 1 character"):
        mp.send("", "latency_ms", 1.0)
    mp.flush()
    assert mp.sent == 0
    assert _read(topics) == []


def test_default_timestamp_is_now(topics: Settings) -> None:
    import time

    before = time.time()
    with MetricsProducer(settings=topics) as mp:
        mp.send("api", "cpu_utilization", 0.5)
    [(_, [sample])] = _read(topics)
    assert before <= sample.ts <= time.time()


def test_flush_raises_when_the_broker_is_unreachable() -> None:
    mp = MetricsProducer(bootstrap=f"127.0.0.1:{free_port()}", client={"message.timeout.ms": 500})
    mp.send("api", "latency_ms", 1.0)
    with pytest.raises(KafkaUnavailable):
        mp.flush(timeout=10)


def test_no_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(KafkaUnavailable, match="no Kafka bootstrap"):
        MetricsProducer()


def test_bootstrap_and_prefix_from_the_environment(topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAHEAL_BOOTSTRAP", topics.kafka.bootstrap or "")
    monkeypatch.setenv("METAHEAL_TOPICS__PREFIX", topics.topics.prefix)
    with MetricsProducer() as mp:
        assert mp.topic == topics.topics.name("telemetry")
        mp.send("api", "latency_ms", 3.0, ts=1.0)
    assert [s.value for _, samples in _read(topics) for s in samples] == [3.0]


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_a_series_arrives_as_columns_in_records_of_max_batch(topics: Settings, fmt: str) -> None:
    with MetricsProducer(bootstrap=topics.kafka.bootstrap, prefix=topics.topics.prefix, fmt=fmt, max_batch=2) as mp:  # type: ignore[arg-type]
        assert mp.send_series("checkout", "latency_ms", [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], labels={"host": "h1"}) == 3
        with pytest.raises(ValueError, match=r"invalid series: values.1: Input should be a finite number"):
            mp.send_series("checkout", "latency_ms", [4.0, 5.0], [1.0, float("nan")])
    records = _read(topics)
    assert [len(samples) for _, samples in records] == [2, 1]  # the bad series sent nothing
    assert [(s.ts, s.value, s.labels) for _, samples in records for s in samples] == [
        (1.0, 10.0, {"host": "h1"}),
        (2.0, 20.0, {"host": "h1"}),
        (3.0, 30.0, {"host": "h1"}),
    ]
