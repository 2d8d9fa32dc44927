"""docker-compose.kafka.yml is configuration only here (no Docker on this machine):
parse it and check what it promises."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaheal.config import Settings
from metaheal.topics import declared_topics

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.kafka.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    return Settings()


def _ledger_config(settings: Settings) -> dict[str, str]:
    return next(s for s in declared_topics(settings) if s.name == settings.topics.name("ledger")).config


def test_services_and_profiles(services: dict[str, Any]) -> None:
    assert set(services) == {"kafka", "topics", "kafka-1", "kafka-2", "kafka-3", "topics-ha"}
    default = {name for name, s in services.items() if "profiles" not in s}
    assert default == {"kafka", "topics"}
    assert all(services[n]["profiles"] == ["three-brokers"] for n in ("kafka-1", "kafka-2", "kafka-3", "topics-ha"))
    for name in ("kafka", "kafka-1", "kafka-2", "kafka-3"):
        assert services[name]["image"].startswith("apache/kafka:")
        assert "healthcheck" in services[name]


def test_single_broker_is_kraft_on_9092(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = kafka["environment"]
    assert kafka["ports"] == ["9092:9092"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "EXTERNAL://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # a Kafka Uuid


def test_three_brokers_share_a_quorum_with_distinct_ids_and_ports(services: dict[str, Any]) -> None:
    brokers = [services[f"kafka-{i}"] for i in (1, 2, 3)]
    envs = [b["environment"] for b in brokers]
    assert [e["KAFKA_NODE_ID"] for e in envs] == ["1", "2", "3"]
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs} == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    assert [b["ports"][0].split(":")[0] for b in brokers] == ["19092", "29092", "39092"]
    for i, e in enumerate(envs, start=1):
        assert f"INTERNAL://kafka-{i}:19092" in e["KAFKA_ADVERTISED_LISTENERS"]
        assert f"EXTERNAL://localhost:{i}9092" in e["KAFKA_ADVERTISED_LISTENERS"]
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert len({b["volumes"][0] for b in brokers}) == 3


def test_topic_services_run_metaheal_topics_ensure(services: dict[str, Any]) -> None:
    for name, deps in (("topics", {"kafka"}), ("topics-ha", {"kafka-1", "kafka-2", "kafka-3"})):
        svc = services[name]
        assert "metaheal topics ensure" in svc["command"][0]
        assert set(svc["depends_on"]) == deps
        assert all(d["condition"] == "service_healthy" for d in svc["depends_on"].values())
        hosts = svc["environment"]["METAHEAL_BOOTSTRAP"].split(",")
        assert all(h.split(":")[0] in deps and h.endswith(":19092") for h in hosts)


def test_ledger_topic_config_single(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(services["topics"]["environment"], monkeypatch)
    assert settings.kafka.replication_factor == 1
    assert _ledger_config(settings) == {"cleanup.policy": "compact", "retention.ms": "-1"}


def test_ledger_topic_config_three_brokers(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(services["topics-ha"]["environment"], monkeypatch)
    specs = declared_topics(settings)
    assert {s.replication_factor for s in specs} == {3}
    assert _ledger_config(settings) == {"cleanup.policy": "compact", "retention.ms": "-1", "min.insync.replicas": "2"}
