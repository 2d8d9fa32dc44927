"""Approval decisions signed in the browser: checked here exactly as the executor checks them, then published.

The page builds the same :class:`~metaheal.events.ApprovalDecision` that
``metaheal approvals approve`` builds (every field but ``signature``, as canonical
JSON, see :func:`metaheal.agents.executor.approvals.decision_message`), signs those
bytes with WebCrypto Ed25519 and posts the decision together with the digest of the
plan it showed. The private key never leaves the page. Here the decision is refused,
with a reason an operator can act on, when

* it is not an ``ApprovalDecision`` (a field is missing or malformed),
* no request exists for the plan, or the request was already answered,
* :func:`~metaheal.agents.executor.approvals.rejection_reason` (the executor's own
  check against the operator registry: operator known, key registered for them,
  key not revoked or expired in the key registry, signature valid, request and plan ids, the
  request's plan hash and nonce, service allowed, not replayed, not backdated, not expired)
  finds a problem,
* the plan now differs from the one the operator reviewed (its digest changed).

Only then is it published on ``<prefix>approvals``, where the executor checks it
again before it counts.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from metaheal.agents.executor.approvals import decision_message, load_registry, rejection_reason
from metaheal.config import Settings
from metaheal.console.view import FleetView
from metaheal.errors import MetahealError
from metaheal.events import ApprovalDecision

#: what each class of the executor's rejection means to the person at the keyboard
_MEANING = {
    "forged": "wrong key or altered decision",
    "unauthorised": "operator not allowed for this service",
    "replayed": "decision already used",
    "expired": "request expired",
    "revoked": "operator key revoked",
    "key_expired": "operator key not valid at that time",
    "plan_mismatch": "decision signed for a different plan",
    "backdated": "decided before the request was made",
}


class DecisionRefused(MetahealError, PermissionError):
    """A browser decision that does not count; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def check_decision(view: FleetView, settings: Settings, body: Any, *, now: float | None = None) -> ApprovalDecision:
    """The decision in ``body`` (``{"decision": {...}, "plan_digest": "..."}``) if it counts; else raises."""
    now = time.time() if now is None else now
    if not isinstance(body, dict) or not isinstance(body.get("decision"), dict):
        raise DecisionRefused(400, "malformed", 'body: expected {"decision": {...}, "plan_digest": "..."}')
    try:
        d = ApprovalDecision.model_validate(body["decision"])
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise DecisionRefused(400, "malformed", f"decision.{field}: {err['msg']}") from None
    row = view.approval(d.plan_id, now)
    if row is None:
        raise DecisionRefused(404, "unknown", f"no approval request for plan {d.plan_id}")
    seen = {x.decision_id for x in row.decisions}
    registry = load_registry(settings)
    if registry is None:
        raise DecisionRefused(503, "unverifiable", f"Refused: the key registry in {settings.keys} cannot be read")
    why = rejection_reason(d, row.request, settings, seen=seen, received_at=now, registry=registry)
    if why is not None:
        kind = why.split(":", 1)[0]
        status = 410 if kind == "expired" else 403
        raise DecisionRefused(status, kind, f"Refused ({_MEANING.get(kind, kind)}): {why}")
    if row.decisions:
        first = row.decisions[0]
        raise DecisionRefused(
            409,
            "answered",
            f"Refused: request {row.request.request_id} was already answered ({first.decision} by {first.operator})",
        )
    digest = body.get("plan_digest")
    if row.digest is None:
        raise DecisionRefused(409, "plan_unknown", f"Refused: plan {d.plan_id} has not been read yet; reload the page")
    if digest != row.digest:
        raise DecisionRefused(
            409,
            "plan_changed",
            f"Refused (plan changed): plan {d.plan_id} is no longer the plan you reviewed "
            f"(digest {str(digest)[:12]}… now {row.digest[:12]}…); reload the page and review it again",
        )
    return d


def signed_bytes(d: ApprovalDecision) -> bytes:
    """The exact bytes the operator's key signed (shown back on refusal, to help debugging a client)."""
    return decision_message(d)


__all__ = ["DecisionRefused", "check_decision", "signed_bytes"]
