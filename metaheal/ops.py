"""What ``metaheal up`` runs beside the components: the event watcher, webhooks, the metrics endpoints.

:class:`Operations` is started before the components (so the streams worker inherits the
multiprocess metrics folder) and stopped after them. Readiness (``/readyz``) means: the
components were started and none has stopped, the streams worker (when it is a role here)
reported itself within :attr:`Operations.HEARTBEAT_SECONDS`, and the broker answers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from metaheal.config import Settings
from metaheal.kafka import KafkaUnavailable
from metaheal.kafka.admin import Admin
from metaheal.notify import Notifier
from metaheal.observability import (
    MULTIPROC_ENV,
    REGISTRY,
    MetricsServer,
    merged_families,
    prepare_multiproc_dir,
)
from metaheal.watch import EventWatcher

logger = logging.getLogger(__name__)


class Operations:
    HEARTBEAT_SECONDS = 20.0

    def __init__(
        self,
        settings: Settings,
        roles: list[str],
        *,
        workdir: Path,
        metrics_port: int | None,
        config_path: str | None = None,
    ) -> None:
        self.settings, self.roles, self.config_path = settings, roles, config_path
        self.metrics_port = metrics_port
        self.multiproc_dir: Path | None = None
        self.server: MetricsServer | None = None
        self.notifier: Notifier | None = None
        self.watcher: EventWatcher | None = None
        self.components: list[Any] = []
        self.running = False
        self.stopped_roles: set[str] = set()
        if metrics_port is not None:
            self.multiproc_dir = prepare_multiproc_dir(workdir / "metrics")
            os.environ[MULTIPROC_ENV] = str(self.multiproc_dir)  # inherited by the streams worker process

    def start(self) -> Operations:
        if self.settings.notifications.webhooks:
            self.notifier = Notifier(self.settings, config_path=self.config_path).start()
        if self.metrics_port is not None or self.notifier is not None:
            listeners = [self.notifier.notice] if self.notifier is not None else []
            self.watcher = EventWatcher(self.settings, self.roles, listeners).start()
        if self.metrics_port is not None:
            self.server = MetricsServer(
                self.metrics_port,
                host=self.settings.observability.metrics_host,
                multiproc_dir=self.multiproc_dir,
                ready=self.waiting,
            ).start()
        return self

    def started(self, components: list[Any]) -> None:
        self.components, self.running = list(components), True

    def stop(self) -> None:
        self.running = False
        if self.watcher is not None:
            self.watcher.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.server is not None:
            self.server.stop()

    def waiting(self) -> dict[str, str]:
        """What is not ready yet, role -> why (empty: ready)."""
        out: dict[str, str] = {}
        if not self.running:
            out["runtime"] = "components not running"
        for c in self.components:
            code = getattr(c.service, "returncode", None)
            if code is not None:
                out[c.role] = f"process exited with code {code}"
        if "streams" in {c.role for c in self.components}:
            beat = self._streams_heartbeat()
            if beat is None or time.time() - beat > self.HEARTBEAT_SECONDS:
                out["streams"] = "no heartbeat from the streams worker" + (
                    f" for {time.time() - beat:.0f}s" if beat else " yet"
                )
        try:
            Admin(self.settings.kafka, timeout=2.0).wait_ready(2.0)
        except KafkaUnavailable as exc:
            out["broker"] = str(exc)
        return out

    def _streams_heartbeat(self) -> float | None:
        for fam in merged_families(REGISTRY, self.multiproc_dir):
            if fam.name == "metaheal_streams_heartbeat_timestamp_seconds":
                values = [s.value for s in fam.samples]
                return max(values) if values and max(values) > 0 else None
        return None
