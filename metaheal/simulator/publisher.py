"""Telemetry out: one Avro ``MetricBatch`` per service per tick, one producer flush per tick.

Batches are keyed by service so one service's samples stay in order on
one partition, and a tick is flushed as a unit so a reader never sees half a tick
for long.
"""

from __future__ import annotations

import asyncio
import logging

from metaheal.config import KafkaSettings
from metaheal.events import Metric, MetricBatch
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer

logger = logging.getLogger(__name__)


class TelemetryPublisher:
    """Publishes samples to the telemetry topic; ``flush`` raises ``KafkaUnavailable`` on loss."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self._producer = Producer(kafka)
        self._ser = AvroSerializer(MetricBatch)
        self.batches = 0
        self.samples = 0

    def publish(self, by_service: dict[str, list[Metric]]) -> None:
        for service, samples in by_service.items():
            if samples:
                self._producer.produce(self.topic, self._ser(MetricBatch(samples=samples)), key=service)
                self.batches += 1
                self.samples += len(samples)
        self._producer.flush(10.0)

    async def publish_async(self, by_service: dict[str, list[Metric]]) -> None:
        await asyncio.to_thread(self.publish, by_service)

    def close(self) -> None:
        self._producer.close(5.0)
