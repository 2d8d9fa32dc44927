"""Faults for the simulated fleet, and named scenarios built from them.

A fault perturbs the *inputs* of the fleet model (traffic, a service's own latency or
error rate, a cache's contents, a deployment) and reads the fleet's state to decide
how much it still bites. So the right remediation neutralises it for a physical
reason (failover moves callers to a healthy standby; a flag rollback removes the bad
code path; new instances absorb the traffic once ready) and a wrong one does not (a
restart keeps the bad flag; scaling does not bring evicted keys back).

>>> sorted(FAULTS)
['bad_deployment', 'cache_eviction_storm', 'db_slow_query', 'instance_slowdown', 'metrics_agent_crash',
 'traffic_surge', 'upstream_outage']
>>> [f.name for f in scenario_faults("latency_drift")]
['instance_slowdown']
>>> scenario_faults("nope")
Traceback (most recent call last):
...
ValueError: scenario: unknown 'nope'; known: bad_deployment, bad_deployment_nohint, ..., upstream_outage
"""

from __future__ import annotations

from typing import Any, ClassVar

from metaheal.simulator.fleet import Effects, Fleet


class Fault:
    """Base class: a named perturbation on one target service."""

    name: ClassVar[str]
    default_target: ClassVar[str]
    #: playbooks that neutralise the fault fully; for documentation and the demo's checks
    fixed_by: ClassVar[tuple[str, ...]] = ()

    def __init__(self, target: str | None = None, hide: tuple[str, ...] | list[str] = ()) -> None:
        self.target = target or self.default_target
        self.started_at: float | None = None
        #: metrics the target never publishes in this scenario (a fleet without the hint this fault leaves)
        self.hide = tuple(hide)

    def on_inject(self, fleet: Fleet, now: float) -> None:
        """One-off effects at injection time (a deployment, an eviction)."""

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        """Perturb the model for instant ``now``."""

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started_at is None else max(0.0, now - self.started_at)

    def describe(self) -> dict[str, Any]:
        return {"fault": self.name, "target": self.target, "started_at": self.started_at}


