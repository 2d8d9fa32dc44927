"""Which signed outcomes are evidence for their playbook: a success whose symptom did not recover is not.

Since the executor judges the symptom that triggered a plan (a ``symptom`` verdict in the outcome's
``verdicts``), a recorded success carries the proof that the symptom returned to its healthy baseline.
Outcomes written before that have no such verdict; for them the ledger itself tells: when another
plan on the same service and focus area followed within :data:`RELAPSE_SECONDS`, the problem was
still there and the "success" only passed the playbook's own threshold. Learners reading the ledger
skip both kinds (:func:`hollow_successes`), so a wrong fix does not gain standing from them.

>>> from types import SimpleNamespace as NS
>>> def e(seq, oid, result, ts, playbook="scale_up_instances", verdicts=None):
...     payload = {"outcome_id": oid, "service": "api", "focus_area": "latency_drift", "playbook": playbook,
...                "result": result, "verdicts": verdicts or []}
...     return NS(sequence=seq, payload_dict=payload, timestamp=f"1970-01-01T00:{ts // 60:02d}:{ts % 60:02d}Z")
>>> hollow_successes([e(1, "o1", "success", 10), e(2, "o2", "success", 50, "warm_cache")])
{'o1'}
>>> hollow_successes([e(1, "o1", "success", 10), e(2, "o2", "success", 600, "warm_cache")])  # a new incident
set()
>>> failed = [{"check": "symptom", "status": "fail"}]
>>> hollow_successes([e(1, "o1", "success", 10, verdicts=failed)])
{'o1'}
>>> passed = [{"check": "symptom", "status": "pass"}]
>>> hollow_successes([e(1, "o1", "success", 10, verdicts=passed), e(2, "o2", "failed", 50)])
set()
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

#: a plan on the same service and focus area this soon after a success (with no symptom verdict) means
#: the symptom had not recovered
RELAPSE_SECONDS = 300.0
#: results of plans that ran
EXECUTED = frozenset({"success", "failed", "rolled_back", "inconclusive"})


def entry_time(timestamp: str) -> float:
    """Epoch seconds of a ledger timestamp (``2026-01-15T14:30:00.123456Z``).

    >>> entry_time("1970-01-01T00:01:40.500000Z")
    100.5
    """
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def symptom_recovered(payload: dict[str, Any]) -> bool | None:
    """What the outcome's ``symptom`` verdicts say (None: it has none, e.g. written before they existed).

    >>> symptom_recovered({"verdicts": [{"check": "symptom", "status": "pass"}]}), symptom_recovered({})
    (True, None)
    """
    checks = [v for v in payload.get("verdicts") or [] if isinstance(v, dict) and v.get("check") == "symptom"]
    if not checks:
        return None
    return all(v.get("status") == "pass" for v in checks)


def hollow_successes(entries: Iterable[Any], *, relapse: float = RELAPSE_SECONDS) -> set[str]:
    """Outcome ids recorded as ``success`` whose symptom did not recover (see the module docstring).

    ``entries``: ``execution_outcome`` ledger entries (``sequence``, ``timestamp``, ``payload_dict``)."""
    hollow: set[str] = set()
    unproven: dict[tuple[str, str], tuple[str, float]] = {}
    for e in sorted(entries, key=lambda e: e.sequence):
        p = e.payload_dict
        oid, result = str(p.get("outcome_id") or ""), p.get("result")
        if not oid or result not in EXECUTED:
            continue
        ts = entry_time(e.timestamp)
        if result == "success" and symptom_recovered(p) is False:
            hollow.add(oid)
        if not p.get("service") or not p.get("focus_area"):
            continue  # no incident to tell a relapse by
        key = (str(p["service"]), str(p["focus_area"]))
        earlier = unproven.pop(key, None)
        if earlier is not None and ts - earlier[1] <= relapse and earlier[0] != oid:
            hollow.add(earlier[0])
        if result == "success" and symptom_recovered(p) is None:
            unproven[key] = (oid, ts)
    return hollow
