"""Every topic metaheal uses, declared once.

>>> from metaheal.config import Settings
>>> specs = {s.name: s for s in declared_topics(Settings())}
>>> specs["metaheal.ledger"].config["cleanup.policy"]
'compact'
>>> specs["metaheal.telemetry"].partitions
4
"""

from __future__ import annotations

from dataclasses import dataclass

from metaheal.config import Settings
from metaheal.kafka.admin import Admin, TopicSpec

COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}


@dataclass(frozen=True)
class TopicDecl:
    short: str
    partitions: int
    config: dict[str, str]
    purpose: str


TOPICS: tuple[TopicDecl, ...] = (
    TopicDecl("telemetry", 4, {}, "raw metrics from producers (Metric/MetricBatch, Avro or JSON)"),
    TopicDecl("health", 4, {}, "per-service tumbling health windows"),
    TopicDecl("health-early", 4, {}, "provisional health windows of still-open windows (the decision path only)"),
    TopicDecl("anomalies", 4, {}, "anomaly scores and per-window series summaries"),
    TopicDecl("cycles", 1, {}, "CycleFocus decisions of the meta loop"),
    TopicDecl("advice", 1, {}, "MLAdvice keyed by cycle_id"),
    TopicDecl("directives", 4, {}, "Directives keyed by service"),
    TopicDecl("plans", 4, {}, "AgenticPlans keyed by service"),
    TopicDecl("approvals", 1, {}, "ApprovalRequest and ApprovalDecision"),
    TopicDecl("outcomes", 1, {}, "SignedOutcome: the public result interface"),
    TopicDecl("probes", 1, {}, "ProbeCommand with TTL for producers"),
    TopicDecl("ledger", 1, COMPACTED, "signed, hash-chained ledger entries (one partition: one order)"),
    TopicDecl(
        "ledger-index",
        17,
        COMPACTED,
        "cycle_id -> ledger offsets (partitions 1..16 by CRC-32 of cycle_id; 0: lease and tail)",
    ),
    TopicDecl("scorer-state", 4, COMPACTED, "checkpoints of river models per series"),
    TopicDecl("control", 1, COMPACTED, "meta-loop leadership and durable guardrail state"),
    TopicDecl("executor-state", 4, COMPACTED, "executor plan state for exactly-once effects"),
    TopicDecl("deadletter", 1, {}, "rejected input with original bytes and the reason"),
    TopicDecl(
        "services",
        1,
        COMPACTED,
        "service registry: ServiceRegistration keyed by service name (a tombstone deregisters)",
    ),
)


def declared_topics(settings: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(
            name=settings.topics.name(t.short),
            partitions=settings.topics.partitions.get(t.short, t.partitions),
            replication_factor=settings.kafka.replication_factor,
            config=_config(t, settings.kafka.replication_factor),
        )
        for t in TOPICS
    ]


def _config(t: TopicDecl, replication_factor: int) -> dict[str, str]:
    """The declared config, plus ``min.insync.replicas`` for the ledger when replicated:
    with RF=3 an acked ledger entry is on at least 2 brokers, and one broker may be down."""
    config = dict(t.config)
    if t.short == "ledger" and replication_factor > 1:
        config["min.insync.replicas"] = str(replication_factor - 1)
    return config


def ensure_topics(settings: Settings) -> list[str]:
    return Admin(settings.kafka).ensure(declared_topics(settings))


@dataclass(frozen=True)
class Drift:
    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


def check_topics(settings: Settings) -> list[Drift]:
    """Compare the brokers' topics with the declaration; one Drift per difference."""
    admin = Admin(settings.kafka)
    existing = admin.topics()
    specs = declared_topics(settings)
    drifts = [Drift(s.name, "missing") for s in specs if s.name not in existing]
    present = [s for s in specs if s.name in existing]
    for s in present:
        if existing[s.name] != s.partitions:
            drifts.append(Drift(s.name, f"partitions {existing[s.name]} != declared {s.partitions}"))
    configs = admin.describe_configs([s.name for s in present]) if present else {}
    for s in present:
        actual = configs.get(s.name, {})
        for key, want in s.config.items():
            got = actual.get(key)
            if got != want:
                drifts.append(Drift(s.name, f"{key}={got} != declared {want}"))
    return drifts
