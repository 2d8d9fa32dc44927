"""Several writers (clients, and a real second process) share one ledger through the writer lease."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from metaheal.config import Settings
from metaheal.ledger import ImmutableLog, LedgerUnavailable
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.verify import verify_ledger

pytestmark = pytest.mark.broker


async def test_two_writers_take_turns_without_forking(settings: Settings) -> None:
    init_system_keys(settings.keys)
    settings.ledger.lease_idle_release_seconds = 0.1
    a, b = ImmutableLog(settings), ImmutableLog(settings)
    try:
        for log in (a, b, a, b):
            for _ in range(3):
                await log.append(actor="executor", action="step_executed", cycle_id="c", payload={})
        assert [e.sequence for e in await a.replay_cycle("c")] == list(range(12))
    finally:
        a.close()
        b.close()
    report = verify_ledger(settings)
    assert report.clean, [str(f) for f in report.findings]
    assert report.entries == 12


async def test_writer_fails_closed_while_another_holds_the_lease(settings: Settings) -> None:
    init_system_keys(settings.keys)
    settings.ledger.lease_idle_release_seconds = 60
    settings.ledger.writer_lease_seconds = 30
    a = ImmutableLog(settings)
    b = ImmutableLog(settings, timeout=1.0)
    try:
        await a.append(actor="executor", action="step_executed", cycle_id="c")
        with pytest.raises(LedgerUnavailable, match=r"lease held by .* \(another process\)"):
            await b.append(actor="executor", action="step_executed", cycle_id="c")
        a.close()  # closing releases the lease at once
        e = await b.append(actor="executor", action="step_executed", cycle_id="c")
        assert e.sequence == 1
    finally:
        a.close()
        b.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from metaheal.config import KafkaSettings, Settings, TopicSettings
    from metaheal.ledger import ImmutableLog

    async def main():
        s = Settings(kafka=KafkaSettings(bootstrap=sys.argv[1]), topics=TopicSettings(prefix=sys.argv[2]),
                     keys=Path(sys.argv[3]))
        s.ledger.lease_idle_release_seconds = 0.05
        s.ledger.append_timeout_seconds = 30
        log = ImmutableLog(s)
        for i in range(int(sys.argv[4])):
            await log.append(actor="ml_advisors", action="advice_provided", cycle_id=f"child-{i % 3}", payload={"i": i})
            await asyncio.sleep(0.01)
        log.close()

    asyncio.run(main())
    """
)


async def test_second_process_appends_concurrently(settings: Settings) -> None:
    init_system_keys(settings.keys)
    settings.ledger.lease_idle_release_seconds = 0.05
    settings.ledger.append_timeout_seconds = 30
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, settings.kafka.bootstrap, settings.topics.prefix, str(settings.keys), "15"],
        stderr=subprocess.PIPE,
    )
    log = ImmutableLog(settings)
    try:
        for i in range(15):
            await log.append(actor="executor", action="step_executed", cycle_id=f"parent-{i % 3}", payload={"i": i})
            await asyncio.sleep(0.01)
    finally:
        log.close()
    _, err = await asyncio.to_thread(child.communicate, timeout=120)
    assert child.returncode == 0, err.decode()[-2000:]
    report = verify_ledger(settings)
    assert report.clean, [str(f) for f in report.findings]
    assert report.entries == 30 and report.last_sequence == 29
