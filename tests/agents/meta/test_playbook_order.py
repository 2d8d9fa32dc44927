"""Playbook order on a fresh system: the diagnosis decides before the priors do."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaheal.agents.meta.confidence import focus_playbooks
from metaheal.agents.meta.focus import FocusDecision
from metaheal.agents.meta.loop import MetaLoop
from metaheal.config import Settings
from metaheal.errors import PlaybookError
from metaheal.events import CycleFocus, MLAdvice, RankedPlaybook, RootCauseCandidate

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"


def _loop() -> MetaLoop:
    return MetaLoop(Settings(playbooks=PLAYBOOKS))


def _combine(loop: MetaLoop, focus: str, causes: dict[str, float], ranked_confidence: float = 0.1) -> list[str]:
    cf = CycleFocus(
        cycle_id="c1",
        ts=1.0,
        focus_area=focus,
        confidence=0.9,
        reasoning=[],
        guardrail_adjustment="maintain",
        guardrail_level="maintain",
        playbook_priorities=loop.playbooks[focus],
        time_budget_seconds=60,
        target_services=["api_cluster"],
    )
    decision = FocusDecision(focus_area=focus, confidence=0.9, reasoning=[], target_services=["api_cluster"], scores={})
    advice = MLAdvice(
        cycle_id="c1",
        ts=1.0,
        root_cause_candidates=[
            RootCauseCandidate(cause=c, probability=p, service="api_cluster") for c, p in causes.items()
        ],
        # a thin-evidence ranker that (wrongly) likes scale-up best
        ranked_playbooks=[
            RankedPlaybook(name=n, score=0.9 if n == "scale_up_instances" else 0.5, confidence=ranked_confidence)
            for n in loop.playbooks[focus]
        ],
    )
    _, advice_out, _note = loop._combine("api_cluster", cf, decision, advice)
    return advice_out.recommended_playbooks


@pytest.mark.parametrize(
    ("focus", "causes", "first"),
    [
        ("latency_drift", {"cache_miss_rate_high": 0.55, "cpu_saturation": 0.2}, "warm_cache"),
        ("latency_drift", {"cpu_saturation": 0.6, "database_slow_query": 0.1}, "scale_up_instances"),
        ("latency_drift", {"database_slow_query": 0.6, "cache_miss_rate_high": 0.3}, "warm_cache"),
        ("latency_drift", {"database_slow_query": 0.6}, "failover_dependency"),  # the specific fix, not scale-up
        ("error_spike", {"upstream_outage": 0.5, "bad_deployment": 0.2}, "failover_dependency"),
        ("error_spike", {"bad_deployment": 0.7}, "rollback_flag"),
        ("capacity_strain", {"traffic_surge": 0.6}, "scale_up_instances"),
    ],
)
def test_thin_ranker_evidence_orders_playbooks_by_the_diagnosis(
    focus: str, causes: dict[str, float], first: str
) -> None:
    assert _combine(_loop(), focus, causes)[0] == first


def test_without_a_diagnosis_the_learned_order_stands_and_a_confident_ranker_wins() -> None:
    loop = _loop()
    assert _combine(loop, "latency_drift", {}) == loop.playbooks["latency_drift"]
    assert (
        _combine(loop, "latency_drift", {"cache_miss_rate_high": 0.9}, ranked_confidence=0.9)[0] == "scale_up_instances"
    )


def test_a_playbook_folder_that_cannot_load_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="playbook folder not found"):
        focus_playbooks(Settings(playbooks=tmp_path / "missing"))
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    with pytest.raises(PlaybookError, match=r"bad\.yaml"):
        focus_playbooks(Settings(playbooks=tmp_path))
