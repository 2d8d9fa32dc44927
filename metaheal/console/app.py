"""The console's web app: server-rendered pages, live updates over server-sent events, browser-signed decisions.

Pages (each also served as a bare fragment with the ``X-Fragment: 1`` header, which
the page's script fetches again whenever the event stream says one of its topics
changed): ``/`` overview, ``/cycles`` and ``/cycles/<cycle_id>``, ``/approvals``,
``/outcomes``. ``/events`` is the event stream; ``POST /api/decisions`` takes an
approval decision signed in the browser (see :mod:`metaheal.console.decisions`).

Access: with a token configured every request needs it (``Authorization: Bearer``,
or the cookie set by opening any page once with ``?token=...``); the decision
endpoint also refuses cross-site requests (an ``Origin`` other than the console's
own, ``Sec-Fetch-Site`` other than ``same-origin``, or a body that is not JSON).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from metaheal.config import Settings
from metaheal.console.decisions import DecisionRefused, check_decision
from metaheal.console.feed import Broadcaster
from metaheal.console.view import FleetView
from metaheal.events import ApprovalDecision, ApprovalRequest, LedgerEntry
from metaheal.kafka import KafkaUnavailable, Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.chain import entry_hash, verify_signature
from metaheal.ledger.keys import KeyRegistry, key_id_of
from metaheal.ledger.provenance import explain_lines

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "metaheal_console_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
#: the topics whose changes re-render each page
PAGE_TOPICS = {
    "overview": ["services", "health", "anomalies", "cycles", "probes", "control", "approvals", "outcomes"],
    "cycles": ["cycles", "directives", "plans", "approvals", "outcomes"],
    "cycle": ["cycles", "advice", "directives", "plans", "approvals", "outcomes", "ledger"],
    "approvals": ["approvals", "plans", "directives", "advice"],
    "outcomes": ["outcomes", "ledger"],
}


# --- formatting ------------------------------------------------------------------------------------


def fmt_ts(ts: float | None) -> str:
    """UTC wall clock of an epoch time.

    >>> fmt_ts(0.0)
    '1970-01-01 00:00:00Z'
    """
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def sparkline(values: list[float], width: int = 120, height: int = 24) -> str:
    """SVG polyline points for ``values`` scaled into ``width`` x ``height``.

    >>> sparkline([1.0, 2.0, 3.0], 10, 10)
    '0.0,9.0 5.0,5.0 10.0,1.0'
    """
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    step = width / max(1, len(values) - 1)
    pad = 1.0
    return " ".join(
        f"{i * step:.1f},{height - pad - (v - lo) / span * (height - 2 * pad):.1f}" for i, v in enumerate(values)
    )


def fmt_num(v: Any) -> str:
    """
    >>> fmt_num(0.123456), fmt_num(1234.5), fmt_num(None)
    ('0.1235', '1234.5', '-')
    """
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(ts=fmt_ts, sparkline=sparkline, num=fmt_num, pretty_json=pretty_json)
    env.filters["loads"] = json.loads
    return env


# --- access control ----------------------------------------------------------------------------------


class TokenAuth:
    """Bearer token (header or cookie) on every request when a token is configured."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and request.method == "GET" and hmac.compare_digest(given, self.token):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            resp: Response = RedirectResponse(target, status_code=303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await resp(scope, receive, send)
            return
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        cookie = request.cookies.get(COOKIE)
        if any(v is not None and hmac.compare_digest(v, self.token) for v in (bearer, cookie)):
            await self.app(scope, receive, send)
            return
        resp = PlainTextResponse(
            "401: this console needs its token: open it once as /?token=TOKEN, or send Authorization: Bearer TOKEN\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await resp(scope, receive, send)


def cross_site_problem(request: Request) -> str | None:
    """Why a state-changing request is refused as cross-site (None: same origin)."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is None:
        return "no Origin header: decisions are accepted only from the console's own page"
    if origin != own:
        return f"cross-site request refused: Origin {origin} is not {own}"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"cross-site request refused: Sec-Fetch-Site is {site}"
    if not request.headers.get("content-type", "").startswith("application/json"):
        return "the decision must be sent as application/json"
    return None


# --- the app ----------------------------------------------------------------------------------------


class Console:
    """Holds the view, the fan-out and the producer; builds the Starlette app."""

    def __init__(self, settings: Settings, view: FleetView, *, token: str | None = None, host: str = "127.0.0.1"):
        self.settings = settings
        self.view = view
        self.token = token
        self.host = host
        self.broadcaster: Broadcaster | None = None
        self.env = _env()
        self._producer: Producer | None = None
        self._closing = asyncio.Event()
        self._ser = AvroSerializer(ApprovalDecision)

    # -- lifecycle

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> Broadcaster:
        self.broadcaster = Broadcaster(loop)
        return self.broadcaster

    def notify(self, topic: str) -> None:
        if self.broadcaster is not None:
            self.broadcaster.notify(topic)

    def close(self) -> None:
        self._closing.set()
        if self.broadcaster is not None:
            self.broadcaster.close()
        if self._producer is not None:
            self._producer.close(5.0)
            self._producer = None

    def app(self) -> Starlette:
        routes = [
            Route("/", self.overview),
            Route("/cycles", self.cycles),
            Route("/cycles/{cycle_id:str}", self.cycle),
            Route("/approvals", self.approvals),
            Route("/outcomes", self.outcomes),
            Route("/events", self.events),
            Route("/api/decisions", self.decide, methods=["POST"]),
            Route("/api/state", self.state),
            Route("/healthz", lambda r: PlainTextResponse("ok\n")),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        hosts = LOOPBACK_HOSTS if self.host in ("127.0.0.1", "localhost", "::1") else ["*"]
        middleware = [
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(TokenAuth, token=self.token),
        ]
        return Starlette(routes=routes, middleware=middleware)

    # -- rendering

    def render(self, request: Request, page: str, template: str, **ctx: Any) -> HTMLResponse:
        now = time.time()
        pending = len(self.view.approvals(now, include_done=False))
        ctx.update(page=page, now=now, pending_count=pending, topics=PAGE_TOPICS[page], version=self.view.version)
        if request.headers.get("x-fragment") == "1":
            html = self.env.get_template(template).render(**ctx)
            return HTMLResponse(html, headers={"X-Pending": str(pending), "Cache-Control": "no-store"})
        html = self.env.get_template("base.html").render(content=template, **ctx)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    # -- pages

    async def overview(self, request: Request) -> HTMLResponse:
        v, now = self.view, time.time()
        services = [
            {"row": s, "signals": v.signals(s.name), "anomalies": v.recent_anomalies(s.name, now)} for s in v.services()
        ]
        cycle = v.current_cycle()
        return self.render(
            request,
            "overview",
            "overview.html",
            services=services,
            cycle=cycle,
            cycle_services=v.cycle_services(cycle) if cycle else [],
            advice=v.advice.get(cycle.cycle_id) if cycle else None,
            level=v.guardrail_level(),
            history=v.guardrail_history(),
            probes=v.active_probes(now),
            leader=v.control.leader,
            outcomes=v.outcome_list()[:5],
            pending=v.approvals(now, include_done=False),
        )

    async def cycles(self, request: Request) -> HTMLResponse:
        v = self.view
        want = {k: request.query_params.get(k, "") for k in ("service", "focus", "result")}
        rows = []
        for c in v.cycle_list():
            svcs = v.cycle_services(c)
            result = v.cycle_result(c.cycle_id)
            if want["service"] and want["service"] not in svcs:
                continue
            if want["focus"] and want["focus"] != c.focus_area:
                continue
            if want["result"] and want["result"] not in result:
                continue
            rows.append({"c": c, "services": svcs, "result": result})
        all_services = sorted({s.name for s in v.services()})
        return self.render(
            request,
            "cycles",
            "cycles.html",
            rows=rows[:500],
            want=want,
            all_services=all_services,
            focus_areas=sorted({c.focus_area for c in v.cycle_list()}),
        )

    async def cycle(self, request: Request) -> HTMLResponse:
        v = self.view
        cycle_id = request.path_params["cycle_id"]
        c = v.cycles.get(cycle_id)
        entries = v.cycle_entries(cycle_id)
        if c is None and not entries:
            return HTMLResponse(
                self.env.get_template("base.html").render(
                    content="missing.html",
                    page="cycles",
                    topics=[],
                    what=f"cycle {cycle_id}",
                    now=time.time(),
                    pending_count=0,
                    version=v.version,
                ),
                status_code=404,
            )
        registry = KeyRegistry.load(self.settings.keys).with_operators(self.settings.operators)
        timeline = [{"e": e, **entry_status(e, registry, v.ledger.get(e.sequence - 1))} for e in entries]
        chain = v.chain()
        ids = [p.plan_id for p in v.cycle_plans(cycle_id)]
        ids += [o.outcome_id for o in v.cycle_outcomes(cycle_id) if o.plan_id not in ids]
        trees = [(i, explain_lines(chain, i)) for i in ids]
        return self.render(
            request,
            "cycle",
            "cycle.html",
            cycle_id=cycle_id,
            c=c,
            advice=v.advice.get(cycle_id),
            directives=v.cycle_directives(cycle_id),
            plans=v.cycle_plans(cycle_id),
            outcomes=v.cycle_outcomes(cycle_id),
            timeline=timeline,
            verified=sum(1 for t in timeline if t["ok"]),
            trees=[(i, lines) for i, lines in trees if lines],
            result=v.cycle_result(cycle_id),
        )

    async def approvals(self, request: Request) -> HTMLResponse:
        now = time.time()
        rows = self.view.approvals(now)
        operators = [
            {"name": o.name, "public_key": o.public_key, "key_id": _key_id(o.public_key), "services": o.services}
            for o in self.settings.operators
        ]
        return self.render(
            request,
            "approvals",
            "approvals.html",
            pending=[r for r in rows if r.state == "pending"],
            done=[r for r in rows if r.state != "pending"][:50],
            operators=operators,
            loads=json.loads,
        )

    async def outcomes(self, request: Request) -> HTMLResponse:
        rows = [{"o": o, "entry": self.view.outcome_entry(o)} for o in self.view.outcome_list()[:300]]
        return self.render(request, "outcomes", "outcomes.html", rows=rows)

    async def state(self, request: Request) -> JSONResponse:
        """What the pages are built from, in short (for scripts and the benchmark)."""
        v = self.view
        c = v.current_cycle()
        return JSONResponse(
            {
                "version": v.version,
                "skipped": v.skipped,
                "services": [s.name for s in v.services()],
                "current_cycle": c.model_dump(mode="json") if c else None,
                "pending_approvals": [r.request.plan_id for r in v.approvals(include_done=False)],
                "outcomes": len(v.outcomes),
                "ledger_entries": len(v.ledger),
            }
        )

    # -- live updates

    async def events(self, request: Request) -> StreamingResponse:
        assert self.broadcaster is not None, "bind_loop() first"
        queue = self.broadcaster.subscribe()
        closing = self._closing

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield f"event: hello\ndata: {json.dumps({'version': self.view.version})}\n\n".encode()
                while not closing.is_set():
                    try:
                        topics = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if topics is None:
                        break
                    doc = {"topics": sorted(topics), "version": self.view.version, "sent": time.time()}
                    yield f"event: change\ndata: {json.dumps(doc)}\n\n".encode()
            finally:
                self.broadcaster.unsubscribe(queue) if self.broadcaster else None

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # -- decisions

    async def decide(self, request: Request) -> JSONResponse:
        problem = cross_site_problem(request)
        if problem is not None:
            return JSONResponse({"ok": False, "kind": "cross_site", "message": problem}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"ok": False, "kind": "malformed", "message": "body is not JSON"}, status_code=400)
        try:
            d = check_decision(self.view, self.settings, body)
        except DecisionRefused as exc:
            logger.warning("console_decision_refused kind=%s reason=%s", exc.kind, exc.message)
            return JSONResponse({"ok": False, "kind": exc.kind, "message": exc.message}, status_code=exc.status)
        try:
            await asyncio.to_thread(self._publish, d)
        except KafkaUnavailable as exc:
            return JSONResponse({"ok": False, "kind": "kafka", "message": f"not published: {exc}"}, status_code=503)
        logger.info(
            "console_decision_published plan=%s decision=%s operator=%s key_id=%s decision_id=%s",
            d.plan_id,
            d.decision,
            d.operator,
            d.key_id,
            d.decision_id,
        )
        if d.request_id.startswith(ApprovalRequest.VERDICT_PREFIX):
            verb = "Kept the change of" if d.decision == "approve" else "Asked to roll back"
        else:
            verb = "Approved" if d.decision == "approve" else "Denied"
        return JSONResponse(
            {
                "ok": True,
                "decision_id": d.decision_id,
                "message": f"{verb} plan {d.plan_id} as {d.operator} (key {d.key_id}); signature verified and the "
                "decision published: the executor checks it again before it counts.",
            }
        )

    def _publish(self, d: ApprovalDecision) -> None:
        if self._producer is None:
            self._producer = Producer(self.settings.kafka)
        self._producer.send(self.settings.topics.name("approvals"), self._ser(d), key=d.plan_id)


def _key_id(public_hex: str) -> str:
    try:
        return key_id_of(bytes.fromhex(public_hex))
    except ValueError:
        return "invalid"


def entry_status(e: LedgerEntry, registry: KeyRegistry, prev: LedgerEntry | None) -> dict[str, Any]:
    """Whether one ledger entry verifies: its hash, its signature by its actor's registered key, its link."""
    rec = registry.get(e.key_id)
    if rec is None:
        return {"ok": False, "why": f"key {e.key_id} is not in the key registry"}
    if rec.actor != e.actor:
        return {"ok": False, "why": f"key {e.key_id} belongs to {rec.actor}, not {e.actor}"}
    if entry_hash(e) != e.entry_hash:
        return {"ok": False, "why": "entry hash does not match the entry"}
    if not verify_signature(e, rec.verify_key()):
        return {"ok": False, "why": f"signature does not verify with {rec.actor}'s key {rec.key_id}"}
    if rec.revoked:
        return {"ok": False, "why": f"signed with revoked key {rec.key_id}"}
    if prev is not None and e.prev_hash != prev.entry_hash:
        return {"ok": False, "why": f"prev_hash does not link to sequence {prev.sequence}"}
    return {"ok": True, "why": f"Ed25519 signature verifies with {rec.actor} key {rec.key_id}"}


__all__ = ["Console", "cross_site_problem", "entry_status", "fmt_ts", "sparkline"]
