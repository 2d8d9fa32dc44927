"""The advisors weigh the same evidence the meta loop does: nothing from before the last fix nearby (no broker)."""

from __future__ import annotations

from metaheal.agents.advisors.service import AdvisorService
from metaheal.config import Settings
from metaheal.events import HealthWindow, SignalStats, SignedOutcome
from tests.agents.advisors.conftest import cycle_focus

NOW = 1_736_951_400.0


def _errors(service: str, end: float, mean: float) -> HealthWindow:
    return HealthWindow(
        service=service,
        window_start=end - 2,
        window_end=end,
        sample_count=4,
        signals=[
            SignalStats(
                signal="errors",
                metric="error_rate",
                count=4,
                mean=mean,
                p50=mean,
                p95=mean,
                max=mean,
                baseline_mean=0.002,
            )
        ],
    )


def test_evidence_from_before_a_fix_on_a_related_service_is_left_out() -> None:
    settings = Settings(
        kafka={"bootstrap": "127.0.0.1:1"},  # never contacted: no advice is published here
        services=[
            {"name": "web", "dependencies": ["api"]},
            {"name": "api", "dependencies": ["db"]},
            {"name": "db"},
            {"name": "billing"},
        ],
    )
    svc = AdvisorService(settings, log=None, playbooks={}, advisors=[])  # type: ignore[arg-type]
    try:
        for service in ("api", "db", "billing"):
            svc.observe(_errors(service, NOW - 20, 0.2))  # the last incident
        svc.observe(_errors("api", NOW - 2, 0.05))  # after the fix
        # the fix was on web, api's caller (a failover there changes what reaches api and db)
        svc.observe_outcome(
            SignedOutcome(
                outcome_id="o1",
                plan_id="p1",
                directive_id="d1",
                cycle_id="c0",
                service="web",
                playbook="failover_dependency",
                result="success",
                duration_seconds=3.0,
                verification_passed=True,
                trust_decision="auto_approved",
                actor="executor",
                actor_signature="ab" * 32,
                ts=NOW - 10,
            )
        )
        focus = cycle_focus(["api", "billing"], area="error_spike", ts=NOW)
        ctx = svc.context(focus)
        assert sorted((w.service, w.window_end) for w in ctx.health) == [
            ("api", NOW - 2),
            ("billing", NOW - 20),
        ]  # billing is unrelated to web: its window stays
        assert ctx.changed_at == {"api": NOW - 10, "billing": 0.0, "db": NOW - 10}
    finally:
        svc.producer.close()


def test_a_persisting_fault_stays_a_symptom_while_the_streams_baseline_learns_it() -> None:
    from metaheal.agents.advisors.anomaly import AnomalyAdvisor

    settings = Settings(kafka={"bootstrap": "127.0.0.1:1"}, services=[{"name": "api"}])
    svc = AdvisorService(settings, log=None, playbooks={}, advisors=[])  # type: ignore[arg-type]
    try:
        for i, (mean, base) in enumerate([(100.0, 100.0), (240.0, 150.0), (240.0, 200.0), (240.0, 235.0)]):
            svc.observe(
                HealthWindow(
                    service="api",
                    window_start=NOW - 10 + 2 * i,
                    window_end=NOW - 8 + 2 * i,
                    sample_count=4,
                    signals=[
                        SignalStats(
                            signal="latency",
                            metric="latency_p95_ms",
                            count=4,
                            mean=mean,
                            p50=mean,
                            p95=mean,
                            max=mean,
                            baseline_mean=base,
                        )
                    ],
                )
            )
        focus = cycle_focus(["api"], area="latency_drift", ts=NOW)
        ctx = svc.context(focus)
        AnomalyAdvisor().advise(ctx)
        # the streams baseline (235) has all but learnt the fault; judged against healthy (100) it is x2.4
        [s] = ctx.symptoms
        assert (s.metric, s.direction, round(s.size, 2)) == ("latency_p95_ms", 1, 1.4)
    finally:
        svc.producer.close()
