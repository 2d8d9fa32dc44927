"""Playbook loading: the default set, and errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaheal.agents.common.playbooks import (
    PlaybookError,
    load_playbooks,
    parse_playbook,
)
from metaheal.agents.common.policy import guardrail_reasons
from metaheal.config import Settings

DEFAULTS = Path(__file__).resolve().parents[3] / "playbooks"

GOOD = """\
name: demo
description: demo
applies_to: {focus_areas: [latency_drift], root_causes: [unknown]}
impact: low
blast_radius: 1
prior_success: 0.5
steps:
  - {action: http.get, params: {url: "http://x/capacity"}, timeout: 5}
  - {action: http.post, params: {url: "http://x/scale"}, timeout: 5}
"""


def test_default_set_is_complete_and_matches_the_design():
    pbs = load_playbooks(DEFAULTS)
    assert set(pbs) == {"scale_up_instances", "warm_cache", "restart_service", "rollback_flag", "failover_dependency"}
    applies = {n: (set(p.applies_to.focus_areas), set(p.applies_to.root_causes)) for n, p in pbs.items()}
    assert applies["scale_up_instances"][0] == {"latency_drift", "capacity_strain"}
    assert {"cpu_saturation", "database_slow_query", "traffic_surge"} <= applies["scale_up_instances"][1]
    assert applies["warm_cache"] == (
        {"latency_drift", "dependency_health"},
        {"cache_miss_rate_high", "database_slow_query"},
    )
    assert applies["restart_service"] == ({"error_spike", "latency_drift"}, {"memory_leak", "unknown"})
    assert applies["rollback_flag"] == ({"error_spike"}, {"bad_deployment"})
    assert applies["failover_dependency"] == (
        {"dependency_health", "latency_drift", "error_spike"},
        {"upstream_outage", "database_slow_query"},
    )
    for p in pbs.values():
        kinds = {v.type for v in p.verifications}
        assert kinds == {"metric_threshold", "http_check"}, p.name


def test_default_guardrail_outcomes():
    pbs, s = load_playbooks(DEFAULTS), Settings()
    scale, flag = pbs["scale_up_instances"], pbs["rollback_flag"]
    assert guardrail_reasons(s, "loose", confidence=0.7, impact=scale.impact, blast_radius=scale.blast_radius) == []
    assert flag.impact == "medium"
    assert guardrail_reasons(s, "tight", confidence=0.99, impact=flag.impact, blast_radius=flag.blast_radius)


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            ("timeout: 5}\n  - {action: http.post", "timeout: -1}\n  - {action: http.post"),
            "demo.yaml:8: steps.0.timeout: Input should be greater than 0 (got -1)",
        ),
        (("action: http.post", "action: ssh"), "demo.yaml:9: steps.1.action: Value error, unknown action 'ssh'"),
        (
            ("focus_areas: [latency_drift]", "focus_areas: [latency_drfit]"),
            "demo.yaml:3: applies_to.focus_areas: Value error, unknown focus area(s) ['latency_drfit']",
        ),
        (
            ("prior_success: 0.5", "prior_success: 1.5"),
            "demo.yaml:6: prior_success: Input should be less than or equal to 1",
        ),
        (("blast_radius: 1\n", "blast_radius: 1\nfoo: bar\n"), "demo.yaml:6: foo: Extra inputs are not permitted"),
    ],
)
def test_errors_name_file_line_and_field(mutation, expected):
    old, new = mutation
    with pytest.raises(PlaybookError) as err:
        parse_playbook(GOOD.replace(old, new), source="demo.yaml")
    assert str(err.value).startswith(expected), str(err.value)


def test_verification_errors_point_into_the_list():
    text = GOOD + "verifications:\n  - {type: metric_threshold, metric: latency_ms, op: '=>', value: 1}\n"
    with pytest.raises(PlaybookError, match=r"demo.yaml:11: verifications.0.op: Input should be"):
        parse_playbook(text, source="demo.yaml")


def test_missing_field_and_bad_yaml():
    with pytest.raises(PlaybookError, match=r"^x.yaml:1: impact: Field required"):
        parse_playbook(GOOD.replace("impact: low\n", ""), source="x.yaml")
    with pytest.raises(PlaybookError, match=r"^x.yaml:\d+: invalid YAML"):
        parse_playbook("name: [unclosed\n", source="x.yaml")


def test_folder_reports_every_broken_file_and_duplicates(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    (tmp_path / "c.yaml").write_text(GOOD.replace("impact: low", "impact: huge"))
    with pytest.raises(PlaybookError) as err:
        load_playbooks(tmp_path)
    msg = str(err.value)
    assert "duplicate playbook 'demo'" in msg and f"{tmp_path / 'c.yaml'}:4: impact" in msg
    with pytest.raises(PlaybookError, match="playbook folder not found"):
        load_playbooks(tmp_path / "nope")


def test_on_inconclusive_defaults_to_ask_with_expiry_keep_and_rejects_anything_else():
    pb = parse_playbook(GOOD, source="demo.yaml")
    assert (pb.on_inconclusive, pb.verdict_expiry, pb.verdict_expiry_seconds) == ("ask", "keep", None)
    pb = parse_playbook(GOOD + "on_inconclusive: rollback\nverdict_expiry_seconds: 120\n", source="demo.yaml")
    assert (pb.on_inconclusive, pb.verdict_expiry_seconds) == ("rollback", 120)
    with pytest.raises(PlaybookError, match=r"demo.yaml:10: on_inconclusive: Input should be 'keep', 'rollback'"):
        parse_playbook(GOOD + "on_inconclusive: maybe\n", source="demo.yaml")


@pytest.mark.parametrize(
    "value", ["baseline", "baseline * 1.2", "baseline + 50", "baseline * 2 - 0.01", 200, "{{ x }}"]
)
def test_relative_thresholds_load(value):
    text = (
        GOOD + f'verifications:\n  - {{type: metric_threshold, metric: latency_p95_ms, op: "<=", value: "{value}"}}\n'
    )
    assert parse_playbook(text, source="rel.yaml").verifications[0].value == str(value)


@pytest.mark.parametrize("value", ["baseline ** 2", "__import__('os').system('true')", "base * 2", "baseline * x"])
def test_a_bad_relative_threshold_fails_at_load_naming_the_field(value):
    text = (
        GOOD + f'verifications:\n  - {{type: metric_threshold, metric: latency_p95_ms, op: "<=", value: "{value}"}}\n'
    )
    with pytest.raises(PlaybookError) as err:
        parse_playbook(text, source="rel.yaml")
    assert str(err.value).startswith("rel.yaml:11: verifications.0.value: ")
    assert "baseline * <factor>" in str(err.value)
