"""Helpers for ledger tests: build signed chains in-process and write raw records as an attacker would."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from metaheal.config import Settings
from metaheal.events import LedgerEntry
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.chain import record_headers, record_key
from metaheal.ledger.keys import KeyRegistry, init_system_keys
from metaheal.ledger.sequencer import Sequencer
from metaheal.topics import ensure_topics

ENCODE = AvroSerializer(LedgerEntry)
ACTIONS = [
    ("meta_loop", "cycle_focus_decided"),
    ("ml_advisors", "advice_provided"),
    ("agentic_planner", "plan_created"),
    ("executor", "execution_started"),
    ("executor", "execution_outcome"),
]


@dataclass
class Rec:
    key: str
    value: bytes | None
    headers: dict[str, str]


def rec(e: LedgerEntry, **header_overrides: str) -> Rec:
    return Rec(record_key(e), ENCODE(e), {**record_headers(e), **header_overrides})


def build_chain(settings: Settings, n: int, *, checkpoint_every: int = 10**9, cycle_len: int = 5) -> list[LedgerEntry]:
    """``n`` requested entries (plus checkpoints), signed with the real keys of ``settings.keys``."""
    init_system_keys(settings.keys)
    reg = KeyRegistry.load(settings.keys)
    signers = {a: reg.signing_key(a) for a, _ in ACTIONS}
    seq = Sequencer(
        checkpoint_every_entries=checkpoint_every, checkpoint_every_seconds=1e9, origin=settings.ledger.origin
    )
    ledger = reg.signing_key("ledger")
    out: list[LedgerEntry] = []
    for i in range(n):
        actor, action = ACTIONS[i % len(ACTIONS)]
        fields = dict(
            actor=actor,
            action=action,
            resource=f"svc{i % 7}",
            subsystem="api",
            cycle_id=f"cycle-{i // cycle_len}",
            payload=f'{{"i":{i},"score":0.5}}',
            result="ok",
        )
        out += seq.add(fields, signers[actor], ledger)
    return out


def write_raw(settings: Settings, records: Iterable[Rec]) -> None:
    """Produce records exactly as given (one partition), as anyone with write access could."""
    ensure_topics(settings)
    p = Producer(settings.kafka)
    topic = settings.topics.name("ledger")
    for r in records:
        p.produce(topic, r.value, key=r.key, headers=r.headers, partition=0)
    p.flush(60)


@pytest.fixture
def chain_settings(settings: Settings) -> Settings:
    init_system_keys(settings.keys)
    return settings
