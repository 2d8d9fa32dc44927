"""What the meta loop counts as evidence after a fix (pure: no broker)."""

from __future__ import annotations

from typing import Any

from metaheal.agents.meta.focus import decide_focus
from metaheal.agents.meta.learning import Learner
from metaheal.agents.meta.observations import Observations
from metaheal.config import Settings
from metaheal.events import AnomalyScore, HealthWindow

NOW = 1_736_951_400.0


def test_a_fix_on_a_dependency_retires_its_callers_view_of_it(h: Any) -> None:
    obs = Observations(Settings(), Learner())
    web = h.window(
        "web",
        h.stats("dependency", "dependency_error_rate", mean=0.15, base=0.002, dependency="api_cluster"),
        h.stats("latency", "latency_p95_ms", mean=120, base=118),
        end=NOW - 5,
        seconds=2,
    )
    obs.ingest("health", web, NOW)
    obs.ingest(
        "anomalies",
        AnomalyScore(
            service="web",
            metric="dependency_error_rate",
            signal="dependency",
            value=0.18,
            baseline=0.002,
            score=0.999999,
            threshold=0.999,
            crossed=True,
            model="m",
            ts=NOW - 5,
            window_start=NOW - 7,
            window_end=NOW - 5,
            labels={"dependency": "api_cluster"},
        ),
        NOW,
    )
    assert decide_focus(obs.evidence(NOW)).focus_area == "dependency_health"
    obs.last_outcome_ts["api_cluster"] = NOW - 3  # rollback_flag verified on api_cluster after those samples
    ev = obs.evidence(NOW)
    assert ev.anomalies == []
    [w] = ev.health
    assert isinstance(w, HealthWindow) and [s.metric for s in w.signals] == ["latency_p95_ms"]  # web's own signal stays
    assert decide_focus(ev).focus_area == "routine_maintenance"


def test_a_persisting_fault_stays_evidence_while_the_streams_baseline_learns_it(h: Any) -> None:
    obs = Observations(Settings(), Learner())
    for i, (mean, base) in enumerate([(0.002, 0.002), (0.002, 0.002), (0.18, 0.002), (0.18, 0.06), (0.18, 0.15)]):
        w = h.window(
            "api", h.stats("errors", "error_rate", mean=mean, base=base, count=4), end=NOW - 10 + 2 * i, seconds=2
        )
        obs.ingest("health", w, NOW)
    # the streams baseline has nearly caught up with the fault (0.15): judged against the last healthy one it is a spike
    d = decide_focus(obs.evidence(NOW))
    assert (d.focus_area, d.target_services) == ("error_spike", ["api"])
    assert "baseline 0.002" in d.reasoning[0]
    # once healthy again, the reference follows the streams baseline again
    obs.ingest(
        "health",
        h.window("api", h.stats("errors", "error_rate", mean=0.002, base=0.1, count=4), end=NOW, seconds=2),
        NOW,
    )
    assert decide_focus(obs.evidence(NOW)).focus_area == "routine_maintenance"


def test_a_fix_on_a_dependency_retires_its_callers_symptoms(h: Any) -> None:
    settings = Settings(services=[{"name": "web", "dependencies": ["api_cluster"]}, {"name": "api_cluster"}])
    obs = Observations(settings, Learner())
    for svc, v in (("web", 260.0), ("api_cluster", 240.0)):
        obs.ingest(
            "health",
            h.window(
                svc, h.stats("latency", "latency_p95_ms", mean=v, base=150, p95=v, base_p95=150), end=NOW - 5, seconds=2
            ),
            NOW,
        )
    assert decide_focus(obs.evidence(NOW)).target_services == ["api_cluster"]
    obs.last_outcome_ts["api_cluster"] = NOW - 3  # scaled after those windows: web's latency was api_cluster's
    assert decide_focus(obs.evidence(NOW)).focus_area == "routine_maintenance"


def test_a_fix_through_the_callers_retires_the_fixed_dependencys_own_windows(h: Any) -> None:
    # db's slow query was fixed by failing its caller over to the replica: the outcome is on api_cluster
    settings = Settings(
        services=[
            {"name": "web", "dependencies": ["api_cluster"]},
            {"name": "api_cluster", "dependencies": ["db", "cache"]},
            {"name": "db"},
            {"name": "cache"},
        ]
    )
    obs = Observations(settings, Learner())

    def db_window(end: float, p95: float) -> HealthWindow:
        return h.window(
            "db", h.stats("latency", "latency_p95_ms", mean=p95, base=40, p95=p95, base_p95=40), end=end, seconds=2
        )

    obs.ingest("health", db_window(NOW - 5, 240.0), NOW)
    obs.ingest(
        "health",
        h.window(
            "api_cluster",
            h.stats("dependency", "dependency_latency_ms", mean=240, base=40, p95=240, base_p95=40, dependency="db"),
            end=NOW - 5,
            seconds=2,
        ),
        NOW,
    )
    assert decide_focus(obs.evidence(NOW), 0.7).target_services == ["api_cluster"]  # routed around the leaf
    obs.last_outcome_ts["api_cluster"] = NOW - 3  # failover verified after those windows
    assert obs.last_change("db") == NOW - 3
    d = decide_focus(obs.evidence(NOW))
    assert d.focus_area == "routine_maintenance" and d.target_services == []  # no second directive, to db
    # a window taken after the fix is evidence again
    obs.ingest("health", db_window(NOW, 240.0), NOW)
    assert decide_focus(obs.evidence(NOW)).target_services == ["db"]


def test_the_next_incident_is_judged_against_healthy_not_against_the_tail_of_the_last_one(h: Any) -> None:
    obs = Observations(Settings(), Learner())
    # the last incident is over (0.002 errors) but the streams baseline still carries it (0.03)
    obs.ingest(
        "health",
        h.window("api", h.stats("errors", "error_rate", mean=0.002, base=0.03, count=4), end=NOW - 4, seconds=2),
        NOW,
    )
    # a new spike, six times the floor of healthy, while the streams baseline is still at 0.04
    obs.ingest(
        "health",
        h.window("api", h.stats("errors", "error_rate", mean=0.06, base=0.04, count=4), end=NOW - 2, seconds=2),
        NOW,
    )
    d = decide_focus(obs.evidence(NOW))
    assert (d.focus_area, d.target_services) == ("error_spike", ["api"])
    assert "baseline 0.002" in d.reasoning[0]
