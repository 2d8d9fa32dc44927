"""Extra probes: ``ProbeCommand`` records on ``<prefix>probes`` switch extra telemetry on.

The meta loop enables a probe for a cycle with a TTL; the simulated services then
emit more detail (``latency_histograms``: percentile buckets; ``error_tracking``:
errors by type; ``dependency_traces``: per-dependency span latency; ``stack_traces``:
failing frames) until the TTL runs out. The topic is read from the beginning without a
consumer group (no join delay); commands whose TTL has passed change nothing.
Undecodable records, and records not signed by the meta loop (``probe_command`` in
:data:`metaheal.ledger.signing.RECORD_WRITERS`; ``issued_at`` no later than the signing time),
go to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from metaheal.config import Settings
from metaheal.errors import DecodeError, RecordRefused
from metaheal.events import DeadLetter, ProbeCommand
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger.signing import RecordVerifier
from metaheal.simulator.fleet import Fleet

logger = logging.getLogger(__name__)


def apply_probe(fleet: Fleet, cmd: ProbeCommand, now: float | None = None) -> bool:
    """Apply one command; returns whether it changed anything (False when expired).

    >>> fleet = Fleet(clock=lambda: 100.0)
    >>> cmd = ProbeCommand(probe_id="p1", cycle_id="c1", probe="error_tracking",
    ...                    services=["api_cluster"], ttl_seconds=30, issued_at=90.0)
    >>> apply_probe(fleet, cmd), fleet.active_probes("api_cluster"), fleet.active_probes("web")
    (True, ['error_tracking'], [])
    >>> fleet.active_probes("api_cluster", now=121.0)
    []
    """
    t = fleet.now(now)
    until = cmd.issued_at + cmd.ttl_seconds
    if not cmd.enabled:
        fleet.disable_probe(cmd.probe, cmd.services)
        return True
    if until <= t:
        return False
    fleet.enable_probe(cmd.probe, cmd.services, until)
    return True


class ProbeListener:
    """Follows the probes topic and applies each command to the fleet."""

    def __init__(self, settings: Settings, fleet: Fleet) -> None:
        self.settings = settings
        self.fleet = fleet
        self.topic = settings.topics.name("probes")
        self.applied = 0
        self._decode = AvroDeserializer(ProbeCommand)
        # read from the start: old commands are refused by their TTL, not their age (applying one twice is a no-op)
        self._verifier = RecordVerifier.for_settings(settings)
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        consumer = Consumer(self.settings.kafka)
        dlq: Producer | None = None
        try:
            await asyncio.to_thread(consumer.assign_topics, [self.topic])
            while not stop.is_set():
                msgs = await asyncio.to_thread(consumer.poll_batch, 100, 0.3)
                for msg in msgs:
                    try:
                        cmd = self._decode(msg.value() or b"")
                        signed = self._verifier.check("probe_command", msg, record_id=cmd.probe_id)
                        if cmd.issued_at > signed.ts + self._verifier.max_skew:
                            raise RecordRefused("future_ts", f"issued_at {cmd.issued_at:.3f} is after its signing time")
                    except DecodeError as exc:
                        logger.warning("probe rejected offset=%d error=%s", msg.offset(), exc)
                        refused = isinstance(exc, RecordRefused)
                        self.refused += refused
                        reason = (
                            f"untrusted probe_command: {exc.reason}"
                            if isinstance(exc, RecordRefused)
                            else "undecodable ProbeCommand"
                        )
                        dlq = dlq or Producer(self.settings.kafka)
                        dead = DeadLetter.of(msg, reason, str(exc))
                        await asyncio.to_thread(
                            dlq.send,
                            self.settings.topics.name("deadletter"),
                            AvroSerializer(DeadLetter)(dead),
                            msg.key(),
                        )
                        continue
                    if apply_probe(self.fleet, cmd):
                        self.applied += 1
                        logger.info(
                            "probe applied probe=%s services=%s ttl=%d cycle_id=%s",
                            cmd.probe,
                            ",".join(cmd.services) or "*",
                            cmd.ttl_seconds,
                            cmd.cycle_id,
                        )
        finally:
            await asyncio.to_thread(consumer.close)
            if dlq is not None:
                dlq.close()
