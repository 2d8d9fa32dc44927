from __future__ import annotations

from metaheal.agents.advisors.base import Outcome
from metaheal.agents.advisors.playbook_ranker import PlaybookRanker
from metaheal.agents.common.policy import Policies
from metaheal.config import GuardrailSettings, Settings

DAY = 86400.0


def _catalogue(make_playbook):
    return {
        "a": make_playbook("a", ["cache_miss_rate_high"], prior=0.5),
        "b": make_playbook("b", ["cache_miss_rate_high"], prior=0.7),
    }


def _outcome(i, service, playbook, ok, ts=0.0, cause="cache_miss_rate_high"):
    return Outcome(
        f"{service}-{playbook}-{i}",
        service,
        playbook,
        "success" if ok else "failed",
        ts,
        root_cause=cause,
        verification_passed=ok,
    )


def test_learns_which_playbook_fixes_a_cause_per_service(make_playbook) -> None:
    r = PlaybookRanker(_catalogue(make_playbook), explore=False)

    def rank(svc: str) -> list[str]:
        return [p.name for p in r.rank(svc, "latency_drift", "cache_miss_rate_high", now=0.0)]

    assert rank("api") == ["b", "a"]  # declared priors, day one
    for i in range(6):
        r.learn(_outcome(i, "api", "a", True))
        r.learn(_outcome(i, "api", "b", False))
    assert rank("api") == ["a", "b"]
    assert rank("web") == ["b", "a"], "what fixed api says nothing about web"
    top = r.rank("api", "latency_drift", "cache_miss_rate_high", now=0.0)[0]
    fresh = r.rank("web", "latency_drift", "cache_miss_rate_high", now=0.0)[0]
    assert top.confidence > 0.5 > fresh.confidence == 0.0


def test_same_winner_with_thompson_sampling_once_evidence_is_strong(make_playbook) -> None:
    r = PlaybookRanker(_catalogue(make_playbook), explore=True, seed=3)
    for i in range(15):
        r.learn(_outcome(i, "api", "a", True))
        r.learn(_outcome(i, "api", "b", False))
    assert all(r.rank("api", "latency_drift", "cache_miss_rate_high", now=0.0)[0].name == "a" for _ in range(50))


def test_thin_evidence_explores_but_the_same_evidence_gives_the_same_choice(make_playbook) -> None:
    r = PlaybookRanker(_catalogue(make_playbook), explore=True, seed=1)

    def first(service: str) -> str:
        return r.rank(service, "latency_drift", "cache_miss_rate_high", now=0.0)[0].name

    # thin evidence: across services (each its own evidence) both playbooks get their chance
    assert {first(f"svc{i}") for i in range(200)} == {"a", "b"}
    # the same evidence, asked again (or after a restart, by a new ranker with the same seed): the same choice
    assert all(first(f"svc{i}") == first(f"svc{i}") for i in range(50))
    again = PlaybookRanker(_catalogue(make_playbook), explore=True, seed=1)
    assert [first(f"svc{i}") for i in range(50)] == [
        again.rank(f"svc{i}", "latency_drift", "cache_miss_rate_high", now=0.0)[0].name for i in range(50)
    ]
    # new evidence, a new draw: learning one outcome can change the order
    changed = 0
    for i in range(50):
        before = first(f"svc{i}")
        r.learn(_outcome(i, f"svc{i}", "a", True))
        changed += first(f"svc{i}") != before
    assert changed > 0


def test_exploration_never_promotes_a_riskier_playbook(make_playbook) -> None:
    pbs = {
        "safe": make_playbook("safe", ["cache_miss_rate_high"], prior=0.7),
        "risky": make_playbook("risky", ["cache_miss_rate_high"], prior=0.5, impact="medium"),
    }
    r = PlaybookRanker(pbs, explore=True, seed=1)
    firsts = {r.rank(f"svc{i}", "latency_drift", "cache_miss_rate_high", now=0.0)[0].name for i in range(200)}
    assert firsts == {"safe"}


def test_recency_decay_lets_recent_failures_win(make_playbook) -> None:
    r = PlaybookRanker(_catalogue(make_playbook), explore=False, half_life_hours=24)
    for i in range(10):
        r.learn(_outcome(i, "api", "a", True, ts=0.0))
    assert r.rank("api", "latency_drift", "cache_miss_rate_high", now=1.0)[0].name == "a"
    for i in range(4):
        r.learn(_outcome(100 + i, "api", "a", False, ts=30 * DAY))
    assert r.rank("api", "latency_drift", "cache_miss_rate_high", now=30 * DAY)[0].name == "b"


def test_never_ranks_what_the_trust_check_would_certainly_refuse(make_playbook) -> None:
    pbs = {
        "ok": make_playbook("ok", ["x"], prior=0.1),
        "huge": make_playbook("huge", ["x"], prior=0.99, impact="high"),
        "wide": make_playbook("wide", ["x"], prior=0.99, blast_radius=9),
        "denied": make_playbook("denied", ["x"], prior=0.99),
        "denied_all": make_playbook("denied_all", ["x"], prior=0.99),
    }
    settings = Settings.model_validate(
        {"executor": {"deny_playbooks": {"api": ["denied", "denied_all"], "*": ["denied_all"]}}}
    )
    r = PlaybookRanker(pbs, GuardrailSettings(), policy=Policies(settings).playbook_denied, seed=0)
    for _ in range(100):
        assert [p.name for p in r.rank("api", "latency_drift", "x", now=0.0)] == ["ok"]
    assert "denied" in [p.name for p in r.rank("web", "latency_drift", "x", now=0.0)]
    # a looser configured level makes the high-impact playbook possible (it may need approval, not refusal)
    loose = GuardrailSettings.model_validate(
        {"levels": {"loose": {"auto_approve_confidence": 0.5, "max_blast_radius": 3, "max_impact": "high"}}}
    )
    assert "huge" in [p.name for p in PlaybookRanker(pbs, loose).rank("api", "latency_drift", "x", now=0.0)]


def test_applicability_and_diagnosis_fit(make_playbook) -> None:
    pbs = {
        "cache": make_playbook("cache", ["cache_miss_rate_high"], prior=0.6),
        "generic": make_playbook("generic", ["unknown"], prior=0.7),
        "errors_only": make_playbook("errors_only", ["bad_deployment"], prior=0.9, focus=("error_spike",)),
    }
    r = PlaybookRanker(pbs, explore=False)
    names = [p.name for p in r.rank("api", "latency_drift", "cache_miss_rate_high", now=0.0)]
    assert names == ["cache", "generic"], "a playbook for the diagnosed cause beats one that only fits the focus"
    assert [p.name for p in r.rank("api", "latency_drift", "unknown", now=0.0)] == ["generic", "cache"]


def test_outcomes_count_once_and_refusals_teach_nothing(make_playbook) -> None:
    r = PlaybookRanker(_catalogue(make_playbook), explore=False)
    o = _outcome(1, "api", "a", True)
    assert r.learn_many([o, o, o]) == 1
    r.learn(Outcome("d1", "api", "b", "denied", 0.0, root_cause="cache_miss_rate_high"))
    r.learn(Outcome("e1", "api", "b", "expired", 0.0, root_cause="cache_miss_rate_high"))
    ranked = {p.name: p for p in r.rank("api", "latency_drift", "cache_miss_rate_high", now=0.0)}
    assert ranked["a"].evidence == 1.0 and ranked["b"].evidence == 0.0
