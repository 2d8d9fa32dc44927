"""Webhooks: tell a human when one is needed (``notifications.webhooks``).

Each webhook gets its own delivery thread and bounded queue, so a slow or failing
receiver delays neither the components (they never see notifications: the
:class:`~metaheal.watch.EventWatcher` reads what they published) nor the other webhooks.
A delivery is tried up to ``max_attempts`` times with exponential backoff (0.5 s, 1 s,
2 s, ... at most 30 s); 2xx is delivered, anything else (or no answer) is retried, and
the last failure is counted and logged. Headers may name environment variables as
``${NAME}``: secrets stay in the environment, never in the configuration or the ledger.

The body is JSON with ``event``, ``service``, ``plan_id``, ``playbook``, ``summary``,
``expires_at``, ``approve_command`` and ``text`` (what Slack and Teams incoming webhooks show).

>>> expand_env("Bearer ${TOKEN}", {"TOKEN": "s3cret"})
'Bearer s3cret'
>>> expand_env("Bearer ${MISSING}", {})
Traceback (most recent call last):
...
ValueError: ${MISSING}: environment variable not set
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shlex
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from metaheal.config import Settings, WebhookSettings
from metaheal.events import ApprovalRequest, CycleFocus, LedgerEntry, SignedOutcome
from metaheal.observability import WEBHOOK_DELIVERIES
from metaheal.watch import Notice

logger = logging.getLogger(__name__)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
OPERATOR_KEY_ENV = "METAHEAL_OPERATOR_KEY"
MAX_BACKOFF = 30.0
QUEUE_SIZE = 1000


def expand_env(value: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise ValueError(f"${{{m.group(1)}}}: environment variable not set")
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def approve_command(plan_id: str, settings: Settings, config_path: str | None = None, verb: str = "approve") -> str:
    """The exact command an operator runs to approve ``plan_id`` (its key from ``$METAHEAL_OPERATOR_KEY``).

    ``verb`` is ``keep`` for a verdict request (a change in place whose verification could not decide).

    >>> s = Settings(kafka={"bootstrap": "k:9092"})
    >>> approve_command("p-1", s)
    'metaheal approvals approve p-1 --key "$METAHEAL_OPERATOR_KEY" --bootstrap k:9092'
    """
    parts = ["metaheal", "approvals", verb, shlex.quote(plan_id), "--key", f'"${OPERATOR_KEY_ENV}"']
    if config_path:
        parts += ["--config", shlex.quote(config_path)]
    if settings.kafka.bootstrap:
        parts += ["--bootstrap", shlex.quote(settings.kafka.bootstrap)]
    prefix = settings.topics.prefix
    env = f"METAHEAL_TOPICS__PREFIX={shlex.quote(prefix)} " if prefix != "metaheal." and not config_path else ""
    return env + " ".join(parts)


def payload(notice: Notice, settings: Settings, config_path: str | None = None) -> dict[str, Any] | None:
    """The webhook body for a notice, or ``None`` when no webhook event corresponds to it."""
    e = notice.event
    body: dict[str, Any] = {
        "event": "",
        "service": None,
        "plan_id": None,
        "playbook": None,
        "summary": "",
        "expires_at": None,
        "approve_command": None,
        "ts": notice.ts,
    }
    if notice.kind in ("approval_requested", "approval_expired") and isinstance(e, ApprovalRequest):
        body.update(event=notice.kind, service=e.service, plan_id=e.plan_id, playbook=e.playbook)
        body.update(summary=e.plan_summary, expires_at=e.expires_at, reason=e.reason, cycle_id=e.cycle_id)
        if notice.kind == "approval_requested":
            verdict = e.asks_verdict  # the change is in place; its verification could not decide
            body["verdict"] = verdict
            body["approve_command"] = approve_command(
                e.plan_id, settings, config_path, "keep" if verdict else "approve"
            )
            left = max(0, round(e.expires_at - time.time()))
            ask = "a verdict (keep or roll back)" if verdict else "an approval"
            verb = "Keep" if verdict else "Approve"
            body["text"] = (
                f":warning: metaheal needs {ask}: {e.playbook} on {e.service} (plan {e.plan_id}), "
                f"expires in {left}s. {e.reason}\n{e.plan_summary}\n{verb}: `{body['approve_command']}`"
            )
        else:
            body["text"] = f"metaheal approval request for {e.playbook} on {e.service} (plan {e.plan_id}) expired"
        return body
    if notice.kind == "outcome" and isinstance(e, SignedOutcome) and e.result in ("failed", "rolled_back"):
        event = f"outcome_{e.result}"
        body.update(event=event, service=e.service, plan_id=e.plan_id, playbook=e.playbook, cycle_id=e.cycle_id)
        why = "; ".join(e.rationale[-3:])
        body["summary"] = f"{e.playbook} on {e.service}: {e.result.replace('_', ' ')}" + (f" ({why})" if why else "")
        body["text"] = f":x: metaheal {body['summary']} (plan {e.plan_id})"
        return body
    if notice.kind == "trust_violation" and isinstance(e, LedgerEntry):
        d = notice.data
        reasons = d.get("reason") or "; ".join(map(str, d.get("reasons", []))) or e.result
        body.update(event="trust_violation", service=d.get("service") or e.resource, plan_id=d.get("plan_id"))
        body.update(playbook=d.get("playbook"), cycle_id=e.cycle_id, summary=f"trust violation: {reasons}")
        body["text"] = f":rotating_light: metaheal {body['summary']} (service {body['service']}, by {e.actor})"
        return body
    if notice.kind == "guardrail_changed" and isinstance(e, CycleFocus):
        prev, level = notice.data.get("previous"), notice.data.get("level")
        body.update(event="guardrail_changed", cycle_id=e.cycle_id, summary=f"guardrails {prev} -> {level}")
        body["text"] = f"metaheal guardrails changed: {prev} -> {level} ({'; '.join(e.reasoning[:2])})"
        return body
    return None


class _Delivery:
    """One webhook: a queue and a thread that posts, retrying with backoff."""

    def __init__(self, hook: WebhookSettings, index: int) -> None:
        self.hook, self.index = hook, index
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name=f"metaheal-webhook-{index}", daemon=True)
        self.stopping = threading.Event()
        self.delivered = 0
        self.failed = 0

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **{k: expand_env(v) for k, v in self.hook.headers.items()}}

    def _run(self) -> None:
        with httpx.Client(timeout=self.hook.timeout_seconds) as client:
            while True:
                body = self.queue.get()
                if body is None:
                    return
                self._post(client, body)

    def _post(self, client: httpx.Client, body: dict[str, Any]) -> None:
        event, error = body["event"], ""
        for attempt in range(self.hook.max_attempts):
            if attempt and self.stopping.wait(min(MAX_BACKOFF, 0.5 * 2 ** (attempt - 1))):
                break  # stopping: no more retries
            try:
                r = client.post(self.hook.url, json=body, headers=self._headers())
            except (httpx.HTTPError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= r.status_code < 300:
                self.delivered += 1
                WEBHOOK_DELIVERIES.labels(event, "delivered").inc()
                logger.info("webhook delivered webhook=%d event=%s plan_id=%s", self.index, event, body.get("plan_id"))
                return
            error = f"HTTP {r.status_code}"
        self.failed += 1
        WEBHOOK_DELIVERIES.labels(event, "failed").inc()
        logger.warning(
            "webhook failed webhook=%d event=%s plan_id=%s attempts=%d error=%s",
            self.index,
            event,
            body.get("plan_id"),
            self.hook.max_attempts,
            error,
        )


class Notifier:
    """Turns :class:`~metaheal.watch.Notice` objects into webhook deliveries (``notice`` never blocks)."""

    def __init__(self, settings: Settings, *, config_path: str | None = None) -> None:
        self.settings, self.config_path = settings, config_path
        self.deliveries = [_Delivery(h, i) for i, h in enumerate(settings.notifications.webhooks)]

    def start(self) -> Notifier:
        for d in self.deliveries:
            d.thread.start()
        return self

    def notice(self, notice: Notice) -> None:
        body = payload(notice, self.settings, self.config_path)
        if body is None:
            return
        for d in self.deliveries:
            if body["event"] not in d.hook.events:
                continue
            try:
                d.queue.put_nowait(body)
            except queue.Full:
                d.failed += 1
                WEBHOOK_DELIVERIES.labels(body["event"], "failed").inc()
                logger.warning("webhook queue full webhook=%d event=%s: notification dropped", d.index, body["event"])

    def stop(self, timeout: float = 5.0) -> None:
        for d in self.deliveries:
            d.stopping.set()
            with_room = True
            try:
                d.queue.put_nowait(None)
            except queue.Full:
                with_room = False
            if with_room:
                d.thread.join(timeout)
