"""Which extra probes a focus area needs, as ProbeCommand events with a TTL.

Probes cost telemetry volume, so they are enabled only for the cycle's target services
and expire on their own (``ttl_seconds``) instead of relying on a "disable" message
that a crashed meta loop would never send.

>>> probes_for("error_spike")
['error_tracking', 'stack_traces']
>>> [c.probe for c in probe_commands("cycle_20250115_143000_1", "latency_drift", ["api"], 300, 1.0)]
['latency_histograms']
>>> probe_commands("cycle_20250115_143000_1", "routine_maintenance", [], 300, 1.0)
[]
"""

from __future__ import annotations

from metaheal.events import ProbeCommand

PROBES: dict[str, list[str]] = {
    "latency_drift": ["latency_histograms"],
    "error_spike": ["error_tracking", "stack_traces"],
    "capacity_strain": ["saturation_breakdown"],
    "dependency_health": ["dependency_traces"],
    "trust_violations": [],
    "routine_maintenance": [],
}


def probes_for(focus_area: str) -> list[str]:
    return list(PROBES.get(focus_area, []))


def probe_commands(
    cycle_id: str, focus_area: str, services: list[str], ttl_seconds: int, now: float
) -> list[ProbeCommand]:
    return [
        ProbeCommand(
            probe_id=f"{cycle_id}:{probe}",
            cycle_id=cycle_id,
            probe=probe,
            services=list(services),
            enabled=True,
            ttl_seconds=int(ttl_seconds),
            issued_at=now,
        )
        for probe in probes_for(focus_area)
    ]
