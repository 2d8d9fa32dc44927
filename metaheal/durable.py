"""Broker with optional durable storage (tansu ``s3://`` on a local S3 server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metaheal.broker import BrokerError, EmbeddedBroker


@contextmanager
def durable_broker(host: str, port: int, data_dir: Path | None) -> Iterator[EmbeddedBroker]:
    if data_dir is not None:
        raise BrokerError("durable storage (--data-dir) is not wired yet")  # TODO(foundation): s3rver
    with EmbeddedBroker(host=host, port=port) as b:
        yield b
