"""Shared fixtures: one embedded broker per test session, one topic prefix per test.

Tests never assume port 9092 is free, and the consumer settings tansu needs
(``session.timeout.ms=6000``: group joins take about half of it) are set here once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.topics import ensure_topics

TEST_SESSION_TIMEOUT_MS = 6000


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """Keep the developer's METAHEAL_* variables and ./metaheal.yaml out of the tests."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("METAHEAL_")}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = EmbeddedBroker(port=free_port(), log_path=log)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap=broker.bootstrap, session_timeout_ms=TEST_SESSION_TIMEOUT_MS)


@pytest.fixture
def settings(kafka_settings: KafkaSettings, tmp_path: Path) -> Settings:
    """Settings bound to the test broker with a topic prefix of the test's own (topics not created)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    return Settings(
        kafka=kafka_settings,
        topics=TopicSettings(prefix=prefix),
        keys=tmp_path / "keys",
        playbooks=Path(__file__).resolve().parent.parent / "playbooks",
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """Like ``settings``, with every declared topic created."""
    ensure_topics(settings)
    return settings
