"""A thin producer: bytes in, delivery reports out, errors raised not logged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as _Producer

from metaheal.config import KafkaSettings
from metaheal.kafka.config import producer_config
from metaheal.kafka.errors import KafkaUnavailable

Headers = Mapping[str, str | bytes] | None
#: The confluent-kafka client behind :attr:`Producer.raw`.
RawProducer = _Producer


def _headers(headers: Headers) -> list[tuple[str, bytes]] | None:
    if not headers:
        return None
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in headers.items()]


def _record(value: bytes | None, key: bytes | str | None, headers: Headers, partition: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"key": key, "value": value, "headers": _headers(headers)}
    if partition is not None:
        kwargs["partition"] = partition
    return kwargs


def drain(producer: _Producer, errors: list[Any], timeout: float, what: str = "record(s)") -> None:
    """Flush ``producer``; raise ``KafkaUnavailable`` if records stay queued or failed.

    ``errors`` is the list its delivery callback appends failures to; it is emptied here,
    so each failure is reported once.
    """
    remaining = producer.flush(timeout)
    failed = list(errors)
    errors.clear()
    if remaining:
        raise KafkaUnavailable(f"{remaining} {what} not delivered within {timeout}s")
    if failed:
        raise KafkaUnavailable(f"{len(failed)} {what} failed: {failed[0]}")


class Producer:
    """Wraps ``confluent_kafka.Producer``.

    ``produce`` is fire-and-forget (call ``flush`` at the end of a batch);
    ``send`` returns only after the broker acknowledged the record, which is what
    write-ahead callers (the ledger) need.
    """

    def __init__(self, settings: KafkaSettings, *, idempotent: bool = False, **overrides: Any) -> None:
        cfg = producer_config(settings, idempotent=idempotent)
        cfg.update(overrides)
        self._producer = _Producer(cfg)
        self._errors: list[KafkaError] = []

    @property
    def raw(self) -> _Producer:
        """The confluent-kafka producer, for callers that manage delivery callbacks themselves."""
        return self._producer

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers = None,
        partition: int | None = None,
    ) -> None:
        kwargs = _record(value, key, headers, partition)
        while True:
            try:
                self._producer.produce(topic, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(err)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record; raise if any was not delivered."""
        drain(self._producer, self._errors, timeout)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers = None,
        partition: int | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """Produce one record and block until the broker acknowledged it."""
        acks: list[tuple[KafkaError | None, Message]] = []

        def done(err: KafkaError | None, msg: Message) -> None:
            acks.append((err, msg))

        kwargs = _record(value, key, headers, partition)
        try:
            self._producer.produce(topic, on_delivery=done, **kwargs)
        except (BufferError, KafkaException) as exc:
            raise KafkaUnavailable(f"cannot produce to {topic}: {exc}") from exc
        self._producer.flush(timeout)
        if not acks:
            raise KafkaUnavailable(f"no acknowledgement from the broker for {topic} within {timeout}s")
        err, msg = acks[0]
        if err is not None:
            raise KafkaUnavailable(f"produce to {topic} failed: {err}")
        return msg

    async def send_async(self, *args: Any, **kwargs: Any) -> Message:
        return await asyncio.to_thread(self.send, *args, **kwargs)

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
