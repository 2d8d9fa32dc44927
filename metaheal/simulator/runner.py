"""The simulator as a long-running service: fleet + admin APIs + probes + telemetry ticks.

``Simulator.run(stop)`` follows the component contract (returns promptly once
``stop`` is set). ``services_config()`` gives the ``services:`` section other
components need (admin URLs on the free ports actually used). ``run`` also registers
those services on ``<prefix>services`` (and deregisters them when it stops: the admin
URLs die with it), so a ``metaheal up`` started before or after the simulator heals it
without anyone copying URLs into ``metaheal.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from metaheal.config import ServiceSettings, Settings
from metaheal.kafka import KafkaUnavailable
from metaheal.ledger.keys import init_system_keys
from metaheal.registry import RegistryPublisher, registered_by, registration
from metaheal.simulator.admin_api import AdminServers
from metaheal.simulator.faults import Fault, scenario_faults
from metaheal.simulator.fleet import Fleet
from metaheal.simulator.probes import ProbeListener
from metaheal.simulator.publisher import TelemetryPublisher

logger = logging.getLogger(__name__)


class Simulator:
    """Runs a :class:`Fleet`, publishing a tick of telemetry every ``interval`` seconds.

    ``scenario`` is injected ``at`` seconds after start; ``duration`` (seconds) ends the
    run by itself, ``None`` runs until ``stop``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fleet: Fleet | None = None,
        seed: int = 0,
        interval: float = 1.0,
        scenario: str | None = None,
        at: float = 0.0,
        duration: float | None = None,
        host: str = "127.0.0.1",
        probes: bool = True,
        register: bool = True,
        **fleet_options: Any,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be > 0, got {interval}")
        self.settings = settings
        self.fleet = fleet or Fleet(seed=seed, **fleet_options)
        self.interval = interval
        self.pending_scenario = scenario
        if scenario is not None:
            for f in scenario_faults(scenario):  # unknown name: error now, not in the middle of the run
                if f.hide:  # telemetry this fleet does not have, from the start
                    self.fleet.hidden.setdefault(f.target, set()).update(f.hide)
        self.at = at
        self.duration = duration
        self.admin = AdminServers(self.fleet, host)
        self.probes = ProbeListener(settings, self.fleet) if probes else None
        self.register = register
        self.registered: list[str] = []
        self.ready = asyncio.Event()
        self.ticks = 0
        self.injected: list[Fault] = []

    async def start(self) -> dict[str, str]:
        """Start the admin servers (idempotent); returns service -> admin URL."""
        if not self.admin.urls:
            await self.admin.start()
        self.ready.set()
        return dict(self.admin.urls)

    def services_config(self) -> list[ServiceSettings]:
        """The ``services:`` section for Settings, with this run's admin URLs."""
        return [
            ServiceSettings(
                name=name,
                admin_url=self.admin.urls.get(name),
                dependencies=sorted(st.spec.calls),
                criticality=st.spec.criticality,
                owner=st.spec.owner,
            )
            for name, st in self.fleet.services.items()
        ]

    async def announce(self) -> list[str]:
        """Register every service (admin URL, dependencies, criticality, owner); returns the names."""
        by = registered_by("metaheal simulate")
        regs = [registration(s, by) for s in self.services_config()]
        # registrations are signed with the control plane's registrar key (the same keys folder as `metaheal up`)
        await asyncio.to_thread(init_system_keys, self.settings.keys)
        publisher = RegistryPublisher(self.settings)
        try:
            await asyncio.to_thread(publisher.register, regs)
        finally:
            publisher.close()
        self.registered = [r.name for r in regs]
        logger.info("services registered topic=%s names=%s", publisher.topic, ",".join(self.registered))
        return self.registered

    async def withdraw(self) -> None:
        """Deregister what :meth:`announce` registered (a tombstone per name); errors are logged, not raised."""
        if not self.registered:
            return
        publisher = RegistryPublisher(self.settings)
        try:
            await asyncio.to_thread(publisher.deregister, self.registered)
            logger.info("services deregistered names=%s", ",".join(self.registered))
            self.registered = []
        except KafkaUnavailable as exc:
            logger.warning("services deregistration failed error=%s", exc)
        finally:
            publisher.close()

    def inject(self, scenario: str) -> list[Fault]:
        faults = scenario_faults(scenario)
        now = self.fleet.now()
        for f in faults:
            self.fleet.inject(f, now=now)
        self.injected.extend(faults)
        logger.info("scenario injected name=%s faults=%s", scenario, ",".join(f.name for f in faults))
        return faults

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        if self.register:
            try:
                await self.announce()
            except BaseException:
                await self.admin.stop()  # no admin server left listening for a fleet that never ran
                raise
        publisher = TelemetryPublisher(self.settings.kafka, self.settings.topics.name("telemetry"))
        probes_stop = asyncio.Event()
        probe_task = asyncio.create_task(self.probes.run(probes_stop)) if self.probes else None
        started = time.monotonic()
        next_tick = started
        logger.info(
            "simulator started services=%d interval=%.2f scenario=%s at=%.1f",
            len(self.fleet.services),
            self.interval,
            self.pending_scenario,
            self.at,
        )
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if self.duration is not None and elapsed >= self.duration:
                    break
                if self.pending_scenario is not None and elapsed >= self.at:
                    self.inject(self.pending_scenario)
                    self.pending_scenario = None
                await publisher.publish_async(self.fleet.sample())
                self.ticks += 1
                next_tick += self.interval
                delay = max(0.0, next_tick - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            probes_stop.set()
            if probe_task is not None:
                await probe_task
            await asyncio.to_thread(publisher.close)
            await self.withdraw()
            await self.admin.stop()
            logger.info(
                "simulator stopped ticks=%d batches=%d samples=%d", self.ticks, publisher.batches, publisher.samples
            )
