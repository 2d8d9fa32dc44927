"""Publish metrics to metaheal from your own code: one sample or many at a time.

Samples are validated before they leave the process (a NaN or an empty service
name is a ``ValueError`` naming the field, raised at the call site rather than
dead-lettered later), encoded as Avro single-object records, keyed by service
(so one service's samples stay in order on one partition), and sent to
``<prefix>telemetry``. ``send`` is asynchronous, like any Kafka producer;
``flush`` (or leaving the ``with`` block) waits until the broker has every
record and raises :class:`~metaheal.kafka.KafkaUnavailable` if any was lost.

Usage (needs a broker, e.g. ``metaheal broker`` in another terminal)::

    from metaheal.producer import MetricsProducer

    with MetricsProducer(bootstrap="127.0.0.1:9092") as mp:
        mp.send("checkout", "latency_ms", 245.0, labels={"host": "h1"})
        mp.send_batch([("checkout", "error_rate", 0.02), ("payments", "latency_ms", 80.0)])

Batches become one ``MetricBatch`` record per service (up to ``max_batch``
samples each), which is how producers reach high throughput; ``send_series``
sends one series' samples as columns (``MetricSeries``), the cheapest to encode
and to consume.

>>> m = make_metric("checkout", "latency_ms", 245.0, ts=1736951400.0)
>>> (m.service, m.value, m.labels)
('checkout', 245.0, {})
>>> [(b.samples[0].service, len(b.samples)) for b in batches([m, m, m], max_batch=2)]
[('checkout', 2), ('checkout', 1)]
>>> make_metric("checkout", "latency_ms", float("nan"))
Traceback (most recent call last):
...
ValueError: invalid metric: value: Input should be a finite number (got nan)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from metaheal.config import Settings
from metaheal.events import Event, Metric, MetricBatch, MetricSeries
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.producer import Producer
from metaheal.kafka.serializers import AvroSerializer, JsonSerializer

logger = logging.getLogger(__name__)

SampleLike = Metric | Mapping[str, Any] | tuple[Any, ...]
E = TypeVar("E", bound=Event)

__all__ = ["KafkaUnavailable", "MetricsProducer", "batches", "make_metric"]


def _serializer(model: type[E], fmt: str) -> Callable[[E], bytes]:
    if fmt == "avro":
        return AvroSerializer(model)
    return JsonSerializer[E]()


def make_metric(
    service: str,
    metric: str,
    value: float,
    ts: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> Metric:
    """One validated sample; ``ts`` defaults to now (epoch seconds)."""
    return _validated(
        {
            "service": service,
            "metric": metric,
            "value": value,
            "ts": time.time() if ts is None else ts,
            "labels": dict(labels or {}),
        }
    )


def _validated(data: Mapping[str, Any]) -> Metric:
    return _checked(Metric, data, "metric")


def _checked(model: type[E], data: Mapping[str, Any], what: str) -> E:
    """``model`` from ``data``, or a ``ValueError`` naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            + ("" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})")
            for e in exc.errors()
        )
        raise ValueError(f"invalid {what}: {problems}") from None


def _as_metric(sample: SampleLike) -> Metric:
    if isinstance(sample, Metric):
        return sample
    if isinstance(sample, tuple):
        return make_metric(*sample)
    data = dict(sample)
    data.setdefault("ts", time.time())
    return _validated(data)


def batches(samples: Iterable[Metric], max_batch: int = 500) -> Iterator[MetricBatch]:
    """Group samples by service (first-seen order), at most ``max_batch`` per batch."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    by_service: dict[str, list[Metric]] = {}
    for s in samples:
        by_service.setdefault(s.service, []).append(s)
    for group in by_service.values():
        for i in range(0, len(group), max_batch):
            yield MetricBatch(samples=group[i : i + max_batch])


class MetricsProducer:
    """Send metrics to ``<prefix>telemetry``.

    ``bootstrap`` defaults to ``$METAHEAL_BOOTSTRAP``, then the configuration
    (``METAHEAL_KAFKA__BOOTSTRAP``, ``metaheal.yaml``); ``prefix`` to the configured
    one. Pass ``settings`` to use a loaded configuration as is.
    ``fmt="json"`` writes plain JSON instead of Avro, for consumers that cannot
    read Avro (metaheal reads both). ``client`` is passed to librdkafka.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        prefix: str | None = None,
        *,
        settings: Settings | None = None,
        fmt: Literal["avro", "json"] = "avro",
        max_batch: int = 500,
        client: Mapping[str, Any] | None = None,
    ) -> None:
        if settings is None:
            settings = Settings()
            bootstrap = bootstrap or os.environ.get("METAHEAL_BOOTSTRAP")  # as the CLI's --bootstrap
        else:
            settings = settings.model_copy(deep=True)
        if bootstrap is not None:
            settings.kafka.bootstrap = bootstrap
        if prefix is not None:
            settings.topics.prefix = prefix
        if client:
            settings.kafka.client = {**settings.kafka.client, **client}
        if not settings.kafka.bootstrap:
            raise KafkaUnavailable("no Kafka bootstrap: pass bootstrap='HOST:PORT' or set METAHEAL_BOOTSTRAP")
        if fmt not in ("avro", "json"):
            raise ValueError(f"fmt must be 'avro' or 'json', got {fmt!r}")
        self.topic = settings.topics.name("telemetry")
        self.max_batch = max_batch
        self._one = _serializer(Metric, fmt)
        self._many = _serializer(MetricBatch, fmt)
        self._series = _serializer(MetricSeries, fmt)
        self._producer = Producer(settings.kafka)
        self.sent = 0

    def send(
        self,
        service: str,
        metric: str,
        value: float,
        ts: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one sample (validated now; delivered by ``flush``)."""
        m = make_metric(service, metric, value, ts, labels)
        self._producer.produce(self.topic, self._one(m), key=m.service)
        self.sent += 1

    def send_batch(self, samples: Iterable[SampleLike]) -> int:
        """Queue many samples: ``Metric`` objects, dicts, or ``(service, metric, value[, ts[, labels]])``.

        Every sample is validated before any is sent, so a bad one sends nothing.
        Returns the number of samples queued.
        """
        metrics = [_as_metric(s) for s in samples]
        for batch in batches(metrics, self.max_batch):
            self._producer.produce(self.topic, self._many(batch), key=batch.samples[0].service)
        self.sent += len(metrics)
        return len(metrics)

    def send_series(
        self,
        service: str,
        metric: str,
        ts: Iterable[float],
        values: Iterable[float],
        labels: Mapping[str, str] | None = None,
    ) -> int:
        """Queue many samples of one series as ``MetricSeries`` records (``max_batch`` per record).

        The cheapest encoding to send and to consume (service, metric and labels once per
        record). Validated before anything is sent; returns the number of samples queued.
        """
        ts, values = list(ts), list(values)
        whole = _checked(
            MetricSeries,
            {"service": service, "metric": metric, "labels": dict(labels or {}), "ts": ts, "values": values},
            "series",
        )
        for i in range(0, len(ts), self.max_batch):
            part = whole.model_copy(update={"ts": ts[i : i + self.max_batch], "values": values[i : i + self.max_batch]})
            self._producer.produce(self.topic, self._series(part), key=service)
        self.sent += len(ts)
        return len(ts)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until the broker has every queued sample; raise ``KafkaUnavailable`` if not."""
        self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)

    def __enter__(self) -> MetricsProducer:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.flush()
            return
        try:  # still deliver what was queued, without hiding the original error
            self.flush()
        except KafkaUnavailable as exc:
            logger.warning("metrics producer flush failed during an exception error=%s", exc)
