"""Executor test fixtures. FakeService: a real HTTP service under control that also emits its own telemetry.

Used by the executor tests and benchmarks/bench_executor.py: it listens on a free
port (aiohttp), counts every request, can hang or fail named endpoints, and
publishes ``instances``, ``ready_instances``, ``latency_p95_ms`` and ``error_rate``
samples to ``<prefix>telemetry`` from its own state, the way a real service's
exporter would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from metaheal.agents.executor.recovery import CRASH_ENV
from metaheal.agents.executor.service import Executor
from metaheal.broker import free_port
from metaheal.config import OperatorSettings, ServiceSettings, Settings
from metaheal.events import Directive, Metric
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.keys import init_operator_key, init_system_keys
from metaheal.ledger.signing import RecordSigner


@dataclass
class FakeService:
    name: str = "api"
    instances: int = 3
    latency_ms: float = 350.0
    latency_after_fix: float = 120.0
    fixed: bool = False
    error_rate: float = 0.01
    healthy: bool = True
    hang: set[str] = field(default_factory=set)
    fail: set[str] = field(default_factory=set)
    #: endpoints that apply a keyed request and then hang (the effect happens, the answer is lost)
    hang_after: set[str] = field(default_factory=set)
    calls: Counter = field(default_factory=Counter)
    log: list[tuple[str, dict]] = field(default_factory=list)
    port: int = 0
    emit_telemetry: bool = True
    #: Accept scale requests without changing the instance count (a stuck autoscaler).
    stuck: bool = False
    called: asyncio.Event = field(default_factory=asyncio.Event)
    #: Requests (``"POST /flags/rollback"``) after which the service's metrics agent dies: telemetry stops.
    mute_on: set[str] = field(default_factory=set)
    muted: bool = False
    #: calls per Idempotency-Key, and the response each key got first (a repeat is not applied)
    keys: Counter = field(default_factory=Counter)
    answered: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        key = f"{request.method} {path}"
        body = await request.json() if request.can_read_body else {}
        self.calls[key] += 1
        ikey = request.headers.get("Idempotency-Key")
        self.log.append((key, {**body, "idempotency_key": ikey} if ikey else body))
        self.called.set()
        if key in self.mute_on:
            self.muted = True
        if ikey is not None:
            self.keys[ikey] += 1
        if key in self.hang:
            await asyncio.sleep(3600)
        if ikey is None:
            return await self._apply(key, path, body)
        if ikey not in self.answered:  # like a real idempotent API: a repeat gets the first answer
            first = await self._apply(key, path, body)
            self.answered[ikey] = (first.status, first.body)
            if key in self.hang_after:  # applied, but the caller never hears back
                await asyncio.sleep(3600)
        status, raw = self.answered[ikey]
        return web.Response(status=status, body=raw, content_type="application/json")

    async def _apply(self, key: str, path: str, body: dict) -> web.Response:
        if key in self.fail:
            return web.json_response({"error": "injected failure"}, status=500)
        if path == "/capacity":
            return web.json_response({"instances": self.instances, "ready_instances": self.instances})
        if path == "/scale":
            if not self.stuck:
                self.instances += int(body.get("delta", 0))
            self.fixed = int(body.get("delta", 0)) > 0
            return web.json_response({"instances": self.instances})
        if path in ("/restart", "/cache/warm"):
            self.fixed = True
            return web.json_response({"ok": True})
        if path == "/flags/rollback":
            self.fixed = True
            return web.json_response({"ok": True, "rolled_back": ["new_checkout"]})
        if path == "/flags/restore":
            self.fixed = False
            return web.json_response({"ok": True})
        if path in ("/failover", "/failback"):
            self.fixed = path == "/failover"
            return web.json_response({"ok": True})
        if path == "/health":
            if self.healthy:
                return web.json_response({"status": "ok"})
            return web.json_response({"status": "degraded", "reasons": ["injected"]}, status=503)
        return web.json_response({"error": "not found"}, status=404)

    async def _emit(self, settings: Settings, stop: asyncio.Event) -> None:
        producer = Producer(settings.kafka)
        ser = AvroSerializer(Metric)
        topic = settings.topics.name("telemetry")
        while not stop.is_set():
            if self.muted:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
                continue
            now = time.time()
            latency = self.latency_after_fix if self.fixed else self.latency_ms
            for metric, value in (
                ("instances", self.instances),
                ("ready_instances", self.instances),
                ("latency_p95_ms", latency),
                ("error_rate", self.error_rate),
            ):
                producer.produce(
                    topic, ser(Metric(service=self.name, metric=metric, value=float(value), ts=now)), key=self.name
                )
            await asyncio.to_thread(producer.flush, 5.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    @contextlib.asynccontextmanager
    async def running(self, settings: Settings):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        self.port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        stop = asyncio.Event()
        emitter = asyncio.create_task(self._emit(settings, stop)) if self.emit_telemetry else None
        try:
            yield self
        finally:
            stop.set()
            if emitter is not None:
                await emitter
            await runner.cleanup()


DEFAULT_PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"


def fast_playbooks(folder: Path) -> Path:
    """The default playbooks with test-sized windows and timeouts (same steps, same rollbacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in DEFAULT_PLAYBOOKS.glob("*.yaml"):
        text = src.read_text().replace("within: 60", "within: 2").replace("timeout: 60", "timeout: 5")
        text = text.replace("timeout: 30", "timeout: 2")
        (folder / src.name).write_text(text)
    return folder


def write_config(settings: Settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def spawn_executor(settings: Settings, tmp_path: Path, *, crash: str | None = None) -> subprocess.Popen:
    """The executor as its own process, logging to ``tmp_path/executor.log``. With ``crash``, it kills
    itself at that crash point (``CRASH_ENV``), in a process group of its own."""
    cfg = write_config(settings, tmp_path / "metaheal.yaml")
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    if crash is not None:
        env_vars[CRASH_ENV] = crash
    with open(tmp_path / "executor.log", "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "metaheal.agents.executor.service", "--config", str(cfg)],
            env=env_vars,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=crash is not None,
        )


def signed_headers(settings: Settings, d: Directive, key: str) -> dict[str, bytes]:
    """The headers the meta loop would send a directive with."""
    return RecordSigner(settings.keys, "meta_loop").sign(
        "directive", AvroSerializer(Directive)(d), key=key, record_id=d.directive_id
    )


def send_directive(settings: Settings, d: Directive, key: str = "api") -> None:
    """Publish ``d`` on the directives topic as the meta loop would: signed with its key."""
    with Producer(settings.kafka) as p:
        p.send(
            settings.topics.name("directives"),
            AvroSerializer(Directive)(d),
            key=key,
            headers=signed_headers(settings, d, key),
        )


@pytest.fixture
async def env(topics: Settings, tmp_path: Path):
    init_system_keys(topics.keys)
    alice_key, alice_pub = init_operator_key(topics.keys, "alice")
    _, bob_pub = init_operator_key(topics.keys, "bob")
    svc = FakeService()
    async with svc.running(topics):
        topics.services = [ServiceSettings(name="api", admin_url=svc.url, dependencies=["db"])]
        topics.operators = [
            OperatorSettings(name="alice", public_key=alice_pub, services=["api"]),
            OperatorSettings(name="bob", public_key=bob_pub, services=["db"]),
        ]
        topics.playbooks = fast_playbooks(tmp_path / "playbooks")
        topics.executor.approval_expiry_seconds = 30
        yield topics, svc, alice_key


@pytest.fixture
async def executor(env):
    settings, _, _ = env
    ex = Executor(settings)
    await ex.start()
    yield ex
    await ex.close()
