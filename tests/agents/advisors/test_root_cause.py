from __future__ import annotations

from metaheal.agents.advisors.base import Outcome
from metaheal.agents.advisors.root_cause import RootCauseSuggester


def test_failing_dependency_explains_its_callers(make_sym) -> None:
    rc = RootCauseSuggester(graph={"checkout": ["payments"], "payments": []})
    syms = [
        make_sym("checkout", "error_rate", "errors"),
        make_sym("checkout", "dependency_errors", "dependency", dependency="payments"),
        make_sym("payments", "error_rate", "errors"),
        make_sym("payments", "deployments", "change"),
    ]
    cands = rc.candidates_for(["checkout"], syms)
    top = cands[0]
    # checkout's actionable cause is upstream; the deployment on payments is what is wrong there
    assert (top.cause, top.service) == ("upstream_outage", "checkout")
    assert "checkout depends on payments" in top.evidence and any("payments: bad_deployment" in e for e in top.evidence)
    located = next(c for c in cands if c.service == "payments")
    assert located.cause == "bad_deployment" and located.probability > 0.3
    assert all(c.probability < 0.1 for c in cands if c.cause == "bad_deployment" and c.service == "checkout")


def test_dependency_graph_alone_marks_upstream(make_sym) -> None:
    rc = RootCauseSuggester(graph={"web": ["api"]})
    syms = [make_sym("web", "error_rate", "errors"), make_sym("api", "error_rate", "errors")]
    f = rc.features_for(["web"], syms)
    assert f["web"]["dep_errors_up"] > 0
    top = rc.candidates_for(["web"], syms, f)[0]
    assert (top.cause, top.service) == ("upstream_outage", "web") and "web depends on api" in top.evidence


def test_weak_evidence_reports_unknown(make_sym) -> None:
    rc = RootCauseSuggester()
    cands = rc.candidates_for(["api"], [make_sym("api", "latency_p95_ms", "latency", strength=0.3, size=0.1)])
    assert cands[0].cause == "unknown"


def _learn(rc: RootCauseSuggester, syms, cause: str, n: int, *, ok: bool = True, playbook: str = "pb") -> None:
    feats = rc.features_for(["api"], syms)
    for i in range(n):
        rc.learn(
            Outcome(
                f"{cause}-{i}-{ok}",
                "api",
                playbook,
                "success" if ok else "failed",
                float(i),
                root_cause=cause,
                verification_passed=ok,
            ),
            feats,
        )


def test_learns_a_pattern_the_map_does_not_know(make_sym) -> None:
    # probes report OOM errors and nothing else: the map has no rule for it
    syms = [make_sym("api", "probe_errors", "errors", error_type="oom")]
    rc = RootCauseSuggester()
    assert rc.candidates_for(["api"], syms)[0].cause != "memory_leak"
    _learn(rc, syms, "memory_leak", 10, ok=False)  # failed fixes confirm nothing
    assert rc.learned == 0
    # other causes confirmed on their own patterns, so the model has something to contrast with
    _learn(
        rc, [make_sym("api", "error_rate", "errors"), make_sym("api", "deployments", "change")], "bad_deployment", 20
    )
    _learn(rc, syms, "memory_leak", 20)
    top = rc.candidates_for(["api"], syms)[0]
    assert top.cause == "memory_leak" and top.probability > 0.4
    # and a quiet service stays unknown however much has been learned
    assert rc.candidates_for(["api"], [])[0].cause == "unknown"


def test_fix_confirms_the_cause_its_playbook_treats(make_sym) -> None:
    rc = RootCauseSuggester(
        playbook_causes={
            "warm_cache": ["cache_miss_rate_high"],
            "scale_up_instances": ["cpu_saturation", "traffic_surge"],
        }
    )
    ok = dict(result="success", ts=0.0, verification_passed=True)
    # diagnosed cpu_saturation, but warm_cache fixed it: the cache was the cause
    assert (
        rc.confirmed_cause(Outcome("a", "api", "warm_cache", root_cause="cpu_saturation", **ok))
        == "cache_miss_rate_high"
    )
    assert (
        rc.confirmed_cause(Outcome("b", "api", "scale_up_instances", root_cause="traffic_surge", **ok))
        == "traffic_surge"
    )
    # a fix that treats several causes, none of them the diagnosis, singles nothing out
    assert rc.confirmed_cause(Outcome("c", "api", "scale_up_instances", root_cause="memory_leak", **ok)) is None
    assert rc.confirmed_cause(Outcome("d", "api", "warm_cache", "failed", 0.0, root_cause="x")) is None


def test_probabilities_stay_a_distribution_after_learning(patterns) -> None:
    rc = RootCauseSuggester()
    for cause, syms in patterns.items():
        _learn(rc, syms, cause, 3)
    for syms in patterns.values():
        d = rc.distribution(rc.features_for(["api"], syms)["api"])
        assert abs(sum(d.values()) - 1.0) < 1e-9 and all(0 <= v <= 1 for v in d.values())
    # still right on every pattern after learning from them
    assert all(rc.candidates_for(["api"], s)[0].cause == c for c, s in patterns.items())


def test_change_counters_scored_by_the_streams_count_as_changes(make_sym) -> None:
    # the streams map `deployments`/`config_changes` to no signal kind; the name is what matters
    f = RootCauseSuggester().features_for(
        ["api"], [make_sym("api", "deployments", None), make_sym("api", "config_changes", None)]
    )["api"]
    assert f["deploy_recent"] > 0 and f["config_change_recent"] > 0
