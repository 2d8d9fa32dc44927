"""The ImmutableLog contract against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from metaheal.broker import free_port
from metaheal.config import KafkaSettings, Settings
from metaheal.events import LedgerEntry
from metaheal.kafka import KafkaUnavailable, PartitionReader
from metaheal.ledger import ImmutableLog, LedgerUnavailable
from metaheal.ledger.chain import GENESIS, entry_hash, message
from metaheal.ledger.index import index_partition
from metaheal.ledger.keys import KeyRegistry, init_operator_key, init_system_keys

pytestmark = pytest.mark.broker


@pytest.fixture
def log(settings: Settings):
    init_system_keys(settings.keys)
    lg = ImmutableLog(settings)
    yield lg
    lg.close()


async def test_append_returns_signed_chained_entry(log: ImmutableLog, settings: Settings) -> None:
    e0 = await log.append(
        actor="meta_loop",
        action="cycle_focus_decided",
        resource="api",
        subsystem="meta",
        payload={"focus": "latency_drift", "confidence": 0.87},
        result="ok",
        cycle_id="c1",
    )
    e1 = await log.append(
        actor="ml_advisors",
        action="advice_provided",
        resource="api",
        subsystem="ml",
        payload={"root_cause": "cache_miss"},
        result="ok",
        cycle_id="c1",
    )
    assert isinstance(e0, LedgerEntry)
    assert (e0.sequence, e1.sequence) == (0, 1)
    assert e0.prev_hash == GENESIS and e1.prev_hash == e0.entry_hash
    assert entry_hash(e1) == e1.entry_hash
    assert json.loads(e0.payload) == {"focus": "latency_drift", "confidence": 0.87}
    reg = KeyRegistry.load(settings.keys)
    assert reg.get(e1.key_id).actor == "ml_advisors"
    assert reg.get(e1.key_id).verify(message(e1), e1.signature)
    assert not reg.get(e1.key_id).verify(message(e0), e1.signature)


async def test_concurrent_appends_keep_one_chain_and_replay_by_cycle(log: ImmutableLog) -> None:
    async def agent(i: int) -> list[LedgerEntry]:
        return [
            await log.append(
                actor="executor",
                action="step_executed",
                resource=f"svc{i}",
                subsystem="agents",
                payload={"step": j},
                result="ok",
                cycle_id=f"cycle-{i % 3}",
            )
            for j in range(5)
        ]

    results = await asyncio.gather(*(agent(i) for i in range(12)))
    entries = sorted((e for r in results for e in r), key=lambda e: e.sequence)
    assert [e.sequence for e in entries] == list(range(60))
    for a, b in itertools.pairwise(entries):
        assert b.prev_hash == a.entry_hash
    replayed = await log.replay_cycle("cycle-1")
    assert [e.sequence for e in replayed] == [e.sequence for e in entries if e.cycle_id == "cycle-1"]
    assert replayed[0].signature == next(e for e in entries if e.cycle_id == "cycle-1").signature
    assert await log.replay_cycle("no-such-cycle") == []


async def test_restart_resumes_from_tail_without_reusing_sequence(settings: Settings) -> None:
    init_system_keys(settings.keys)
    first = ImmutableLog(settings)
    last = None
    for i in range(3):
        last = await first.append(actor="meta_loop", action="directive_issued", payload={"i": i}, cycle_id="c")
    first.close()
    second = ImmutableLog(settings)
    e = await second.append(actor="meta_loop", action="directive_issued", payload={"i": 3}, cycle_id="c")
    assert e.sequence == 3 and e.prev_hash == last.entry_hash
    assert [x.sequence for x in await second.replay_cycle("c")] == [0, 1, 2, 3]
    second.close()


async def test_resume_when_index_tail_is_stale(settings: Settings) -> None:
    """Records appended after the stored tail (index write lost) are found by reading the ledger."""
    init_system_keys(settings.keys)
    first = ImmutableLog(settings)
    await first.append(actor="meta_loop", action="directive_issued", cycle_id="c")
    first._write_index = lambda: None  # type: ignore[method-assign]  # the index write is lost
    await first.append(actor="meta_loop", action="directive_issued", cycle_id="c")
    first.close()
    second = ImmutableLog(settings)
    e = await second.append(actor="meta_loop", action="directive_issued", cycle_id="c")
    assert e.sequence == 2
    assert [x.sequence for x in await second.replay_cycle("c")] == [0, 1, 2]
    second.close()


async def test_signed_outcomes_are_verified_and_filtered(log: ImmutableLog, settings: Settings) -> None:
    await log.append(
        actor="executor",
        action="execution_outcome",
        subsystem="api",
        cycle_id="c1",
        payload={"outcome_id": "o1", "result": "success"},
        result="success",
    )
    await log.append(
        actor="executor",
        action="execution_outcome",
        subsystem="db",
        cycle_id="c2",
        payload={"outcome_id": "o2", "result": "failed"},
        result="failed",
    )
    await log.append(actor="executor", action="step_executed", subsystem="api", cycle_id="c2", payload={})
    all_ = await log.get_signed_outcomes()
    assert [json.loads(e.payload)["outcome_id"] for e in all_] == ["o1", "o2"]
    api = await log.get_signed_outcomes(subsystem="api")
    assert [json.loads(e.payload)["outcome_id"] for e in api] == ["o1"]
    assert [json.loads(e.payload)["outcome_id"] for e in await log.get_signed_outcomes(limit=1)] == ["o2"]


async def test_operator_signs_approval(log: ImmutableLog, settings: Settings) -> None:
    init_operator_key(settings.keys, "alice")
    e = await log.append(actor="operator:alice", action="approval_decided", payload={"plan_id": "p"}, cycle_id="c")
    assert e.actor == "operator:alice"


async def test_unauthorised_action_and_bad_payload_fail_closed(log: ImmutableLog) -> None:
    with pytest.raises(LedgerUnavailable, match="may not sign 'execution_outcome'"):
        await log.append(actor="ml_advisors", action="execution_outcome", cycle_id="c")
    with pytest.raises(LedgerUnavailable, match=r"payload: \$\.x: NaN"):
        await log.append(actor="executor", action="step_executed", payload={"x": float("nan")}, cycle_id="c")
    with pytest.raises(LedgerUnavailable, match="resource: must be a string, got int"):
        await log.append(actor="executor", action="step_executed", resource=3, cycle_id="c")  # type: ignore[arg-type]
    with pytest.raises(LedgerUnavailable, match="cut by the sequencer"):
        await log.append(actor="ledger", action="checkpoint", cycle_id="c")
    with pytest.raises(LedgerUnavailable, match="cycle_id: required"):
        await log.append(actor="executor", action="step_executed")
    # a failed append does not consume a sequence
    e = await log.append(actor="executor", action="step_executed", cycle_id="c")
    assert e.sequence == 0


async def test_missing_key_fails_closed(settings: Settings) -> None:
    log = ImmutableLog(settings)  # no keys created
    with pytest.raises(LedgerUnavailable, match="no valid signing key for actor 'executor'"):
        await log.append(actor="executor", action="execution_started", cycle_id="c")
    ids = init_system_keys(settings.keys)
    (Path(settings.keys) / f"{ids['executor']}.key").unlink()  # the private key file disappears
    with pytest.raises(LedgerUnavailable, match=r"private key for actor 'executor' .* missing"):
        await log.append(actor="executor", action="execution_started", cycle_id="c")
    log.close()


async def test_broker_down_fails_closed(tmp_path: Path) -> None:
    settings = Settings(kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"), keys=tmp_path / "k")
    settings.ledger.append_timeout_seconds = 2.0
    init_system_keys(settings.keys)
    log = ImmutableLog(settings)
    with pytest.raises(LedgerUnavailable) as info:
        await log.append(actor="executor", action="execution_started", cycle_id="c")
    assert isinstance(info.value, KafkaUnavailable)
    log.close()


async def test_checkpoints_by_count_and_by_time(settings: Settings) -> None:
    from metaheal.ledger.verify import verify_ledger

    init_system_keys(settings.keys)
    settings.ledger.checkpoint_every_entries = 3
    log = ImmutableLog(settings)
    for i in range(7):
        await log.append(actor="executor", action="step_executed", payload={"i": i}, cycle_id="c")
    settings.ledger.checkpoint_every_entries = 1000
    settings.ledger.checkpoint_every_seconds = 0.001  # time-based: due at the next append
    log.close()
    log = ImmutableLog(settings)
    await log.append(actor="executor", action="step_executed", payload={"i": 7}, cycle_id="c")
    cps = await log.replay_cycle("checkpoints")
    log.close()
    assert [json.loads(c.payload)["size"] for c in cps] == [3, 7, 10]
    report = verify_ledger(settings)
    assert report.clean and report.checkpoints == 3


async def test_lost_index_is_rebuilt_from_the_ledger(settings: Settings) -> None:
    from metaheal.kafka import Producer

    init_system_keys(settings.keys)
    first = ImmutableLog(settings)
    for i in range(6):
        await first.append(actor="executor", action="step_executed", payload={"i": i}, cycle_id=f"c{i % 2}")
    first.close()
    # the index is lost or damaged: its records are tombstoned or overwritten with garbage
    p = Producer(settings.kafka)
    parts = PartitionReader(settings.kafka).partitions(settings.topics.name("ledger-index"))
    assert parts > 1  # cycles are spread over the index partitions; 0 holds the tail
    for key in ("c0", "c1", "__tail__"):
        where = 0 if key == "__tail__" else index_partition(key, parts)
        p.produce(settings.topics.name("ledger-index"), b"not json" if key == "c0" else None, key=key, partition=where)
    p.flush()
    second = ImmutableLog(settings)
    assert [e.sequence for e in await second.replay_cycle("c0")] == [0, 2, 4]
    e = await second.append(actor="executor", action="step_executed", cycle_id="c1")
    assert e.sequence == 6
    assert [x.sequence for x in await second.replay_cycle("c1")] == [1, 3, 5, 6]
    second.close()


async def test_fresh_reader_loads_only_the_cycles_index_partition(settings: Settings) -> None:
    init_system_keys(settings.keys)
    writer = ImmutableLog(settings)
    for i in range(40):
        await writer.append(actor="executor", action="step_executed", payload={"i": i}, cycle_id=f"c{i % 10}")
    index_topic = settings.topics.name("ledger-index")
    reader = PartitionReader(settings.kafka)
    parts = reader.partitions(index_topic)
    stored: dict[int, set[str]] = {}
    for p in range(parts):
        for m in reader.read(index_topic, partition=p):
            stored.setdefault(p, set()).add(m.key().decode())
    reader.close()
    assert stored[0] <= {"__tail__", "__lease__"}  # partition 0: lease and tail only
    for c in (f"c{k}" for k in range(10)):
        assert c in stored[index_partition(c, parts)]
    assert len({index_partition(f"c{k}", parts) for k in range(10)}) > 3  # really spread

    fresh = ImmutableLog(settings)
    got = await fresh.replay_cycle("c3")
    assert [e.sequence for e in got] == [3, 13, 23, 33]
    assert set(fresh._index_pos) == {0, index_partition("c3", parts)}  # not the whole index
    # the writer appends more (to a cycle whose partition the fresh reader has and one it has not loaded)
    await writer.append(actor="executor", action="step_executed", cycle_id="c3")
    await writer.append(actor="executor", action="step_executed", cycle_id="c4")
    assert [e.sequence for e in await fresh.replay_cycle("c3")] == [3, 13, 23, 33, 40]
    assert [e.sequence for e in await fresh.replay_cycle("c4")] == [4, 14, 24, 34, 41]
    outcomes = await fresh.get_signed_outcomes()  # needs the whole index: loads every partition
    assert outcomes == [] and set(fresh._index_pos) == set(range(parts))
    writer.close()
    fresh.close()


async def test_fresh_reader_finds_entries_the_stored_index_lacks(settings: Settings) -> None:
    """Entries after the stored tail (index write lost) come from the ledger itself."""
    from metaheal.kafka import Producer

    init_system_keys(settings.keys)
    first = ImmutableLog(settings)
    for i in range(4):
        await first.append(actor="executor", action="step_executed", payload={"i": i}, cycle_id="late")
    first.close()
    p = Producer(settings.kafka)  # the newest index records are lost: tail and cycle record tombstoned
    parts = PartitionReader(settings.kafka).partitions(settings.topics.name("ledger-index"))
    p.produce(settings.topics.name("ledger-index"), None, key="__tail__", partition=0)
    p.produce(settings.topics.name("ledger-index"), None, key="late", partition=index_partition("late", parts))
    p.flush()
    fresh = ImmutableLog(settings)
    assert [e.sequence for e in await fresh.replay_cycle("late")] == [0, 1, 2, 3]
    fresh.close()
