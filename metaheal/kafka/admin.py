"""Topic administration: idempotent create, describe, config drift."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

from metaheal.config import KafkaSettings
from metaheal.kafka.config import client_config
from metaheal.kafka.errors import KafkaUnavailable


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)


class Admin:
    def __init__(self, settings: KafkaSettings, *, timeout: float = 10.0) -> None:
        self._client = AdminClient(client_config(settings))
        self._timeout = timeout

    def topics(self) -> dict[str, int]:
        """Existing topic names and their partition counts."""
        try:
            md = self._client.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot list topics: {exc}") from exc
        return {name: len(t.partitions) for name, t in md.topics.items() if not t.error}

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the broker answers a metadata request."""
        try:
            self._client.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"broker did not answer metadata within {timeout}s: {exc}") from exc

    def ensure(self, specs: list[TopicSpec]) -> list[str]:
        """Create the topics that do not exist yet; return the names created."""
        existing = self.topics()
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        futures = self._client.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=self._timeout,
        )
        created = []
        for name, fut in futures.items():
            try:
                fut.result(timeout=self._timeout)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaUnavailable(f"cannot create topic {name}: {exc}") from exc
        return created

    def describe_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        out: dict[str, dict[str, str]] = {}
        for res, fut in self._client.describe_configs(resources, request_timeout=self._timeout).items():
            try:
                entries = fut.result(timeout=self._timeout)
            except KafkaException as exc:
                raise KafkaUnavailable(f"cannot describe {res.name}: {exc}") from exc
            out[res.name] = {k: v.value for k, v in entries.items() if v.value is not None}
        return out

    def alter_config(self, name: str, config: dict[str, str]) -> None:
        """Set topic configs (incrementally); used by tests to simulate drift."""
        res = ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
            ],
        )
        for fut in self._client.incremental_alter_configs([res]).values():
            fut.result(timeout=self._timeout)

    def delete(self, names: list[str]) -> None:
        for fut in self._client.delete_topics(names, operation_timeout=self._timeout).values():
            with contextlib.suppress(KafkaException):
                fut.result(timeout=self._timeout)
