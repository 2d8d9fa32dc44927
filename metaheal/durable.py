"""Broker with optional durable storage (tansu ``s3://`` on a local S3 server).

Without a data dir the broker keeps everything in memory (fast, and right for
tests and the demo). With one, tansu stores every record batch, watermark and
the cluster metadata as objects in :class:`~metaheal.s3local.LocalS3`, whose files
live in the data dir, so a restarted broker on the same dir serves every record
written before the restart.

>>> storage_url(None), storage_url(Path("/var/lib/metaheal"))
('memory://tansu/', 's3://tansu/')
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from metaheal.broker import BrokerError, EmbeddedBroker
from metaheal.s3local import LocalS3

logger = logging.getLogger(__name__)

BUCKET = "tansu"


def check_port_free(host: str, port: int) -> None:
    """Fail fast if something already listens on ``host:port``.

    Without this, a second broker on a busy port would "answer" metadata through
    the first one and report a start that never happened.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror} (another broker running?)") from None


def storage_url(data_dir: Path | None) -> str:
    return f"s3://{BUCKET}/" if data_dir is not None else "memory://tansu/"


def describe_storage(data_dir: Path | None) -> str:
    """What the user is told at start-up, so nobody mistakes memory for durability."""
    if data_dir is None:
        return "in memory (everything is lost when the broker stops; use --data-dir DIR to keep it)"
    return f"durable in {data_dir} (local S3)"


@contextmanager
def durable_broker(
    host: str,
    port: int,
    data_dir: Path | None,
    *,
    log_dir: Path | None = None,
    timeout: float = 20.0,
) -> Iterator[EmbeddedBroker]:
    """Run tansu (and, with ``data_dir``, s3rver) for the duration of the ``with`` block.

    Both processes run in their own process groups and are stopped in reverse
    order (broker first, so it never writes to a vanished store).
    """
    check_port_free(host, port)
    with ExitStack() as stack:
        env: dict[str, str] = {}
        if data_dir is not None:
            data_dir = data_dir.resolve()
            s3 = LocalS3(
                data_dir, host="127.0.0.1", bucket=BUCKET, log_path=log_dir / "s3rver.log" if log_dir else None
            )
            stack.callback(s3.stop)  # registered first: an interrupt during start still stops it
            s3.start(timeout=timeout)
            env = s3.aws_env()
        broker = EmbeddedBroker(
            host=host,
            port=port,
            storage=storage_url(data_dir),
            env=env,
            log_path=log_dir / "tansu.log" if log_dir else None,
        )
        stack.callback(broker.stop)
        seconds = broker.start(timeout=timeout)
        logger.info("broker ready bootstrap=%s storage=%s seconds=%.3f", broker.bootstrap, broker.storage, seconds)
        yield broker
