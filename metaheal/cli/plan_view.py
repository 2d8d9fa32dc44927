"""One plan, everything an approver needs: ``metaheal approvals show PLAN_ID``.

The plan (steps, verifications, rollback, risk) from ``<prefix>plans``, its approval
request and decisions from ``<prefix>approvals``, the directive that asked for it (the
evidence: root causes, advice, confidence) from ``<prefix>directives`` and its outcome.
"""

from __future__ import annotations

import json
import time
from typing import Any

from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import AgenticPlan, ApprovalDecision, ApprovalRequest, Directive, SignedOutcome
from metaheal.kafka import Consumer
from metaheal.kafka.serializers import EventDecoder


def _events(settings: Settings, short: str) -> list[Any]:
    decode = EventDecoder()
    out = []
    with Consumer(settings.kafka) as c:
        for m in c.read_to_end(settings.topics.name(short)):
            try:
                out.append(decode(m.value() or b""))
            except DecodeError:
                continue
    return out


def find_plan(settings: Settings, plan_id: str) -> dict[str, Any] | None:
    plan = next((e for e in _events(settings, "plans") if isinstance(e, AgenticPlan) and e.plan_id == plan_id), None)
    if plan is None:
        return None
    approvals = _events(settings, "approvals")
    request = next((e for e in approvals if isinstance(e, ApprovalRequest) and e.plan_id == plan_id), None)
    decisions = [e for e in approvals if isinstance(e, ApprovalDecision) and e.plan_id == plan_id]
    directive = next(
        (
            e
            for e in _events(settings, "directives")
            if isinstance(e, Directive) and e.directive_id == plan.directive_id
        ),
        None,
    )
    outcome = next(
        (e for e in _events(settings, "outcomes") if isinstance(e, SignedOutcome) and e.plan_id == plan_id), None
    )
    if outcome is not None:
        state = f"finished: {outcome.result}"
    elif request is None:
        state = "running (auto-approved)" if not plan.trust_approval_required else "waiting for its approval request"
    elif decisions:
        state = f"decided: {decisions[-1].decision} by {decisions[-1].operator}"
    else:
        state = "expired" if time.time() > request.expires_at else "pending approval"
    return {
        "plan_id": plan.plan_id,
        "state": state,
        "service": plan.service,
        "playbook": plan.selected_playbook,
        "confidence": plan.confidence,
        "steps": [
            {"action": st.action, "params": json.loads(st.params_json), "timeout": st.timeout} for st in plan.steps
        ],
        "verifications": [{"type": v.type, "spec": json.loads(v.spec_json)} for v in plan.verifications],
        "rollback": [{"action": st.action, "params": json.loads(st.params_json)} for st in plan.rollback_plan],
        "risk": plan.risk_assessment.model_dump(),
        "estimated_duration": plan.estimated_duration,
        "approval": request.model_dump() if request else None,
        "decisions": [{k: v for k, v in d.model_dump().items() if k != "signature"} for d in decisions],
        "evidence": directive.model_dump() if directive else None,
        "provenance": {"cycle_id": plan.cycle_id, "directive_id": plan.directive_id, "planned_at": plan.ts},
        "outcome": outcome.model_dump(exclude={"actor_signature"}) if outcome else None,
    }


def render_plan(v: dict[str, Any]) -> str:
    lines = [
        f"plan {v['plan_id']}: {v['playbook']} on {v['service']} ({v['state']})",
        f"  confidence {v['confidence']:.2f}; estimated {v['estimated_duration']:.0f}s",
        f"  risk: impact {v['risk']['impact']}, blast radius {v['risk']['blast_radius']}, "
        f"score {v['risk']['risk_score']:.2f}" + "".join(f"\n    - {n}" for n in v["risk"]["notes"]),
        "  steps:",
        *(
            f"    {i}. {st['action']} {json.dumps(st['params'])} (timeout {st['timeout']:.0f}s)"
            for i, st in enumerate(v["steps"], 1)
        ),
        "  verifications:",
        *(f"    - {ver['type']} {json.dumps(ver['spec'])}" for ver in v["verifications"]),
        "  rollback:",
        *(f"    - {st['action']} {json.dumps(st['params'])}" for st in v["rollback"]),
    ]
    if v["approval"]:
        a = v["approval"]
        left = a["expires_at"] - time.time()
        lines.append(
            f"  approval: {a['reason']} (expires in {left:.0f}s)" if left > 0 else f"  approval: {a['reason']}"
        )
    for d in v["decisions"]:
        lines.append(f"  decision: {d['decision']} by {d['operator']}: {d['reason'] or '-'}")
    if v["evidence"]:
        e, advice = v["evidence"], v["evidence"]["ml_advice"]
        lines.append(
            f"  evidence: focus {e['focus_area']}, guardrails {e['guardrail_level']}, "
            f"directive confidence {e['confidence']:.2f}"
        )
        lines.append(
            f"    root causes: {', '.join(advice['root_causes']) or '-'}; "
            f"recommended: {', '.join(advice['recommended_playbooks']) or '-'}"
        )
    p = v["provenance"]
    lines.append(
        f"  provenance: cycle {p['cycle_id']}, directive {p['directive_id']} (metaheal ledger explain {p['cycle_id']})"
    )
    if v["outcome"]:
        lines.append(f"  outcome: {v['outcome']['result']} ({v['outcome']['trust_decision']})")
    return "\n".join(lines)
