"""Trust check: guardrail levels and hard policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaheal.agents.common.playbooks import load_playbooks
from metaheal.agents.common.policy import Policies
from metaheal.agents.executor.planner import plan
from metaheal.config import FreezeWindow, ServiceSettings, Settings
from metaheal.events import Directive, DirectiveAdvice

PLAYBOOKS = load_playbooks(Path(__file__).resolve().parents[3] / "playbooks")
API = ServiceSettings(name="api", admin_url="http://a:1", dependencies=["db"])


def make_plan(playbook: str, confidence: float = 0.9, plan_id: str = "d1", service: str = "api"):
    d = Directive(
        directive_id=plan_id,
        cycle_id="c",
        ts=0,
        service=service,
        focus_area="error_spike" if playbook == "rollback_flag" else "latency_drift",
        guardrail_level="loose",
        ml_advice=DirectiveAdvice(recommended_playbooks=[playbook]),
        confidence=confidence,
        time_budget_seconds=60,
    )
    return plan(d, PLAYBOOKS, API.model_copy(update={"name": service}), extra={"dependency": "db"})[0]


@pytest.mark.parametrize(
    ("playbook", "level", "confidence", "verdict"),
    [
        ("scale_up_instances", "loose", 0.66, "auto_approve"),
        ("scale_up_instances", "loose", 0.60, "needs_approval"),
        ("scale_up_instances", "tight", 0.96, "auto_approve"),
        ("scale_up_instances", "tight", 0.90, "needs_approval"),
        ("rollback_flag", "tight", 0.99, "needs_approval"),
        ("rollback_flag", "maintain", 0.85, "auto_approve"),
        ("failover_dependency", "maintain", 0.85, "auto_approve"),
        ("failover_dependency", "tight", 0.99, "needs_approval"),
    ],
)
def test_guardrail_levels(playbook, level, confidence, verdict):
    d = Policies(Settings()).check(make_plan(playbook, confidence), level)
    assert d.verdict == verdict, d.reasons


def test_kill_switch_freeze_and_lists_deny_with_named_violations(tmp_path: Path):
    s = Settings()
    s.executor.freeze_windows = [FreezeWindow(start=100, end=200, services=["api"], reason="release")]
    s.executor.deny_playbooks = {"api": ["warm_cache"]}
    s.executor.allow_playbooks = {"*": ["scale_up_instances"]}
    s.executor.kill_switch_file = tmp_path / "stop"
    pol = Policies(s, clock=lambda: 150.0)
    d = pol.check(make_plan("warm_cache"), "loose")
    assert d.verdict == "deny" and d.violations == ["change_freeze", "deny_list"]
    assert "release" in d.reasons[0]
    pol.clock = lambda: 250.0
    assert pol.check(make_plan("restart_service"), "loose").violations == ["allow_list"]
    (tmp_path / "stop").touch()
    assert pol.check(make_plan("scale_up_instances"), "loose").violations == ["kill_switch"]


def test_rate_limit_counts_the_last_hour_only():
    s = Settings()
    s.executor.rate_limits = {"api": 2}
    now = [10_000.0]
    pol = Policies(s, clock=lambda: now[0])
    pol.record_action("api", now[0] - 4000)  # older than an hour
    pol.record_action("api", now[0] - 10)
    assert pol.check(make_plan("scale_up_instances", plan_id="a"), "loose").verdict == "auto_approve"
    pol.unlock("api", make_plan("scale_up_instances", plan_id="a").plan_id)
    pol.record_action("api", now[0])
    d = pol.check(make_plan("scale_up_instances", plan_id="b"), "loose")
    assert d.violations == ["rate_limit"] and "max 2" in d.reasons[0]
    now[0] += 3601
    assert pol.check(make_plan("scale_up_instances", plan_id="b"), "loose").verdict == "auto_approve"


def test_one_plan_at_a_time_per_service():
    pol = Policies(Settings())
    first, second = make_plan("scale_up_instances", plan_id="a"), make_plan("warm_cache", plan_id="b")
    assert pol.check(first, "loose").verdict == "auto_approve"
    d = pol.check(second, "loose")
    assert d.violations == ["lock"] and first.plan_id in d.reasons[0]
    assert pol.check(make_plan("warm_cache", plan_id="c", service="web"), "loose").verdict == "auto_approve"
    pol.unlock("api", first.plan_id)
    assert pol.check(second, "loose").verdict == "auto_approve"
