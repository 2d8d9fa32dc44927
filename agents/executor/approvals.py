"""Human approval: signed requests and decisions on ``<prefix>approvals``.

A request binds the whole plan: it carries :func:`plan_hash` (sha256 of the rendered
plan: service, playbook, steps with their params, rollback steps, verifications, risk),
a random ``nonce`` and an expiry. A decision signs that hash and nonce, so a decision
made for one plan cannot approve another — not even a re-plan under the same plan id.

A decision counts only if it is signed by an operator from ``settings.operators``
who may approve for the plan's service, with a key that is that operator's (the
configured key, or a key the key registry issued to ``operator:<name>``) and that the
key registry does not list as revoked or expired; answers this request (ids, plan
hash, nonce); was decided no earlier than the request and no later than its expiry;
and has not been used before (the executor seeds used decision ids from the ledger on
start, so a restart cannot replay one). Everything else is rejected with a reason that
the executor records as a ``trust_violation`` — a forged approval is an attack, not noise.

The same channel asks for *verdicts*: when verification could not decide whether a
change worked, the change stays and a verdict request (``request_id``
``verdict-<plan_id>``) asks an operator to keep it (``approve``) or roll it back
(``deny``); ``metaheal approvals keep|rollback`` say so in words. A decision is bound
to its request id and nonce by the signature, so an approval of the plan cannot be
replayed as a verdict.

The signature covers the canonical JSON (``metaheal.ledger.canonical``) of
every field except ``signature``, so changing the decision, the plan or the
operator breaks it.

>>> from nacl.signing import SigningKey
>>> sk = SigningKey(b"k" * 32)
>>> d = sign_decision(sk, plan_id="p1", request_id="r1", operator="alice", decision="approve", decided_at=10.0,
...                   plan_hash="ab" * 32, nonce="n1")
>>> verify_signature(d, sk.verify_key.encode().hex())
True
>>> verify_signature(d.model_copy(update={"decision": "deny"}), sk.verify_key.encode().hex())
False
>>> verify_signature(d.model_copy(update={"plan_hash": "cd" * 32}), sk.verify_key.encode().hex())
False
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metaheal.config import OperatorSettings, Settings
from metaheal.errors import DecodeError, MetahealError
from metaheal.events import AgenticPlan, ApprovalDecision, ApprovalRequest, LedgerEntry
from metaheal.kafka import ConsumedMessage, Consumer, TopicPartition
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import EventDecoder
from metaheal.kafka.tail import TopicTail
from metaheal.ledger.canonical import canonical_json
from metaheal.ledger.keys import KeyRecord, KeyRegistry, key_id_of

logger = logging.getLogger(__name__)

DECODER = EventDecoder((ApprovalRequest, ApprovalDecision))


def plan_hash(plan: AgenticPlan) -> str:
    """sha256 (hex) of what ``plan`` does: id, service, playbook, rendered steps, rollback, verifications, risk.

    Steps carry their params as the planner rendered them (admin URL included), so a re-plan
    that changes the playbook, a step, a parameter or the risk changes the hash; the plan's
    timestamp and its ``trust_approval_required`` flag do not.
    """
    doc = plan.model_dump(
        mode="json",
        include={"plan_id", "service", "selected_playbook", "steps", "rollback_plan", "verifications"},
    )
    doc["risk"] = plan.risk_assessment.model_dump(mode="json", exclude={"notes"})
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


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
    plan_hash: str = "",
    nonce: str = "",
) -> ApprovalDecision:
    """A decision signed with ``key``; ``plan_hash`` and ``nonce`` come from the request (see :func:`sign_for`)."""
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
        plan_hash=plan_hash,
        nonce=nonce,
    )
    sig = key.sign(decision_message(unsigned)).signature.hex()
    return unsigned.model_copy(update={"signature": sig})


def sign_for(
    key: SigningKey,
    request: ApprovalRequest,
    *,
    operator: str,
    decision: Literal["approve", "deny"],
    reason: str = "",
    decided_at: float | None = None,
) -> ApprovalDecision:
    """The decision answering ``request``: its ids, plan hash and nonce under the operator's signature."""
    return sign_decision(
        key,
        plan_id=request.plan_id,
        request_id=request.request_id,
        operator=operator,
        decision=decision,
        reason=reason,
        decided_at=decided_at,
        plan_hash=request.plan_hash,
        nonce=request.nonce,
    )


def verify_signature(d: ApprovalDecision, public_key_hex: str) -> bool:
    try:
        VerifyKey(bytes.fromhex(public_key_hex)).verify(decision_message(d), bytes.fromhex(d.signature))
        return True
    except (BadSignatureError, ValueError):
        return False


def operator_for(settings: Settings, name: str) -> OperatorSettings | None:
    return next((o for o in settings.operators if o.name == name), None)


