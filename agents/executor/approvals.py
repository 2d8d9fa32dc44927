"""Human approval: signed requests and decisions on ``<prefix>approvals``.

A decision counts only if it is signed by an operator key from
``settings.operators`` that may approve for the plan's service, arrives before
the request expires, answers a pending request, and has not been seen before.
Everything else is rejected with a reason that the executor records as a
``trust_violation`` — a forged approval is an attack, not noise.

The same channel asks for *verdicts*: when verification could not decide whether a
change worked, the change stays and a verdict request (``request_id``
``verdict-<plan_id>``) asks an operator to keep it (``approve``) or roll it back
(``deny``); ``metaheal approvals keep|rollback`` say so in words. A decision is bound
to its request id by the signature, so an approval of the plan cannot be replayed as
a verdict.

The signature covers the canonical JSON (``metaheal.ledger.canonical``) of
every field except ``signature``, so changing the decision, the plan or the
operator breaks it.

>>> from nacl.signing import SigningKey
>>> sk = SigningKey(b"k" * 32)
>>> d = sign_decision(sk, plan_id="p1", request_id="r1", operator="alice", decision="approve", decided_at=10.0)
>>> verify_signature(d, sk.verify_key.encode().hex())
True
>>> verify_signature(d.model_copy(update={"decision": "deny"}), sk.verify_key.encode().hex())
False
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metaheal.config import OperatorSettings, Settings
from metaheal.errors import DecodeError
from metaheal.events import AgenticPlan, ApprovalDecision, ApprovalRequest
from metaheal.kafka import ConsumedMessage, Consumer, TopicPartition
from metaheal.kafka.serializers import EventDecoder
from metaheal.kafka.tail import TopicTail
from metaheal.ledger.canonical import canonical_json
from metaheal.ledger.keys import key_id_of

logger = logging.getLogger(__name__)

DECODER = EventDecoder((ApprovalRequest, ApprovalDecision))


def decision_message(d: ApprovalDecision) -> bytes:
    return canonical_json(d.model_dump(exclude={"signature"})).encode()


def load_signing_key(path: str | Path) -> SigningKey:
    """An operator's private key file (hex Ed25519 seed, as ``init_operator_key`` writes it)."""
    p = Path(path)
    try:
        return SigningKey(bytes.fromhex(p.read_text().strip()))
    except FileNotFoundError:
        raise ValueError(f"--key: key file not found: {p}") from None
    except ValueError:
        raise ValueError(f"--key: {p} is not a hex Ed25519 private key") from None


def sign_decision(
    key: SigningKey,
    *,
    plan_id: str,
    request_id: str,
    operator: str,
    decision: Literal["approve", "deny"],
    reason: str = "",
    decided_at: float | None = None,
) -> ApprovalDecision:
    unsigned = ApprovalDecision(
        decision_id=f"dec-{uuid.uuid4().hex[:16]}",
        request_id=request_id,
        plan_id=plan_id,
        operator=operator,
        decision=decision,
        reason=reason,
        decided_at=decided_at if decided_at is not None else time.time(),
        key_id=key_id_of(key.verify_key.encode()),
        signature="",
    )
    sig = key.sign(decision_message(unsigned)).signature.hex()
    return unsigned.model_copy(update={"signature": sig})


def verify_signature(d: ApprovalDecision, public_key_hex: str) -> bool:
    try:
        VerifyKey(bytes.fromhex(public_key_hex)).verify(decision_message(d), bytes.fromhex(d.signature))
        return True
    except (BadSignatureError, ValueError):
        return False


def operator_for(settings: Settings, name: str) -> OperatorSettings | None:
    return next((o for o in settings.operators if o.name == name), None)


def rejection_reason(
    d: ApprovalDecision, request: ApprovalRequest, settings: Settings, *, seen: set[str], received_at: float
) -> str | None:
    """Why ``d`` does not count (None: it is valid). Checks in order of severity."""
    op = operator_for(settings, d.operator)
    if op is None:
        return f"forged: operator {d.operator!r} is not in the operator registry"
    if d.key_id != key_id_of(bytes.fromhex(op.public_key)):
        return f"forged: key {d.key_id} is not operator {d.operator}'s registered key"
    if not verify_signature(d, op.public_key):
        return f"forged: signature does not verify with operator {d.operator}'s key"
    if d.plan_id != request.plan_id or d.request_id != request.request_id:
        return (
            f"forged: decision answers request {d.request_id}/{d.plan_id}, not {request.request_id}/{request.plan_id}"
        )
    if "*" not in op.services and request.service not in op.services:
        return f"unauthorised: operator {d.operator} may not approve for service {request.service}"
    if d.decision_id in seen:
        return f"replayed: decision {d.decision_id} was already used"
    if received_at > request.expires_at or d.decided_at > request.expires_at:
        return f"expired: request {request.request_id} expired at {request.expires_at:.0f}"
    return None


