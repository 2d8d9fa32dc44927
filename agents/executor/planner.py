"""Directive -> AgenticPlan: choose a playbook, render it, estimate it, assess its risk.

The planner takes the advisors' ranking first (``directive.ml_advice.
recommended_playbooks``), then any other playbook that applies to the focus
area (root-cause matches and prior success first), and picks the first that
applies, passes the policy filter and renders. Templates that need a value a
step will produce (``{{ capacity.instances + 2 }}``) are left for the executor;
everything else is rendered now, so a playbook that cannot work for this
service (no dependency to fail over to) is skipped with a reason instead of
failing half-way.

The plan id is derived from the directive id, so a redelivered directive yields
the same plan and deduplication is exact.

>>> plan_id_for("d-1") == plan_id_for("d-1"), plan_id_for("d-1") == plan_id_for("d-2")
(True, False)
>>> risk_score("low", 1, 0.9), risk_score("high", 3, 0.5)
(0.22, 1.0)
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import meta

from metaheal.agents.common.playbooks import IMPACT_ORDER, Playbook, Step
from metaheal.agents.executor.actuators import ActuatorError, get_actuator
from metaheal.agents.executor.templating import _ENV, TemplateError, render
from metaheal.config import ServiceSettings
from metaheal.errors import NoApplicablePlaybook
from metaheal.events import (
    AgenticPlan,
    Directive,
    PlanStep,
    PlanVerification,
    RiskAssessment,
)

logger = logging.getLogger(__name__)

_PLAN_NS = uuid.UUID("6f1d3c1e-7d38-4d0b-9a55-3b7f0c3c9e21")
_IMPACT_WEIGHT = {"low": 0.1, "medium": 0.4, "high": 0.7}

#: ``(service, playbook) -> reason`` or None; the trust policies' playbook filter.
PlaybookFilter = Callable[[str, str], str | None]


def plan_id_for(directive_id: str) -> str:
    return f"plan-{uuid.uuid5(_PLAN_NS, directive_id).hex[:16]}"


def risk_score(impact: str, blast_radius: int, confidence: float) -> float:
    """A 0..1 summary for humans: impact dominates, blast radius and doubt add."""
    score = _IMPACT_WEIGHT[impact] + 0.1 * min(blast_radius, 3) + 0.2 * (1 - confidence)
    return round(min(1.0, score), 2)


@dataclass
class PlanContext:
    """Template variables available when rendering a playbook.

    ``service`` (the configured service), ``directive``, ``root_cause`` (the
    advisors' top cause) and whatever the executor adds in ``extra`` (``dependency``:
    the upstream that looks worst on live telemetry).
    """

    service: ServiceSettings
    directive: Directive
    extra: dict[str, Any] = field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        root_causes = self.directive.ml_advice.root_causes
        return {
            "service": self.service.model_dump(),
            "directive": self.directive.model_dump(),
            "root_cause": root_causes[0] if root_causes else "unknown",
            **self.extra,
        }


def _deferred_names(template: str) -> set[str]:
    try:
        return meta.find_undeclared_variables(_ENV.parse(template))
    except Exception:
        return set()


def render_deferring(value: Any, context: dict[str, Any], later: set[str]) -> Any:
    """Render now, but keep strings that use a value from ``later`` (a step's ``save_as``)."""
    if isinstance(value, str):
        if "{{" in value and _deferred_names(value) & later:
            return value
        return render(value, context)
    if isinstance(value, dict):
        return {k: render_deferring(v, context, later) for k, v in value.items()}
    if isinstance(value, list):
        return [render_deferring(v, context, later) for v in value]
    return value


def _render_steps(steps: list[Step], context: dict[str, Any], later: set[str], *, check: bool) -> list[PlanStep]:
    out = []
    for i, step in enumerate(steps):
        params = render_deferring(step.params, context, later)
        if check and not _has_template(params):
            try:
                get_actuator(step.action).check(params)
            except ActuatorError as exc:
                raise TemplateError(f"step {i} ({step.action}): {exc}") from None
        out.append(
            PlanStep(
                action=step.action,
                params_json=json.dumps(params),
                timeout=step.timeout,
                save_as=step.save_as,
                idempotent=step.idempotent,
            )
        )
    return out


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def candidates(directive: Directive, playbooks: dict[str, Playbook]) -> list[str]:
    """Advisor ranking first, then the rest that apply (root-cause match, then prior success)."""
    ranked = [n for n in directive.ml_advice.recommended_playbooks if n in playbooks]
    causes = directive.ml_advice.root_causes
    rest = sorted(
        (n for n, pb in playbooks.items() if n not in ranked and pb.applies(directive.focus_area)),
        key=lambda n: (not playbooks[n].matches_root_cause(causes), -playbooks[n].prior_success, n),
    )
    return ranked + rest


def build_plan(
    directive: Directive,
    playbook: Playbook,
    service: ServiceSettings,
    *,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> AgenticPlan:
    """Render one playbook for one directive; raises ``TemplateError`` if it cannot be rendered."""
    ctx = PlanContext(service=service, directive=directive, extra=extra or {}).variables()
    later = {s.save_as for s in playbook.steps if s.save_as}
    steps = _render_steps(playbook.steps, ctx, later, check=True)
    rollback = _render_steps(playbook.rollback, ctx, later, check=True)
    verifications = [
        PlanVerification(type=v.type, spec_json=json.dumps(render_deferring(v.model_dump(), ctx, later)))
        for v in playbook.verifications
    ]
    estimated = sum(s.timeout for s in playbook.steps) + sum(v.within for v in playbook.verifications)
    confidence = directive.confidence
    notes = [
        f"impact {playbook.impact}",
        f"blast radius {playbook.blast_radius}",
        f"prior success {playbook.prior_success:.2f}",
    ]
    if not playbook.rollback:
        notes.append("no rollback steps: the change cannot be undone automatically")
    return AgenticPlan(
        plan_id=plan_id_for(directive.directive_id),
        directive_id=directive.directive_id,
        cycle_id=directive.cycle_id,
        ts=now if now is not None else time.time(),
        service=directive.service,
        selected_playbook=playbook.name,
        steps=steps,
        # always: whether a change is verified is the playbook's to say, never a record's (requires_verification
        # on a directive is kept for schema compatibility and ignored)
        verifications=verifications,
        rollback_plan=rollback,
        trust_approval_required=False,
        estimated_duration=float(estimated),
        risk_assessment=RiskAssessment(
            impact=playbook.impact,
            blast_radius=playbook.blast_radius,
            risk_score=risk_score(playbook.impact, playbook.blast_radius, confidence),
            notes=notes,
        ),
        confidence=confidence,
    )


def plan(
    directive: Directive,
    playbooks: dict[str, Playbook],
    service: ServiceSettings,
    *,
    policy_filter: PlaybookFilter | None = None,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[AgenticPlan, list[str]]:
    """The first candidate that applies, passes ``policy_filter`` and renders; plus the skip reasons.

    Raises :class:`NoApplicablePlaybook` when none does.
    """
    skipped: list[str] = []
    for name in candidates(directive, playbooks):
        pb = playbooks[name]
        if not pb.applies(directive.focus_area):
            skipped.append(f"{name}: does not apply to focus area {directive.focus_area}")
            continue
        reason = policy_filter(directive.service, name) if policy_filter else None
        if reason:
            skipped.append(f"{name}: {reason}")
            continue
        try:
            built = build_plan(directive, pb, service, now=now, extra=extra)
        except TemplateError as exc:
            skipped.append(f"{name}: cannot render for {service.name}: {exc}")
            continue
        logger.info(
            "plan_built directive=%s plan=%s playbook=%s skipped=%d",
            directive.directive_id,
            built.plan_id,
            name,
            len(skipped),
        )
        return built, skipped
    raise NoApplicablePlaybook(directive, skipped or ["no playbook applies"])


def impact_exceeds(impact: str, limit: str) -> bool:
    return IMPACT_ORDER[impact] > IMPACT_ORDER[limit]
