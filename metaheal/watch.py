"""What the control plane published, as notices: the source of ``/metrics`` counters and webhooks.

:class:`EventWatcher` follows the topics the roles of this process write (the meta loop:
``cycles``, ``directives``; the executor: ``plans``, ``approvals``, ``outcomes`` and the
``ledger`` for trust violations) on a thread, and hands each listener a :class:`Notice`
for what happened after it started. Earlier records only rebuild state (open approval
requests, the guardrail level), so a restart neither recounts nor re-notifies history.
Following the topics instead of hooking into each component keeps the components unaware
of metrics and notifications, and a slow listener can never delay them.

Notices are facts for humans and dashboards, not inputs to actions: nothing here acts on them.

>>> w = EventWatcher.__new__(EventWatcher)
>>> w.listeners, w.since, w.level, w.open, w.expired = [], 0.0, None, {}, set()
>>> got = []
>>> w.listeners.append(got.append)
>>> w._focus(CycleFocus(cycle_id="c1", ts=1.0, focus_area="latency_drift", confidence=0.8, reasoning=[],
...     guardrail_adjustment="maintain", guardrail_level="tight", time_budget_seconds=60), 1.0)
>>> w._focus(CycleFocus(cycle_id="c2", ts=2.0, focus_area="latency_drift", confidence=0.8, reasoning=[],
...     guardrail_adjustment="loosen", guardrail_level="maintain", time_budget_seconds=60), 2.0)
>>> [(n.kind, n.data.get("previous"), n.data.get("level")) for n in got]
[('cycle', None, None), ('cycle', None, None), ('guardrail_changed', 'tight', 'maintain')]
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import (
    AgenticPlan,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    Directive,
    Event,
    LedgerEntry,
    SignedOutcome,
)
from metaheal.kafka import Consumer, KafkaError
from metaheal.kafka.serializers import EventDecoder
from metaheal.observability import (
    CYCLES,
    DIRECTIVES,
    GUARDRAIL_LEVEL,
    LEVELS,
    OUTCOMES,
    PENDING_APPROVALS,
    PLANS,
)

logger = logging.getLogger(__name__)

#: role -> topics (short names) whose records it writes
ROLE_TOPICS: dict[str, tuple[str, ...]] = {
    "meta": ("cycles", "directives"),
    "executor": ("plans", "approvals", "outcomes", "ledger"),
}


@dataclass
class Notice:
    """One thing that happened: ``kind`` is ``cycle``, ``directive``, ``plan``, ``approval_requested``,
    ``approval_decided``, ``approval_expired``, ``outcome``, ``trust_violation`` or ``guardrail_changed``."""

    kind: str
    event: Event | None
    ts: float
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Notice], None]


class EventWatcher:
    """Follows the topics of ``roles`` on a thread; ``start()``/``stop()``; listeners get :class:`Notice`."""

    def __init__(
        self, settings: Settings, roles: list[str], listeners: Sequence[Listener] | None = None, *, poll: float = 0.5
    ) -> None:
        self.settings = settings
        self.topics = [settings.topics.name(t) for r in roles for t in ROLE_TOPICS.get(r, ())]
        self.listeners = list(listeners or [])
        self.poll = poll
        self.since = time.time()
        self.level: str | None = None
        self.open: dict[str, ApprovalRequest] = {}  # plan_id -> request neither decided nor expired
        self.expired: set[str] = set()
        self._decode = EventDecoder()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metaheal-watch", daemon=True)
        self.caught_up = threading.Event()

    def start(self) -> EventWatcher:
        if self.topics:
            self._thread.start()
        else:
            self.caught_up.set()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _emit(self, notice: Notice) -> None:
        for listener in self.listeners:
            try:
                listener(notice)
            except Exception:  # a listener's bug must not stop the others or the watcher
                logger.exception("watch listener failed kind=%s", notice.kind)

    def _run(self) -> None:
        eof: set[tuple[str, int]] = set()
        try:
            overrides: dict[str, Any] = {"fetch.wait.max.ms": 100}
            with Consumer(self.settings.kafka, None, **overrides) as c:
                parts = c.assign_topics(self.topics)  # from the beginning: history rebuilds state
                while not self._stop.is_set():
                    for m in c.raw.consume(500, self.poll):
                        err = m.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                eof.add((str(m.topic()), int(m.partition() or 0)))
                                if len(eof) >= len(parts):
                                    self.caught_up.set()
                            else:
                                logger.warning("watch consume error=%s", err)
                            continue
                        self._record(m.value(), m.timestamp()[1] / 1000.0)
                    self._expire(time.time())
        except Exception:
            logger.exception("event watcher stopped")

    def _record(self, value: bytes | None, ts: float) -> None:
        if not value:
            return
        try:
            event = self._decode(value)
        except DecodeError:
            return  # not an event (a lease record, a tombstone): nothing to tell
        if isinstance(event, CycleFocus):
            self._focus(event, ts)
        elif isinstance(event, Directive):
            if ts >= self.since:
                DIRECTIVES.inc()
                self._emit(Notice("directive", event, ts))
        elif isinstance(event, AgenticPlan):
            if ts >= self.since:
                decision = "approval_required" if event.trust_approval_required else "auto_approved"
                PLANS.labels(event.selected_playbook, decision).inc()
                self._emit(Notice("plan", event, ts, {"decision": decision}))
        elif isinstance(event, ApprovalRequest):
            self.open[event.plan_id] = event
            PENDING_APPROVALS.set(len(self.open))
            if ts >= self.since:
                self._emit(Notice("approval_requested", event, ts))
        elif isinstance(event, ApprovalDecision):
            req = self.open.pop(event.plan_id, None)
            PENDING_APPROVALS.set(len(self.open))
            if ts >= self.since:
                self._emit(Notice("approval_decided", event, ts, {"request": req}))
        elif isinstance(event, SignedOutcome):
            self.open.pop(event.plan_id, None)
            PENDING_APPROVALS.set(len(self.open))
            if ts >= self.since:
                OUTCOMES.labels(event.playbook, event.result).inc()
                self._emit(Notice("outcome", event, ts))
        elif isinstance(event, LedgerEntry) and event.action == "trust_violation" and ts >= self.since:
            try:
                payload = json.loads(event.payload) if event.payload else {}
            except ValueError:
                payload = {}
            self._emit(Notice("trust_violation", event, ts, payload if isinstance(payload, dict) else {}))

    def _focus(self, event: CycleFocus, ts: float) -> None:
        previous, self.level = self.level, event.guardrail_level
        GUARDRAIL_LEVEL.set(LEVELS[event.guardrail_level])
        if ts < self.since:
            return
        CYCLES.labels(event.focus_area).inc()
        self._emit(Notice("cycle", event, ts))
        if previous is not None and previous != event.guardrail_level:
            self._emit(Notice("guardrail_changed", event, ts, {"previous": previous, "level": event.guardrail_level}))

    def _expire(self, now: float) -> None:
        for plan_id, req in list(self.open.items()):
            if req.expires_at <= now:
                del self.open[plan_id]
                PENDING_APPROVALS.set(len(self.open))
                if req.expires_at >= self.since and plan_id not in self.expired:
                    self.expired.add(plan_id)
                    self._emit(Notice("approval_expired", req, req.expires_at))
