"""librdkafka configuration derived from settings.

>>> from metaheal.config import KafkaSettings
>>> client_config(KafkaSettings(bootstrap="127.0.0.1:9092"))["bootstrap.servers"]
'127.0.0.1:9092'
>>> consumer_config(KafkaSettings(bootstrap="b:1", session_timeout_ms=6000), "g")["session.timeout.ms"]
6000
"""

from __future__ import annotations

from typing import Any

from metaheal.config import KafkaSettings
from metaheal.kafka.errors import KafkaUnavailable


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    if not settings.bootstrap:
        raise KafkaUnavailable("no Kafka bootstrap given (use --bootstrap or METAHEAL_KAFKA__BOOTSTRAP)")
    return {"bootstrap.servers": settings.bootstrap, **settings.client}


def producer_config(settings: KafkaSettings, *, idempotent: bool = False) -> dict[str, Any]:
    cfg = client_config(settings)
    cfg.setdefault("linger.ms", 5)
    if idempotent:
        cfg.update({"enable.idempotence": True, "acks": "all"})
    return cfg


def consumer_config(
    settings: KafkaSettings,
    group_id: str | None,
    *,
    auto_offset_reset: str = "earliest",
    enable_auto_commit: bool = False,
) -> dict[str, Any]:
    """Consumer settings; ``group_id=None`` gives a group-less reader for ``assign``.

    ``enable.partition.eof`` is always on: tansu's ListOffsets high watermarks are
    unreliable, so "caught up" is decided by the EOF event, never by watermarks.
    """
    cfg = client_config(settings)
    cfg.update(
        {
            "group.id": group_id or "metaheal-reader",
            "auto.offset.reset": auto_offset_reset,
            "enable.auto.commit": enable_auto_commit,
            "enable.partition.eof": True,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
        }
    )
    return cfg