def _ts(epoch: float) -> str:
    """An epoch time in the key registry's fixed-width UTC form (``valid_from``/``valid_until`` compare as text)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def operator_key(
    op: OperatorSettings, key_id: str, registry: KeyRegistry | None
) -> tuple[str | None, KeyRecord | None]:
    """The public key (hex) ``key_id`` names for operator ``op`` and its registry record; ``(None, None)``: not theirs.

    The configured ``public_key`` is theirs; so is any key the registry issued to ``operator:<name>``
    (a rotated key works before ``metaheal.yaml`` is edited).
    """
    rec = registry.get(key_id) if registry is not None else None
    try:
        configured = bytes.fromhex(op.public_key)
    except ValueError:
        configured = b""
    if configured and key_id_of(configured) == key_id:
        return configured.hex(), rec
    if rec is not None and rec.actor == f"operator:{op.name}":
        return rec.public_key, rec
    return None, None


def rejection_reason(
    d: ApprovalDecision,
    request: ApprovalRequest,
    settings: Settings,
    *,
    seen: set[str],
    received_at: float,
    registry: KeyRegistry | None = None,
    current_hash: str | None = None,
) -> str | None:
    """Why ``d`` does not count (None: it is valid). Checks in order of severity.

    ``registry``: the key registry (revocation and validity windows); ``current_hash``: the
    :func:`plan_hash` of the plan about to run (None: the request's hash is taken as current).
    """
    op = operator_for(settings, d.operator)
    if op is None:
        return f"forged: operator {d.operator!r} is not in the operator registry"
    public, rec = operator_key(op, d.key_id, registry)
    if public is None:
        return f"forged: key {d.key_id} is not operator {d.operator}'s registered key"
    if not verify_signature(d, public):
        return f"forged: signature does not verify with operator {d.operator}'s key"
    if rec is not None and rec.revoked:
        return f"revoked: key {d.key_id} of operator {d.operator} was revoked at {rec.revoked_at}"
    if d.plan_id != request.plan_id or d.request_id != request.request_id:
        return (
            f"forged: decision answers request {d.request_id}/{d.plan_id}, not {request.request_id}/{request.plan_id}"
        )
    if d.nonce != request.nonce:
        return f"forged: decision signs nonce {d.nonce!r}, not request {request.request_id}'s nonce"
    if d.plan_hash != request.plan_hash:
        return (
            f"plan_mismatch: decision approves plan hash {d.plan_hash[:16] or '(none)'}, "
            f"request {request.request_id} is for {request.plan_hash[:16] or '(none)'}"
        )
    if current_hash is not None and current_hash != request.plan_hash:
        return (
            f"plan_mismatch: plan {request.plan_id} changed since it was requested "
            f"(hash {request.plan_hash[:16]} now {current_hash[:16]}): a new decision is needed"
        )
    if "*" not in op.services and request.service not in op.services:
        return f"unauthorised: operator {d.operator} may not approve for service {request.service}"
    if d.decision_id in seen:
        return f"replayed: decision {d.decision_id} was already used"
    if d.decided_at < request.requested_at:
        return (
            f"backdated: decided_at {d.decided_at:.3f} is before request {request.request_id} "
            f"was made ({request.requested_at:.3f})"
        )
    if rec is not None and rec.valid_from and not rec.valid_at(_ts(d.decided_at)):
        return (
            f"key_expired: key {d.key_id} of operator {d.operator} was not valid at {_ts(d.decided_at)} "
            f"(valid {rec.valid_from} to {rec.valid_until or 'open'})"
        )
    if received_at > request.expires_at or d.decided_at > request.expires_at:
        return f"expired: request {request.request_id} expired at {request.expires_at:.0f}"
    return None


#: ledger actions whose payload names a decision the executor has taken in (used or refused)
DECISION_ACTIONS = frozenset({"approval_received", "verdict_received", "trust_violation"})


def used_decisions(entries: Iterable[LedgerEntry], verified: Callable[[LedgerEntry], bool]) -> set[str]:
    """Decision ids the ledger says were taken in already (only entries that ``verified`` accepts count).

    The executor writes every decision it takes in to the ledger (``approval_received``,
    ``verdict_received``, or a ``trust_violation`` carrying it), so reading them back after a
    restart is what makes replay protection durable.
    """
    used = set()
    for e in entries:
        if e.action not in DECISION_ACTIONS:
            continue
        try:
            doc = loads(e.payload)
        except DecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        dec = doc.get("decision") if isinstance(doc.get("decision"), dict) else doc
        did = dec.get("decision_id") if isinstance(dec, dict) else None
        if isinstance(did, str) and verified(e):
            used.add(did)
    return used


def load_registry(settings: Settings) -> KeyRegistry | None:
    """The key registry as it is now (re-read for each decision, so a revocation counts at once); None if unreadable."""
    try:
        return KeyRegistry.load(settings.keys)
    except MetahealError as exc:
        logger.error("key_registry_unreadable path=%s error=%s", settings.keys, exc)
        return None


def build_request(
    plan: AgenticPlan, reasons: list[str], expiry_seconds: float, now: float | None = None
) -> ApprovalRequest:
    now = now if now is not None else time.time()
    steps = ", ".join(s.action for s in plan.steps)
    digest = plan_hash(plan)
    return ApprovalRequest(
        request_id=f"req-{plan.plan_id}",
        plan_id=plan.plan_id,
        cycle_id=plan.cycle_id,
        service=plan.service,
        playbook=plan.selected_playbook,
        reason="; ".join(reasons),
        plan_summary=f"{plan.selected_playbook} on {plan.service}: {len(plan.steps)} step(s) [{steps}], "
        f"impact {plan.risk_assessment.impact}, blast radius {plan.risk_assessment.blast_radius}"
        f" (plan hash {digest[:16]})",
        requested_at=now,
        expires_at=now + expiry_seconds,
        plan_hash=digest,
        nonce=new_nonce(),
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
        plan_hash=plan_hash(plan),
        nonce=new_nonce(),
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