def build_request(
    plan: AgenticPlan, reasons: list[str], expiry_seconds: float, now: float | None = None
) -> ApprovalRequest:
    now = now if now is not None else time.time()
    steps = ", ".join(s.action for s in plan.steps)
    return ApprovalRequest(
        request_id=f"req-{plan.plan_id}",
        plan_id=plan.plan_id,
        cycle_id=plan.cycle_id,
        service=plan.service,
        playbook=plan.selected_playbook,
        reason="; ".join(reasons),
        plan_summary=f"{plan.selected_playbook} on {plan.service}: {len(plan.steps)} step(s) [{steps}], "
        f"impact {plan.risk_assessment.impact}, blast radius {plan.risk_assessment.blast_radius}",
        requested_at=now,
        expires_at=now + expiry_seconds,
    )


VERDICT_PREFIX = ApprovalRequest.VERDICT_PREFIX
#: what a decision means on a verdict request
VERDICT_MEANING = {"approve": "keep", "deny": "rollback"}


def is_verdict_request(request: ApprovalRequest) -> bool:
    """Whether ``request`` asks for a verdict on a change already made (not for permission to make it)."""
    return request.asks_verdict


def build_verdict_request(
    plan: AgenticPlan, evidence: list[str], *, expires_at: float, on_expiry: str, now: float | None = None
) -> ApprovalRequest:
    """Ask an operator to keep (``approve``) or roll back (``deny``) a change whose verification was inconclusive.

    >>> from metaheal.events import RiskAssessment
    >>> p = AgenticPlan(plan_id="p1", directive_id="d1", cycle_id="c1", ts=0.0, service="api",
    ...     selected_playbook="rollback_flag", steps=[], verifications=[], rollback_plan=[],
    ...     trust_approval_required=False, estimated_duration=1.0,
    ...     risk_assessment=RiskAssessment(impact="low", blast_radius=1, risk_score=0.1), confidence=0.9)
    >>> r = build_verdict_request(p, ["no samples of error_rate"], expires_at=100.0, on_expiry="keep", now=10.0)
    >>> r.request_id, is_verdict_request(r), r.reason
    ('verdict-p1', True, 'verification inconclusive: no samples of error_rate')
    """
    now = now if now is not None else time.time()
    return ApprovalRequest(
        request_id=f"{VERDICT_PREFIX}{plan.plan_id}",
        plan_id=plan.plan_id,
        cycle_id=plan.cycle_id,
        service=plan.service,
        playbook=plan.selected_playbook,
        reason="verification inconclusive: " + "; ".join(evidence),
        plan_summary=f"{plan.selected_playbook} on {plan.service} is in place and unverified: keep (approve) or "
        f"roll back (deny); unanswered it ends as {on_expiry}",
        requested_at=now,
        expires_at=expires_at,
    )


class ApprovalInbox(TopicTail):
    """Tails ``<prefix>approvals`` and hands decisions to whoever waits for that plan.

    Reading starts at the beginning so decisions made while an executor was
    down are not lost; decisions nobody waits for are kept by plan id.
    """

    name = "approval-inbox"
    batch = 100

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.kafka)
        self._settings = settings
        self._decisions: dict[str, list[tuple[float, ApprovalDecision]]] = {}
        self._cond = threading.Condition()

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        topic = self._settings.topics.name("approvals")
        return consumer.topic_partitions([topic])

    def handle(self, msg: ConsumedMessage) -> None:
        try:
            event = DECODER(msg.value() or b"")
        except DecodeError as exc:
            logger.warning("approval_inbox_undecodable offset=%s error=%s", msg.offset(), exc)
            return
        if isinstance(event, ApprovalDecision):
            with self._cond:
                self._decisions.setdefault(event.plan_id, []).append((time.time(), event))
                self._cond.notify_all()

    def take(self, plan_id: str, start: int) -> list[tuple[float, ApprovalDecision]]:
        with self._cond:
            return list(self._decisions.get(plan_id, []))[start:]

    async def next_decisions(self, plan_id: str, start: int, timeout: float) -> list[tuple[float, ApprovalDecision]]:
        """Decisions for ``plan_id`` after the first ``start`` ones, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.take(plan_id, start)
            if got or time.monotonic() >= deadline:
                return got
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
