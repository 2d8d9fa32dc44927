from metaheal.config import Settings
from metaheal.kafka import Admin, Consumer, Producer
from metaheal.topics import TOPICS, check_topics, ensure_topics


def test_ensure_is_idempotent_and_check_is_clean(settings: Settings) -> None:
    created = ensure_topics(settings)
    assert len(created) == len(TOPICS)
    assert ensure_topics(settings) == []
    assert check_topics(settings) == []


def test_check_reports_ledger_drift(topics: Settings) -> None:
    ledger = topics.topics.name("ledger")
    Admin(topics.kafka).alter_config(ledger, {"cleanup.policy": "delete"})
    drifts = check_topics(topics)
    assert [str(d) for d in drifts] == [f"{ledger}: cleanup.policy=delete != declared compact"]


def test_read_to_end_returns_every_record(topics: Settings) -> None:
    topic = topics.topics.name("telemetry")
    with Producer(topics.kafka) as p:
        for i in range(50):
            p.produce(topic, f"v{i}".encode(), key=f"k{i}")
        p.flush()
    values = sorted(m.value() for m in Consumer(topics.kafka).read_to_end(topic))
    assert values == sorted(f"v{i}".encode() for i in range(50))
