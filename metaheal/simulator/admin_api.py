"""The admin HTTP API of one simulated service.

The default playbooks act through these endpoints exactly as they would on a real
deployment, so the executor's HTTP actuator is exercised end to end. Bad requests get
a 400 naming the field; an action never half-applies.

Endpoints: ``GET /capacity``, ``POST /scale {"delta": int}``, ``POST /restart``,
``POST /cache/warm``, ``POST /flags/rollback {"flag": str|null}``,
``POST /flags/restore {"flag": str|null}``, ``POST /failover {"dependency": str}``,
``POST /failback {"dependency": str}``, ``GET /health`` (200 ok / 503 degraded),
``GET /idempotency`` (how often each ``Idempotency-Key`` was received).

A POST carrying an ``Idempotency-Key`` header is applied once: a repeat with the same
key gets the first call's response back (header ``Idempotent-Replayed: true``) without
acting again, and a key reused for another endpoint is a 422. Calls are counted per
key so a test can tell a re-send from a repeated action.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from metaheal.broker import free_port
from metaheal.errors import BadRequest
from metaheal.simulator.fleet import Fleet

logger = logging.getLogger(__name__)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"body: must be a JSON object, got {type(doc).__name__}")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in doc or doc[name] is None:
        if required:
            raise BadRequest(f"{name}: field required")
        return None
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRequest(f"{name}: expected {expected}, got {value!r}")
    return value


IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass
class _Stored:
    path: str
    status: int
    body: bytes
    content_type: str


@dataclass
class IdempotencyKeys:
    """Responses by ``Idempotency-Key`` (a repeat is answered from here, not applied) and call counts."""

    responses: dict[str, _Stored] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def handle(self, key: str, request: web.Request, handler: Any, service: str) -> web.StreamResponse:
        self.calls[key] += 1
        async with self.lock:  # a concurrent repeat waits for the first call's response
            stored = self.responses.get(key)
            if stored is None:
                resp = await handler(request)
                if isinstance(resp, web.Response) and resp.status < 500:  # a 5xx may be retried for real
                    body = resp.body if isinstance(resp.body, bytes) else b""
                    self.responses[key] = _Stored(request.path, resp.status, body, resp.content_type)
                return resp
        if stored.path != request.path:
            return web.json_response(
                {"error": f"Idempotency-Key {key!r} was used for {stored.path}, not {request.path}"}, status=422
            )
        logger.info(
            "admin idempotent_replay service=%s path=%s key=%s calls=%d", service, request.path, key, self.calls[key]
        )
        return web.Response(
            status=stored.status,
            body=stored.body,
            content_type=stored.content_type,
            headers={"Idempotent-Replayed": "true"},
        )


def build_app(fleet: Fleet, service: str) -> web.Application:
    """An aiohttp application serving ``service``'s admin API on ``fleet``."""
    fleet.state(service)  # unknown service: KeyError now, not on the first request
    routes = web.RouteTableDef()

    @routes.get("/capacity")
    async def capacity(_: web.Request) -> web.Response:
        return web.json_response(fleet.capacity(service))

    @routes.post("/scale")
    async def scale(request: web.Request) -> web.Response:
        delta = _field(await _body(request), "delta", int)
        return web.json_response({"instances": fleet.scale(service, delta)})

    @routes.post("/restart")
    async def restart(_: web.Request) -> web.Response:
        fleet.restart(service)
        return web.json_response({"ok": True})

    @routes.post("/cache/warm")
    async def warm(_: web.Request) -> web.Response:
        fleet.warm_cache(service)
        return web.json_response({"ok": True})

    @routes.post("/flags/rollback")
    async def rollback(request: web.Request) -> web.Response:
        flag = _field(await _body(request), "flag", str, required=False)
        return web.json_response({"ok": True, "rolled_back": fleet.rollback_flags(service, flag)})

    @routes.post("/flags/restore")
    async def restore(request: web.Request) -> web.Response:
        flag = _field(await _body(request), "flag", str, required=False)
        return web.json_response({"ok": True, "restored": fleet.restore_flags(service, flag)})

    @routes.post("/failover")
    async def failover(request: web.Request) -> web.Response:
        dep = _field(await _body(request), "dependency", str)
        try:
            fleet.failover(service, dep)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return web.json_response({"ok": True})

    @routes.post("/failback")
    async def failback(request: web.Request) -> web.Response:
        dep = _field(await _body(request), "dependency", str)
        try:
            fleet.failback(service, dep)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return web.json_response({"ok": True})

    @routes.get("/health")
    async def health(_: web.Request) -> web.Response:
        reasons = fleet.health(service)
        if reasons:
            return web.json_response({"status": "degraded", "reasons": reasons}, status=503)
        return web.json_response({"status": "ok"})

    keys = IdempotencyKeys()

    @routes.get("/idempotency")
    async def idempotency(_: web.Request) -> web.Response:
        return web.json_response({"calls": dict(keys.calls), "applied": sorted(keys.responses)})

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            logger.warning("admin bad_request service=%s path=%s error=%s", service, request.path, exc)
            return web.json_response({"error": str(exc)}, status=400)

    @web.middleware
    async def idempotent(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if request.method != "POST" or not key:
            return await handler(request)
        return await keys.handle(key, request, handler, service)

    app = web.Application(middlewares=[idempotent, errors])
    app.add_routes(routes)
    return app


class AdminServers:
    """One admin server per service on free localhost ports; ``urls`` maps service -> base URL."""

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1") -> None:
        self.fleet = fleet
        self.host = host
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> dict[str, str]:
        for name in self.fleet.services:
            runner = web.AppRunner(build_app(self.fleet, name), access_log=None)
            await runner.setup()
            port = free_port(self.host)
            await web.TCPSite(runner, self.host, port).start()
            self._runners.append(runner)
            self.urls[name] = f"http://{self.host}:{port}"
            logger.info("admin api started service=%s url=%s", name, self.urls[name])
        return dict(self.urls)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> AdminServers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
