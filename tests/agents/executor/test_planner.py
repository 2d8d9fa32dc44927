"""Planner: playbook choice, rendering, deferred templates, risk and estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaheal.agents.common.playbooks import load_playbooks
from metaheal.agents.executor.planner import (
    NoApplicablePlaybook,
    candidates,
    plan,
    plan_id_for,
)
from metaheal.agents.executor.templating import render
from metaheal.config import ServiceSettings
from metaheal.events import Directive, DirectiveAdvice

PLAYBOOKS = load_playbooks(Path(__file__).resolve().parents[3] / "playbooks")
API = ServiceSettings(name="api", admin_url="http://api-admin:8080", dependencies=["db"])


def directive(focus="latency_drift", causes=("cpu_saturation",), ranked=(), **kw) -> Directive:
    return Directive(
        directive_id=kw.pop("directive_id", "d1"),
        cycle_id="c1",
        ts=0.0,
        service="api",
        focus_area=focus,
        guardrail_level="maintain",
        ml_advice=DirectiveAdvice(root_causes=list(causes), recommended_playbooks=list(ranked)),
        confidence=kw.pop("confidence", 0.9),
        time_budget_seconds=300,
        **kw,
    )


def test_advisor_ranking_comes_first_then_root_cause_matches():
    d = directive(causes=["cache_miss_rate_high"], ranked=["restart_service"])
    order = candidates(d, PLAYBOOKS)
    assert order[0] == "restart_service" and order[1] == "warm_cache"
    assert "rollback_flag" not in order  # error_spike only


def test_plan_renders_now_and_defers_step_outputs():
    p, skipped = plan(directive(ranked=["scale_up_instances"]), PLAYBOOKS, API, now=1.0)
    assert skipped == [] and p.selected_playbook == "scale_up_instances" and p.plan_id == plan_id_for("d1")
    steps = [json.loads(s.params_json) for s in p.steps]
    assert steps[0]["url"] == "http://api-admin:8080/capacity"
    assert steps[2]["value"] == "{{ capacity.instances + 2 }}"  # needs step 0's output
    assert render(steps[2], {"capacity": {"instances": 3}})["value"] == 5
    assert json.loads(p.rollback_plan[0].params_json) == {"url": "http://api-admin:8080/scale", "json": {"delta": -2}}
    assert p.estimated_duration == 10 + 60 + 30 + 60 + 10
    assert p.risk_assessment.impact == "low" and 0 < p.risk_assessment.risk_score < 0.5


def test_unrenderable_and_policy_filtered_playbooks_are_skipped_with_reasons():
    no_deps = ServiceSettings(name="api", admin_url="http://a:1")
    p, skipped = plan(
        directive(focus="dependency_health", causes=["upstream_outage"]), PLAYBOOKS, API, extra={"dependency": "db"}
    )
    assert p.selected_playbook == "failover_dependency"
    assert json.loads(p.steps[0].params_json)["json"] == {"dependency": "db"}
    assert json.loads(p.rollback_plan[0].params_json)["json"] == {"dependency": "db"}
    # without warm_cache (it also applies to dependency health: misses can overload the backing store),
    # the failover that cannot be rendered leaves nothing to plan
    only_failover = {n: pb for n, pb in PLAYBOOKS.items() if n != "warm_cache"}
    with pytest.raises(NoApplicablePlaybook, match="'dependency' is undefined"):
        plan(directive(focus="dependency_health", causes=["upstream_outage"]), only_failover, no_deps)
    p, skipped = plan(
        directive(ranked=["scale_up_instances"]),
        PLAYBOOKS,
        API,
        policy_filter=lambda s, n: "denied" if n == "scale_up_instances" else None,
    )
    assert p.selected_playbook != "scale_up_instances" and skipped[0] == "scale_up_instances: denied"


def test_ranked_playbook_that_does_not_apply_is_skipped():
    p, skipped = plan(directive(focus="capacity_strain", ranked=["rollback_flag"]), PLAYBOOKS, API)
    assert p.selected_playbook == "scale_up_instances"
    assert skipped == ["rollback_flag: does not apply to focus area capacity_strain"]


def test_verification_is_never_skipped_on_the_directive_s_word():
    p, _ = plan(directive(ranked=["warm_cache"], requires_verification=False), PLAYBOOKS, API)
    assert (
        p.verifications and p.verifications == plan(directive(ranked=["warm_cache"]), PLAYBOOKS, API)[0].verifications
    )
