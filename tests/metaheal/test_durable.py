"""Durable storage: records written before a broker restart are all there after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaheal.broker import BrokerError, free_port
from metaheal.config import KafkaSettings
from metaheal.durable import describe_storage, durable_broker
from metaheal.kafka import Admin, Consumer, Producer, TopicSpec
from metaheal.s3local import LocalS3, install_s3rver

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _s3rver() -> None:
    install_s3rver()  # a no-op after `make tools`


def _settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6000)


def _write(ks: KafkaSettings, events: set[tuple[bytes, bytes]]) -> None:
    # In a function of its own so the client is gone (connections closed) before the
    # broker stops: tansu waits a few seconds for connected clients on shutdown.
    Admin(ks).ensure(
        [TopicSpec("durable.events", 3, 1, {}), TopicSpec("durable.ledger", 1, 1, {"cleanup.policy": "compact"})]
    )
    with Producer(ks) as p:
        for key, value in sorted(events):
            p.produce("durable.events", value, key=key)
        p.produce("durable.ledger", b"entry-0", key="0")
        p.flush()


def _read(ks: KafkaSettings, topic: str) -> list[tuple[bytes, bytes]]:
    with Consumer(ks) as c:
        return [(m.key(), m.value()) for m in c.read_to_end(topic)]


def test_records_survive_a_broker_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected = {(f"k{i}".encode(), f"value-{i}".encode()) for i in range(200)}
    with durable_broker("127.0.0.1", free_port(), data, log_dir=tmp_path) as b:
        _write(_settings(b.bootstrap), expected)
    # A different port, as after a reboot: nothing may depend on the old address.
    with durable_broker("127.0.0.1", free_port(), data, log_dir=tmp_path) as b:
        ks = _settings(b.bootstrap)
        assert Admin(ks).topics()["durable.events"] == 3
        assert set(_read(ks, "durable.events")) == expected
        assert _read(ks, "durable.ledger") == [(b"0", b"entry-0")]
        # Appending after the restart continues the log instead of overwriting it.
        producer = Producer(ks)
        producer.send("durable.ledger", b"entry-1", key="1")
        del producer
        assert _read(ks, "durable.ledger") == [(b"0", b"entry-0"), (b"1", b"entry-1")]
        assert Admin(ks).describe_configs(["durable.ledger"])["durable.ledger"]["cleanup.policy"] == "compact"


def test_memory_storage_forgets_and_says_so(tmp_path: Path) -> None:
    assert "in memory" in describe_storage(None)
    assert str(tmp_path) in describe_storage(tmp_path)
    with durable_broker("127.0.0.1", free_port(), None) as b:
        assert not b.durable
        ks = _settings(b.bootstrap)
        Admin(ks).ensure([TopicSpec("mem.events", 1, 1, {})])
    with durable_broker("127.0.0.1", free_port(), None) as b:
        assert "mem.events" not in Admin(_settings(b.bootstrap)).topics()


def test_one_data_dir_serves_one_broker(tmp_path: Path) -> None:
    with LocalS3(tmp_path) as first:
        assert first.running
        with pytest.raises(BrokerError, match="in use by another metaheal broker"):
            LocalS3(tmp_path).start()
    assert not first.running
    # The lock is released on stop, so the dir can be used again.
    with LocalS3(tmp_path) as again:
        assert again.running
