"""The streams worker's OTLP stage: collector topics -> native MetricBatch records on telemetry.

Records on ``streams.otlp_topics`` (the collector's topics, no prefix) are decoded by
:class:`~metaheal.streams.otlp.OtlpDecoder` and re-published, one Avro ``MetricBatch``
per service, to ``<prefix>telemetry`` keyed by the service, in the partition a native
producer's default partitioner picks for that key (librdkafka's CRC-32 of the key). So a
service's samples meet its health-window state in one partition whatever format they
came in, and the pipeline behind it needs no change. The re-published records are sent
through faust and attached to the source event, so they are written before the source
offset is committed (at-least-once, like the rest of the worker).

A record that is no OTLP request at all is dead-lettered as ``undecodable``; a request
with fields that cannot be mapped is dead-lettered as ``invalid`` (nothing usable) or
``partial`` (the rest was forwarded), the error naming each field.

>>> from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
>>> req = ExportMetricsServiceRequest()
>>> rm = req.resource_metrics.add()
>>> kv = rm.resource.attributes.add(key="service.name"); kv.value.string_value = "api"
>>> _ = rm.scope_metrics.add().metrics.add(name="queue_depth").gauge.data_points.add(as_int=3, time_unix_nano=10**9)
>>> bridge = OtlpBridge(telemetry_partitions=4)
>>> out = bridge.convert(Record("otlp_metrics", 0, 5, None, req.SerializeToString()))
>>> [(key, partition) for key, partition, _ in out.records], out.samples, out.format, out.dead
([(b'api', 3)], 1, 'otlp_proto', None)
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import DeadLetter, MetricBatch
from metaheal.kafka.admin import Admin, TopicSpec
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.intake import Record, dead_letter
from metaheal.streams.otlp import OtlpDecoder

logger = logging.getLogger(__name__)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default (``consistent_random``) partitioner gives a non-empty key.

    >>> key_partition(b"api", 4), key_partition(b"db", 4)
    (3, 0)
    """
    return zlib.crc32(key) % partitions


@dataclass
class Converted:
    """One OTLP record: ``(key, partition, value)`` records for telemetry and at most one dead letter."""

    format: str
    records: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    samples: int = 0
    dead: DeadLetter | None = None


class OtlpBridge:
    def __init__(self, *, telemetry_partitions: int, decoder: OtlpDecoder | None = None) -> None:
        self.partitions = telemetry_partitions
        self.decoder = decoder or OtlpDecoder()
        self._batch = AvroSerializer(MetricBatch)

    def convert(self, record: Record) -> Converted:
        """Never raises on input: a bad record comes back as a dead letter."""
        try:
            result = self.decoder.decode(record.value)
        except DecodeError as exc:
            logger.warning("OTLP record rejected topic=%s offset=%d error=%s", record.topic, record.offset, exc)
            return Converted("otlp", dead=dead_letter(record, "undecodable", str(exc)))
        except Exception as exc:  # a protobuf/runtime surprise must not kill the agent
            logger.exception("OTLP decode failed topic=%s offset=%d", record.topic, record.offset)
            return Converted("otlp", dead=dead_letter(record, "undecodable", f"{type(exc).__name__}: {exc}"))
        out = Converted(result.format, samples=len(result.samples))
        for service, samples in result.by_service().items():
            key = service.encode()
            out.records.append((key, key_partition(key, self.partitions), self._batch.write_dict({"samples": samples})))
        if result.problems:
            reason = "partial" if result.samples else "invalid"
            logger.warning(
                "OTLP record %s topic=%s offset=%d error=%s", reason, record.topic, record.offset, result.error
            )
            out.dead = dead_letter(record, reason, f"{result.format}: {result.error}")
        return out


def ensure_otlp_topics(settings: Settings) -> list[str]:
    """Create the OTLP topics that do not exist yet (as many partitions as telemetry)."""
    if not settings.streams.otlp_topics:
        return []
    partitions = settings.topics.partitions.get("telemetry", 4)
    specs = [
        TopicSpec(name=t, partitions=partitions, replication_factor=settings.kafka.replication_factor)
        for t in settings.streams.otlp_topics
    ]
    return Admin(settings.kafka).ensure(specs)
