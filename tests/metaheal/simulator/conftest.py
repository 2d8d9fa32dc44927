from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from metaheal.simulator.admin_api import AdminServers
from metaheal.simulator.fleet import Fleet


class ManualClock:
    """A clock the test moves: the fleet's closed-form model makes this exact."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fleet(clock: ManualClock) -> Fleet:
    return Fleet(
        seed=7,
        clock=clock,
        day_amplitude=0.0,
        ready_delay=5.0,
        restart_seconds=4.0,
        warm_seconds=2.0,
        switch_seconds=1.0,
    )


@pytest.fixture
async def admin(fleet: Fleet) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Real HTTP: one admin server per service on free ports, one client per service."""
    servers = AdminServers(fleet)
    urls = await servers.start()
    clients = {name: httpx.AsyncClient(base_url=url, timeout=5.0) for name, url in urls.items()}
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.aclose()
        await servers.stop()