class TrafficSurge(Fault):
    """More requests at the edge (ramped over ``ramp_seconds``); api_cluster is the bottleneck.

    Nothing is broken, so only capacity helps: scaling the saturated service up.
    """

    name = "traffic_surge"
    default_target = "web"
    fixed_by = ("scale_up_instances",)

    def __init__(
        self,
        target: str | None = None,
        factor: float = 1.9,
        ramp_seconds: float = 0.0,
        hide: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__(target, hide)
        self.factor = factor
        self.ramp_seconds = ramp_seconds

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        ramp = 1.0 if self.ramp_seconds <= 0 else min(1.0, self.elapsed(now) / self.ramp_seconds)
        fx.ingress *= 1.0 + (self.factor - 1.0) * ramp


class InstanceSlowdown(Fault):
    """Every instance of the service gets slower (noisy neighbours, CPU throttling), ramping in.

    Utilisation climbs with the same traffic, so latency drifts up on this service
    (and on its callers); only more instances bring the utilisation back down.
    """

    name = "instance_slowdown"
    default_target = "api_cluster"
    fixed_by = ("scale_up_instances",)

    def __init__(
        self,
        target: str | None = None,
        capacity: float = 0.6,
        ramp_seconds: float = 0.0,
        hide: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__(target, hide)
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity: must be in (0, 1], got {capacity}")
        self.capacity = capacity
        self.ramp_seconds = ramp_seconds

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        ramp = 1.0 if self.ramp_seconds <= 0 else min(1.0, self.elapsed(now) / self.ramp_seconds)
        fx.capacity[self.target] = fx.capacity.get(self.target, 1.0) * (1.0 - (1.0 - self.capacity) * ramp)


class DbSlowQuery(Fault):
    """A slow query plan on the database: its latency drifts up and so do its callers'.

    A warm buffer/query cache halves the excess, more instances spread it (partial
    fixes); failing callers over to the replica removes it.
    """

    name = "db_slow_query"
    default_target = "db"
    fixed_by = ("failover_dependency",)

    def __init__(self, target: str | None = None, factor: float = 6.0, hide: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(target, hide)
        self.factor = factor

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        if fleet.any_failed_over(self.target, now):
            return  # the primary no longer serves the slow path
        assert self.started_at is not None
        excess = self.factor - 1.0
        warmed = [s for s in [self.target, *fleet.callers(self.target)] if fleet.warmed_since(s, self.started_at, now)]
        if warmed:
            excess *= 0.5
        spec = fleet.state(self.target).spec
        ready = max(1, fleet.ready_instances(self.target, now))
        excess *= min(1.0, spec.instances / ready)
        fx.mul_latency(self.target, 1.0 + excess)


class BadDeployment(Fault):
    """A deployment that turns on a broken feature flag: errors jump right after it.

    The ``deployments`` metric (labels ``version``, ``flag``) shows the change; only
    rolling the flag back removes the bad code path, a restart brings it back up.
    """

    name = "bad_deployment"
    default_target = "api_cluster"
    fixed_by = ("rollback_flag",)

    def __init__(
        self,
        target: str | None = None,
        flag: str = "checkout_v2",
        version: str = "v2.4.1",
        error_rate: float = 0.18,
        hide: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__(target, hide)
        self.flag = flag
        self.version = version
        self.error_rate = error_rate

    def on_inject(self, fleet: Fleet, now: float) -> None:
        fleet.deploy(self.target, self.version, self.flag, now=now)

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        if fleet.flag_on(self.target, self.flag, now):
            fx.add_errors(self.target, self.error_rate, kind="exception")
            fx.mul_latency(self.target, 1.1)


class CacheEvictionStorm(Fault):
    """Most cached keys evicted at once: hit rate collapses, misses hit the database.

    The cache refills only slowly by itself; a cache warm restores it in seconds.
    """

    name = "cache_eviction_storm"
    default_target = "api_cluster"
    fixed_by = ("warm_cache",)

    def __init__(self, target: str | None = None, depth: float = 0.6, hide: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(target, hide)
        self.depth = depth

    def on_inject(self, fleet: Fleet, now: float) -> None:
        st = fleet.state(self.target)
        if st.spec.cache_hit_rate is None:
            raise ValueError(f"target: {self.target} has no cache (cache_hit_rate is None)")
        st.cache_evicted_at = now
        st.cache_eviction_depth = min(self.depth, st.spec.cache_hit_rate)


class UpstreamOutage(Fault):
    """An upstream (payments provider) failing and timing out.

    Callers see dependency errors; failing them over to the standby provider heals
    them (the failed upstream then serves no traffic, so reports no failed requests).
    """

    name = "upstream_outage"
    default_target = "payments"
    fixed_by = ("failover_dependency",)

    def __init__(
        self,
        target: str | None = None,
        error_rate: float = 0.6,
        latency_factor: float = 5.0,
        hide: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__(target, hide)
        self.error_rate = error_rate
        self.latency_factor = latency_factor

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        if fleet.any_failed_over(self.target, now):
            return
        fx.add_errors(self.target, self.error_rate, kind="upstream_timeout")
        fx.mul_latency(self.target, self.latency_factor)


class MetricsAgentCrash(Fault):
    """The service's metrics agent dies with the next flag rollback: no telemetry for ``down_seconds``.

    The service itself is fine (``/health`` answers from its real state); only the evidence is
    gone, which is what a verification that needs fresh samples cannot decide on. Paired with a
    bad deployment it is the ``evidence_vanishes`` scenario: the right fix, then silence.

    >>> from metaheal.simulator.fleet import Effects
    >>> class F:  # a fleet whose flag was rolled back at t=10
    ...     def flag_changes(self, service): return [(5.0, "checkout_v2", True), (10.0, "checkout_v2", False)]
    >>> crash = MetricsAgentCrash(down_seconds=30.0); crash.started_at = 0.0
    >>> [crash.silent_at(F(), t) for t in (9.0, 10.0, 39.9, 40.0)]
    [False, True, True, False]
    """

    name = "metrics_agent_crash"
    default_target = "api_cluster"

    def __init__(
        self, target: str | None = None, down_seconds: float = 240.0, hide: tuple[str, ...] | list[str] = ()
    ) -> None:
        super().__init__(target, hide)
        self.down_seconds = down_seconds

    def silent_at(self, fleet: Any, now: float) -> bool:
        start = self.started_at or 0.0
        offs = [at for at, _, on in fleet.flag_changes(self.target) if not on and at >= start]
        return bool(offs) and offs[0] <= now < offs[0] + self.down_seconds

    def apply(self, fx: Effects, fleet: Fleet, now: float) -> None:
        if self.silent_at(fleet, now):
            fx.silent.add(self.target)


FAULTS: dict[str, type[Fault]] = {
    f.name: f
    for f in (
        TrafficSurge,
        InstanceSlowdown,
        DbSlowQuery,
        BadDeployment,
        CacheEvictionStorm,
        UpstreamOutage,
        MetricsAgentCrash,
    )
}

#: scenario name -> faults (name, parameters); the demo's flows use latency_drift and error_spike.
SCENARIOS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    **{name: [(name, {})] for name in FAULTS},
    # the demo's flow 1: api_cluster's latency drifts up as its instances slow down
    "latency_drift": [("instance_slowdown", {"capacity": 0.6, "ramp_seconds": 10.0})],
    "error_spike": [("bad_deployment", {})],
    # a bad deployment whose fix (rollback_flag) takes the metrics agent down with it: verification is
    # inconclusive, the change stays, and an operator is asked to keep or roll it back
    "evidence_vanishes": [("bad_deployment", {}), ("metrics_agent_crash", {})],
    "quiet": [],
    # the same faults on a fleet without the telemetry hints the simulator otherwise gives: a bad flag with
    # no deployment counter, a cache storm with no cache hit metric
    "bad_deployment_nohint": [("bad_deployment", {"hide": ["deployments", "deployment_age_s"]})],
    "cache_eviction_storm_nohint": [("cache_eviction_storm", {"hide": ["cache_hit_rate"]})],
}


def make_fault(name: str, **params: Any) -> Fault:
    try:
        cls = FAULTS[name]
    except KeyError:
        raise ValueError(f"fault: unknown {name!r}; known: {', '.join(sorted(FAULTS))}") from None
    return cls(**params)


def scenario_faults(name: str) -> list[Fault]:
    try:
        spec = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"scenario: unknown {name!r}; known: {', '.join(sorted(SCENARIOS))}") from None
    return [make_fault(f, **p) for f, p in spec]
