"""A small simulated fleet: services, their dependency graph and the telemetry they emit.

The model is physical rather than scripted, so that remediation works (or fails) for
the same reasons it would on real services: latency follows utilisation through a
queueing curve, utilisation follows traffic over *ready* instances, callers pay their
dependencies' latency and inherit their errors, and a cache miss turns into a
database query. Faults (``metaheal.simulator.faults``) only perturb inputs of this
model; an action through the admin API changes the state the model reads. Every
time-dependent quantity is a closed-form function of ``now``, so ``sample(now)`` gives
the same numbers however often it is called, and tests can drive a manual clock.

>>> fleet = Fleet(seed=1, clock=lambda: 0.0)
>>> sorted(fleet.services)
['api_cluster', 'cache', 'db', 'payments', 'web']
>>> view = fleet.view(0.0)["api_cluster"]
>>> 0.3 < view.utilization < 0.7 and view.error_rate < 0.01
True
>>> fleet.scale("api_cluster", 2, now=0.0)
10
>>> fleet.capacity("api_cluster", now=0.0)
{'instances': 10, 'ready_instances': 8}
>>> fleet.capacity("api_cluster", now=fleet.ready_delay)
{'instances': 10, 'ready_instances': 10}
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from metaheal.events import Metric

if TYPE_CHECKING:
    from metaheal.simulator.faults import Fault

logger = logging.getLogger(__name__)

#: Probes the simulator knows; any other name is logged and ignored.
KNOWN_PROBES = ("latency_histograms", "error_tracking", "dependency_traces", "stack_traces")
LATENCY_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True)
class ServiceSpec:
    """What a service is: static capacity and latency characteristics.

    ``calls`` is how many calls one request makes to each dependency; for a cached
    dependency pair (``cache`` and ``db``) the db share is paid only on a cache miss,
    plus ``db_uncached`` calls that always go to the database (writes).
    """

    name: str
    instances: int
    capacity_per_instance: float
    base_latency_ms: float
    base_error_rate: float = 0.002
    calls: dict[str, float] = field(default_factory=dict)
    cache_hit_rate: float | None = None
    db_uncached: float = 0.0
    #: whether callers can fail over to a standby (a replica, a second provider)
    standby: bool = False
    criticality: str = "medium"
    owner: str = "sre"


def default_topology() -> list[ServiceSpec]:
    """web -> api_cluster -> {db, cache, payments}; api_cluster is the designed bottleneck."""
    return [
        ServiceSpec(
            "web",
            instances=10,
            capacity_per_instance=60,
            base_latency_ms=20,
            calls={"api_cluster": 1.0},
            criticality="critical",
            owner="frontend",
        ),
        ServiceSpec(
            "api_cluster",
            instances=8,
            capacity_per_instance=45,
            base_latency_ms=30,
            calls={"cache": 1.0, "db": 1.5, "payments": 0.2},
            cache_hit_rate=0.92,
            db_uncached=0.3,
            criticality="critical",
            owner="platform",
        ),
        ServiceSpec(
            "db",
            instances=3,
            capacity_per_instance=80,
            base_latency_ms=25,
            standby=True,
            criticality="high",
            owner="dba",
        ),
        ServiceSpec(
            "cache", instances=2, capacity_per_instance=400, base_latency_ms=1, criticality="medium", owner="platform"
        ),
        ServiceSpec(
            "payments",
            instances=4,
            capacity_per_instance=30,
            base_latency_ms=60,
            standby=True,
            criticality="high",
            owner="payments",
        ),
    ]


@dataclass
class Deployment:
    at: float
    version: str
    flag: str | None


@dataclass
class ServiceState:
    """What the admin API can change, with the time each change was made."""

    spec: ServiceSpec
    instances: int
    #: ready-at times of instances still starting
    pending: list[float] = field(default_factory=list)
    restart_windows: list[tuple[float, float]] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)
    flag_changes: list[tuple[float, str, bool]] = field(default_factory=list)
    version: str = "v1.0.0"
    deployments: list[Deployment] = field(default_factory=list)
    cache_evicted_at: float | None = None
    cache_eviction_depth: float = 0.0
    cache_warmed_at: float | None = None
    #: dependency -> time the failover was requested (None: failed back)
    failovers: dict[str, float] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)


@dataclass
class Effects:
    """Perturbations the active faults put on the model for one instant."""

    ingress: float = 1.0
    #: service -> multiplier on per-instance capacity (a slowdown of every instance)
    capacity: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    #: (caller, dependency) -> extra error rate / latency multiplier on that edge only
    edge_errors: dict[tuple[str, str], float] = field(default_factory=dict)
    edge_latency: dict[tuple[str, str], float] = field(default_factory=dict)
    error_types: dict[str, dict[str, float]] = field(default_factory=dict)
    stack_frames: dict[str, str] = field(default_factory=dict)
    #: services whose metrics agent is down: they publish no telemetry at this instant
    silent: set[str] = field(default_factory=set)

    def mul_latency(self, service: str, factor: float) -> None:
        self.latency[service] = self.latency.get(service, 1.0) * factor

    def add_errors(self, service: str, rate: float, kind: str = "http_500") -> None:
        self.errors[service] = self.errors.get(service, 0.0) + rate
        kinds = self.error_types.setdefault(service, {})
        kinds[kind] = kinds.get(kind, 0.0) + rate


@dataclass
class ServiceView:
    """Noise-free state of one service at one instant (what telemetry is sampled around)."""

    name: str
    instances: int
    ready: int
    rps: float
    utilization: float
    latency_p50_ms: float
    latency_p95_ms: float
    error_rate: float
    cpu_utilization: float
    cache_hit_rate: float | None
    dependency_latency_ms: dict[str, float]
    dependency_error_rate: dict[str, float]
    error_types: dict[str, float]


def queue_factor(u: float) -> float:
    """Latency multiplier from utilisation: flat until ~0.5, then a queueing knee.

    >>> round(queue_factor(0.5), 3), round(queue_factor(0.9), 2)
    (1.0, 1.8)
    """
    return 1.0 + 0.5 * max(0.0, u - 0.5) ** 2 / (1.0 - min(u, 0.95))


def tail_ratio(u: float) -> float:
    """p95/p50 ratio: the tail fattens faster than the median under load."""
    return 1.6 + 3.0 * max(0.0, u - 0.6)


class Fleet:
    """The simulated services plus the admin actions on them.

    ``day_seconds`` compresses a day of load variation (a sinusoid, mean 1, amplitude
    ``day_amplitude``) into that many seconds; ``ready_delay``, ``restart_seconds``,
    ``warm_seconds`` and ``switch_seconds`` are how long actions take to take effect.
    """

    def __init__(
        self,
        topology: list[ServiceSpec] | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        ingress_rps: float = 200.0,
        day_seconds: float = 1800.0,
        day_amplitude: float = 0.1,
        noise: float = 0.03,
        ready_delay: float = 5.0,
        restart_seconds: float = 4.0,
        warm_seconds: float = 2.0,
        switch_seconds: float = 1.0,
        cache_recovery_seconds: float = 900.0,
    ) -> None:
        specs = topology if topology is not None else default_topology()
        self.services: dict[str, ServiceState] = {s.name: ServiceState(spec=s, instances=s.instances) for s in specs}
        for s in specs:
            unknown = set(s.calls) - set(self.services)
            if unknown:
                raise ValueError(f"service {s.name}: calls unknown dependencies {sorted(unknown)}")
        self.clock = clock
        self.ingress_rps = ingress_rps
        self.day_seconds = day_seconds
        self.day_amplitude = day_amplitude
        self.noise = noise
        self.ready_delay = ready_delay
        self.restart_seconds = restart_seconds
        self.warm_seconds = warm_seconds
        self.switch_seconds = switch_seconds
        self.cache_recovery_seconds = cache_recovery_seconds
        self.faults: list[Fault] = []
        #: service -> metrics it never publishes (a fleet without the telemetry hint a fault would leave)
        self.hidden: dict[str, set[str]] = {}
        self.epoch = clock()
        self._rng = np.random.default_rng(seed)
        self._entry = self._entry_service()
        self._baselines: dict[str, ServiceView] | None = None

    # --- structure ----------------------------------------------------------------------------

    def _entry_service(self) -> str:
        called = {d for st in self.services.values() for d in st.spec.calls}
        roots = [n for n in self.services if n not in called]
        return roots[0]

    def callers(self, service: str) -> list[str]:
        return [n for n, st in self.services.items() if service in st.spec.calls]

    def state(self, service: str) -> ServiceState:
        try:
            return self.services[service]
        except KeyError:
            raise KeyError(f"unknown service {service!r}; known: {sorted(self.services)}") from None

    def now(self, now: float | None = None) -> float:
        return self.clock() if now is None else now

    # --- faults -------------------------------------------------------------------------------

    def inject(self, fault: Fault, now: float | None = None) -> Fault:
        """Start ``fault`` now; it acts until removed (remediation neutralises it, not removal)."""
        t = self.now(now)
        fault.started_at = t
        self.state(fault.target)
        fault.on_inject(self, t)
        self.faults.append(fault)
        logger.info("fault injected name=%s target=%s at=%.3f", fault.name, fault.target, t)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    # --- admin actions (the admin HTTP API calls these) ---------------------------------------

    def ready_instances(self, service: str, now: float | None = None) -> int:
        t = self.now(now)
        st = self.state(service)
        starting = sum(1 for r in st.pending if r > t)
        ready = st.instances - starting
        restarting = any(a <= t < b for a, b in st.restart_windows)
        if restarting:  # rolling restart: half the fleet is out at a time
            ready -= math.ceil(ready / 2)
        return max(ready, 0)

    def capacity(self, service: str, now: float | None = None) -> dict[str, int]:
        return {"instances": self.state(service).instances, "ready_instances": self.ready_instances(service, now)}

    def scale(self, service: str, delta: int, now: float | None = None) -> int:
        """Add instances (ready after ``ready_delay``) or remove them (at once; never below 1)."""
        t = self.now(now)
        st = self.state(service)
        if delta > 0:
            st.pending.extend([t + self.ready_delay] * delta)
            st.instances += delta
        elif delta < 0:
            remove = min(-delta, st.instances - 1)
            st.instances -= remove
            # starting instances go first
            st.pending.sort(reverse=True)
            del st.pending[: min(remove, len(st.pending))]
        logger.info("admin scale service=%s delta=%d instances=%d", service, delta, st.instances)
        return st.instances

    def restart(self, service: str, now: float | None = None) -> None:
        """Rolling restart: half the instances are out for ``restart_seconds``; state is lost."""
        t = self.now(now)
        st = self.state(service)
        st.restart_windows.append((t, t + self.restart_seconds))
        logger.info("admin restart service=%s", service)

    def warm_cache(self, service: str, now: float | None = None) -> None:
        t = self.now(now)
        st = self.state(service)
        st.cache_warmed_at = t
        if st.spec.cache_hit_rate is None:  # the cache tier itself: warms what its callers read
            for caller in self.callers(service):
                self.services[caller].cache_warmed_at = t
        logger.info("admin cache_warm service=%s", service)

    def deploy(self, service: str, version: str, flag: str | None = None, now: float | None = None) -> None:
        t = self.now(now)
        st = self.state(service)
        st.version = version
        st.deployments.append(Deployment(at=t, version=version, flag=flag))
        if flag is not None:
            self.set_flag(service, flag, True, now=t)
        logger.info("deployment service=%s version=%s flag=%s", service, version, flag)

    def set_flag(self, service: str, flag: str, on: bool, now: float | None = None) -> None:
        t = self.now(now)
        st = self.state(service)
        st.flags[flag] = on
        st.flag_changes.append((t, flag, on))

    def flag_changes(self, service: str) -> list[tuple[float, str, bool]]:
        """Every flag change on ``service``: (time, flag, on), oldest first."""
        return list(self.state(service).flag_changes)

    def flag_on(self, service: str, flag: str, now: float | None = None) -> bool:
        """Whether ``flag`` is in effect; a change takes ``switch_seconds`` to propagate."""
        t = self.now(now)
        state = False
        for at, name, on in self.state(service).flag_changes:
            if name == flag and at + (0.0 if on else self.switch_seconds) <= t:
                state = on
        return state

    def rollback_flags(self, service: str, flag: str | None = None, now: float | None = None) -> list[str]:
        """Turn off ``flag`` (or every enabled flag); returns the names rolled back."""
        st = self.state(service)
        names = [f for f, on in st.flags.items() if on and (flag is None or f == flag)]
        for name in names:
            self.set_flag(service, name, False, now=now)
        logger.info("admin flags_rollback service=%s rolled_back=%s", service, names)
        return names

    def restore_flags(self, service: str, flag: str | None = None, now: float | None = None) -> list[str]:
        st = self.state(service)
        names = [f for f, on in st.flags.items() if not on and (flag is None or f == flag)]
        for name in names:
            self.set_flag(service, name, True, now=now)
        logger.info("admin flags_restore service=%s restored=%s", service, names)
        return names

    def failover(self, service: str, dependency: str, now: float | None = None) -> None:
        st = self.state(service)
        if dependency not in st.spec.calls:
            raise ValueError(f"dependency: {service} does not call {dependency!r}; it calls {sorted(st.spec.calls)}")
        if not self.services[dependency].spec.standby:
            raise ValueError(f"dependency: {dependency} has no standby to fail over to")
        st.failovers[dependency] = self.now(now)
        logger.info("admin failover service=%s dependency=%s", service, dependency)

    def failback(self, service: str, dependency: str, now: float | None = None) -> None:
        st = self.state(service)
        if dependency not in st.spec.calls:
            raise ValueError(f"dependency: {service} does not call {dependency!r}; it calls {sorted(st.spec.calls)}")
        st.failovers.pop(dependency, None)
        logger.info("admin failback service=%s dependency=%s", service, dependency)

    def failed_over(self, service: str, dependency: str, now: float | None = None) -> bool:
        at = self.state(service).failovers.get(dependency)
        return at is not None and at + self.switch_seconds <= self.now(now)

    def any_failed_over(self, dependency: str, now: float | None = None) -> bool:
        return any(self.failed_over(c, dependency, now) for c in self.callers(dependency))

    def warmed_since(self, service: str, since: float, now: float | None = None) -> bool:
        """Whether a cache warm requested after ``since`` has completed by ``now``."""
        at = self.state(service).cache_warmed_at
        return at is not None and at >= since and at + self.warm_seconds <= self.now(now)

    def enable_probe(self, probe: str, services: list[str], until: float) -> None:
        if probe not in KNOWN_PROBES:
            logger.warning("probe unknown probe=%s known=%s (ignored)", probe, ",".join(KNOWN_PROBES))
            return
        targets = list(self.services) if not services or "*" in services else services
        for name in targets:
            if name in self.services:
                self.services[name].probes[probe] = until
        logger.info("probe enabled probe=%s services=%s until=%.1f", probe, ",".join(targets), until)

    def disable_probe(self, probe: str, services: list[str]) -> None:
        targets = list(self.services) if not services or "*" in services else services
        for name in targets:
            if name in self.services:
                self.services[name].probes.pop(probe, None)

    def active_probes(self, service: str, now: float | None = None) -> list[str]:
        t = self.now(now)
        return sorted(p for p, until in self.state(service).probes.items() if until > t)

    # --- the model ----------------------------------------------------------------------------

    def load_factor(self, now: float) -> float:
        """Daily-style load shape, compressed into ``day_seconds``."""
        phase = 2 * math.pi * (now - self.epoch) / self.day_seconds
        return 1.0 + self.day_amplitude * math.sin(phase)

    def cache_hit_rate(self, service: str, now: float) -> float | None:
        st = self.state(service)
        base = st.spec.cache_hit_rate
        if base is None:
            return None
        if st.cache_evicted_at is None or st.cache_evicted_at > now:
            return base
        if self.warmed_since(service, st.cache_evicted_at, now):
            return base
        # natural refill is slow: misses repopulate the cache a little at a time
        age = now - st.cache_evicted_at
        return base - st.cache_eviction_depth * math.exp(-age / self.cache_recovery_seconds)

    def effects(self, now: float) -> Effects:
        fx = Effects()
        for f in self.faults:
            if f.started_at is not None and f.started_at <= now:
                f.apply(fx, self, now)
        return fx

    def view(self, now: float | None = None) -> dict[str, ServiceView]:
        """Noise-free state of every service at ``now``."""
        t = self.now(now)
        fx = self.effects(t)
        # pass 1, top-down: traffic
        rps: dict[str, float] = dict.fromkeys(self.services, 0.0)
        rps[self._entry] = self.ingress_rps * self.load_factor(t) * fx.ingress
        hit: dict[str, float | None] = {n: self.cache_hit_rate(n, t) for n in self.services}
        for name in self._topological():
            spec = self.services[name].spec
            for dep in spec.calls:
                if self.failed_over(name, dep, t):
                    continue  # served by the standby; the primary sees none of this traffic
                rps[dep] += rps[name] * self._call_rate(spec, dep, hit[name])
        # pass 2, bottom-up: latency and errors
        views: dict[str, ServiceView] = {}
        for name in reversed(self._topological()):
            views[name] = self._view_one(name, t, rps[name], hit[name], fx, views)
        return views

    def _call_rate(self, spec: ServiceSpec, dep: str, hit: float | None) -> float:
        calls = spec.calls[dep]
        if dep == "db" and hit is not None:
            return calls * (1.0 - hit) + spec.db_uncached
        return calls

    def _topological(self) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for c in self.callers(n):
                visit(c)
            order.append(n)

        for n in self.services:
            visit(n)
        return order  # callers before callees

    def _view_one(
        self, name: str, t: float, rps: float, hit: float | None, fx: Effects, views: dict[str, ServiceView]
    ) -> ServiceView:
        st = self.services[name]
        spec = st.spec
        ready = self.ready_instances(name, t)
        cap = ready * spec.capacity_per_instance * fx.capacity.get(name, 1.0)
        u = rps / cap if cap > 0 else 10.0
        own = spec.base_latency_ms * queue_factor(u) * fx.latency.get(name, 1.0)
        own_p95 = own * tail_ratio(u)
        errors = spec.base_error_rate + fx.errors.get(name, 0.0)
        kinds = dict(fx.error_types.get(name, {}))
        if u > 1.0:  # overload: the excess is shed
            shed = 1.0 - 1.0 / u
            errors += shed
            kinds["overload_503"] = kinds.get("overload_503", 0.0) + shed
        dep_lat: dict[str, float] = {}
        dep_err: dict[str, float] = {}
        p50, p95 = own, own_p95
        for dep in spec.calls:
            dv = views[dep]
            if self.failed_over(name, dep, t):
                lat, lat_p95, err = self._standby(dep, rps * self._call_rate(spec, dep, hit))
            else:
                edge = fx.edge_latency.get((name, dep), 1.0)
                lat, lat_p95 = dv.latency_p50_ms * edge, dv.latency_p95_ms * edge
                err = min(1.0, dv.error_rate + fx.edge_errors.get((name, dep), 0.0))
            dep_lat[dep], dep_err[dep] = lat, err
            rate = self._call_rate(spec, dep, hit)
            p50 += rate * lat
            p95 += rate * lat_p95
            # a failed dependency call fails the request unless retried; half are retried away
            share = min(1.0, spec.calls[dep]) * 0.5 if dep != "cache" else 0.0
            if err > 0.01 and share:
                errors += share * err
                kinds[f"dependency_{dep}"] = kinds.get(f"dependency_{dep}", 0.0) + share * err
        errors = min(errors, 1.0)
        cpu = min(1.0, 0.08 + 0.85 * u)
        return ServiceView(
            name=name,
            instances=st.instances,
            ready=ready,
            rps=rps,
            utilization=u,
            latency_p50_ms=p50,
            latency_p95_ms=max(p95, p50),
            error_rate=errors,
            cpu_utilization=min(cpu, 1.0),
            cache_hit_rate=hit,
            dependency_latency_ms=dep_lat,
            dependency_error_rate=dep_err,
            error_types=kinds,
        )

    def _standby(self, dep: str, rps: float) -> tuple[float, float, float]:
        """(p50, p95, error rate) of ``dep``'s standby: free of the primary's faults, a little
        slower, and sized like the primary as designed, so it saturates just the same."""
        spec = self.services[dep].spec
        u = rps / (spec.instances * spec.capacity_per_instance)
        p50 = spec.base_latency_ms * 1.3 * queue_factor(u)
        err = spec.base_error_rate + (1.0 - 1.0 / u if u > 1.0 else 0.0)
        return p50, p50 * tail_ratio(u), min(err, 1.0)

    # --- health and telemetry -----------------------------------------------------------------

    def health(self, service: str, now: float | None = None) -> list[str]:
        """Reasons the service is degraded (empty: healthy); what ``GET /health`` reports."""
        t = self.now(now)
        v = self.view(t)[service]
        base = self._baseline(service)
        reasons = []
        if v.error_rate > 0.05:
            reasons.append(f"error_rate {v.error_rate:.3f} > 0.050")
        if v.latency_p95_ms > 2.0 * base.latency_p95_ms:
            reasons.append(f"latency_p95_ms {v.latency_p95_ms:.1f} > 2x baseline {base.latency_p95_ms:.1f}")
        if v.ready < v.instances:
            reasons.append(f"ready_instances {v.ready} < instances {v.instances}")
        if v.utilization > 0.9:
            reasons.append(f"utilization {v.utilization:.2f} > 0.90")
        for dep, err in v.dependency_error_rate.items():
            if err > 0.05:
                reasons.append(f"dependency {dep} error_rate {err:.3f} > 0.050")
        for dep, lat in v.dependency_latency_ms.items():
            usual = base.dependency_latency_ms.get(dep, lat)
            if lat > 2.0 * usual:
                reasons.append(f"dependency {dep} latency_ms {lat:.1f} > 2x baseline {usual:.1f}")
        return reasons

    def _baseline(self, service: str) -> ServiceView:
        """The service as designed: no faults, no actions, mean load."""
        if self._baselines is None:
            clean = Fleet(
                [s.spec for s in self.services.values()],
                clock=lambda: 0.0,
                ingress_rps=self.ingress_rps,
                day_amplitude=0.0,
            )
            self._baselines = clean.view(0.0)
        return self._baselines[service]

    def sample(self, now: float | None = None) -> dict[str, list[Metric]]:
        """One telemetry sample per metric per service, with seeded noise."""
        t = self.now(now)
        views = self.view(t)
        silent = self.effects(t).silent
        out: dict[str, list[Metric]] = {}
        for name, v in views.items():
            if name not in silent:
                hidden = self.hidden.get(name, set())
                out[name] = [x for x in self._metrics(name, v, t) if x.metric not in hidden]
        return out

    def _noisy(self, x: float) -> float:
        return float(x * math.exp(self._rng.normal(0.0, self.noise)))

    def _rate(self, x: float, floor: float = 0.0, ceil: float = 1.0) -> float:
        return float(min(ceil, max(floor, x + self._rng.normal(0.0, self.noise * 0.1 * max(x, 0.01)))))

    def _metrics(self, name: str, v: ServiceView, t: float) -> list[Metric]:
        st = self.services[name]

        def m(metric: str, value: float, **labels: str) -> Metric:
            return Metric(service=name, metric=metric, value=round(value, 6), ts=t, labels=labels)

        p50 = self._noisy(v.latency_p50_ms)
        p95 = max(p50, self._noisy(v.latency_p95_ms))
        out = [
            m("latency_p50_ms", p50),
            m("latency_p95_ms", p95),
            m("error_rate", self._rate(v.error_rate)),
            m("cpu_utilization", self._rate(v.cpu_utilization)),
            m("requests_per_s", self._noisy(v.rps)),
            m("instances", float(v.ready)),  # serving instances: what capacity the service really has
            m("ready_instances", float(v.ready)),
        ]
        if v.cache_hit_rate is not None:
            out.append(m("cache_hit_rate", self._rate(v.cache_hit_rate)))
        for dep in sorted(v.dependency_latency_ms):
            out.append(m("dependency_latency_ms", self._noisy(v.dependency_latency_ms[dep]), dependency=dep))
            out.append(m("dependency_error_rate", self._rate(v.dependency_error_rate[dep]), dependency=dep))
        recent = [d for d in st.deployments if t - 600.0 <= d.at <= t]
        last = st.deployments[-1] if st.deployments else None
        labels = {"version": st.version}
        if last is not None and last.flag:
            labels["flag"] = last.flag
        out.append(m("deployments", float(len(recent)), **labels))
        if last is not None:
            out.append(m("deployment_age_s", t - last.at, **labels))
        for probe in self.active_probes(name, t):
            out.extend(self._probe_metrics(probe, name, v, t, m))
        return out

    def _probe_metrics(self, probe: str, name: str, v: ServiceView, t: float, m: Callable[..., Metric]) -> list[Metric]:
        if probe == "latency_histograms":
            # log-normal latency distribution matching p50 and p95
            mu = math.log(max(v.latency_p50_ms, 1e-3))
            sigma = max(math.log(max(v.latency_p95_ms, v.latency_p50_ms * 1.01) / v.latency_p50_ms) / 1.645, 1e-3)
            out = []
            for le in LATENCY_BUCKETS_MS:
                frac = 0.5 * (1 + math.erf((math.log(le) - mu) / (sigma * math.sqrt(2))))
                out.append(m("latency_bucket", frac, le=str(le)))
            out.append(m("latency_p99_ms", self._noisy(math.exp(mu + 2.326 * sigma))))
            return out
        if probe == "error_tracking":
            requests = v.rps
            kinds = v.error_types or {}
            base = self.services[name].spec.base_error_rate
            counts = {"http_500": base * requests, **{k: r * requests for k, r in kinds.items()}}
            return [m("errors_by_type", self._noisy(c + 1e-6), type=k) for k, c in sorted(counts.items())]
        if probe == "dependency_traces":
            return [
                m("trace_span_ms", self._noisy(lat * 1.9), dependency=dep, quantile="0.99")
                for dep, lat in sorted(v.dependency_latency_ms.items())
            ]
        if probe == "stack_traces":
            st = self.services[name]
            on = [f for f, _ in st.flags.items() if self.flag_on(name, f, t)]
            frames = {"checkout.handler": 0.002}
            for f in on:
                frames[f"{f}.apply"] = v.error_types.get("exception", 0.0)
            return [
                m("stack_trace_rate", self._noisy(rate + 1e-6), frame=frame, version=st.version)
                for frame, rate in sorted(frames.items())
            ]
        return []
