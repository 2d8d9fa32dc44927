"""``ledger explain``: the provenance tree of an outcome or plan, built only from signed entries.

Entries written by the components carry ``plan_id`` / ``outcome_id`` /
``directive_id`` in their payloads; starting from the id asked about, the related
entries are collected (transitively over those ids) together with the cycle's
meta-loop decision and ML advice, and rendered one line per fact, each pointing to
the ledger sequence that proves it.

>>> e = lambda seq, actor, action, payload, cycle="c1": _entry(seq, actor, action, payload, cycle)
>>> entries = [
...     e(0, "meta_loop", "cycle_focus_decided", {"focus_area": "latency_drift", "confidence": 0.9,
...                                               "reasoning": ["p95 up 40%"]}),
...     e(1, "ml_advisors", "advice_provided", {
...         "root_cause_candidates": [{"cause": "cache_miss", "probability": 0.8}],
...         "ranked_playbooks": [{"name": "warm_cache", "score": 0.7, "confidence": 0.9}]}),
...     e(2, "agentic_planner", "plan_created", {"plan_id": "p1", "directive_id": "d1", "playbook": "warm_cache"}),
...     e(3, "agentic_planner", "trust_checked",
...       {"plan_id": "p1", "verdict": "auto_approve", "reasons": ["low impact"]}),
...     e(4, "executor", "execution_outcome", {"plan_id": "p1", "outcome_id": "o1", "result": "success"}),
...     e(5, "executor", "execution_outcome", {"plan_id": "p2", "outcome_id": "o2", "result": "failed"}),
... ]
>>> print("\\n".join(explain_lines(entries, "o1")))
o1 (cycle c1)
├─ meta loop: focus latency_drift (confidence 0.9): p95 up 40%  [seq 0]
├─ ML root cause: cache_miss (score 0.8)  [seq 1]
├─ ML recommendation: warm_cache (score 0.7, confidence 0.9)  [seq 1]
├─ plan p1: playbook warm_cache  [seq 2]
├─ trust decision: auto_approve: low impact  [seq 3]
├─ outcome o1: success  [seq 4]
└─ signature: executor key k, 00000000000000000000…  [seq 4]
"""

from __future__ import annotations

import json
from typing import Any

from metaheal.events import LedgerEntry

ID_KEYS = ("plan_id", "outcome_id", "directive_id", "request_id", "approval_id")
CYCLE_CONTEXT = ("cycle_focus_decided", "advice_provided", "guardrail_changed")


def _entry(seq: int, actor: str, action: str, payload: dict[str, Any], cycle: str) -> LedgerEntry:
    """A bare entry for examples (not signed)."""
    return LedgerEntry(
        sequence=seq,
        timestamp="",
        cycle_id=cycle,
        actor=actor,
        action=action,
        resource="",
        subsystem="",
        payload=json.dumps(payload),
        result=str(payload.get("result", "ok")),
        key_id="k",
        prev_hash="",
        entry_hash="",
        signature="0" * 128,
    )


def _payload(e: LedgerEntry) -> dict[str, Any]:
    try:
        p = json.loads(e.payload)
    except ValueError:
        return {}
    return p if isinstance(p, dict) else {}


def _ids(p: dict[str, Any]) -> set[str]:
    out = {str(p[k]) for k in ID_KEYS if isinstance(p.get(k), str)}
    for nested in ("directive", "plan", "outcome"):
        sub = p.get(nested)
        if isinstance(sub, dict):
            out |= _ids(sub)
    return out


def related(entries: list[LedgerEntry], target: str) -> list[LedgerEntry]:
    """Entries linked to ``target`` through payload ids, plus their cycles' decision context."""
    payloads = {e.sequence: _payload(e) for e in entries}
    ids = {target}
    chosen: set[int] = set()
    changed = True
    while changed:
        changed = False
        for e in entries:
            if e.sequence in chosen:
                continue
            mine = _ids(payloads[e.sequence])
            if mine & ids:
                chosen.add(e.sequence)
                ids |= mine
                changed = True
    cycles = {e.cycle_id for e in entries if e.sequence in chosen}
    chosen |= {e.sequence for e in entries if e.cycle_id in cycles and e.action in CYCLE_CONTEXT}
    return [e for e in entries if e.sequence in chosen]


def _line(e: LedgerEntry, p: dict[str, Any]) -> list[str]:
    a = e.action
    if a == "cycle_focus_decided":
        reasons = p.get("reasoning") or []
        why = f": {'; '.join(map(str, reasons[:2]))}" if reasons else ""
        return [f"meta loop: focus {p.get('focus_area', '?')} (confidence {p.get('confidence', '?')}){why}"]
    if a == "guardrail_changed":
        return [f"guardrails: {p.get('previous', '?')} -> {p.get('level', '?')}: {p.get('reason', '')}".rstrip(": ")]
    if a == "advice_provided":
        out = []
        cands = sorted(p.get("root_cause_candidates") or [], key=lambda c: -float(c.get("probability", 0)))
        if cands:
            out.append(f"ML root cause: {cands[0].get('cause')} (score {cands[0].get('probability')})")
        books = sorted(p.get("ranked_playbooks") or [], key=lambda b: -float(b.get("score", 0)))
        if books:
            b = books[0]
            out.append(f"ML recommendation: {b.get('name')} (score {b.get('score')}, confidence {b.get('confidence')})")
        return out or ["ML advice: none"]
    if a == "directive_issued":
        return [
            f"directive {p.get('directive_id', '?')} -> {p.get('service', '?')} (confidence {p.get('confidence', '?')})"
        ]
    if a == "plan_created":
        return [f"plan {p.get('plan_id', '?')}: playbook {p.get('playbook', p.get('selected_playbook', '?'))}"]
    if a in ("trust_checked", "trust_violation"):
        reasons = p.get("reasons") or p.get("violations") or []
        verdict = p.get("verdict", e.result)
        return [f"trust decision: {verdict}" + (f": {'; '.join(map(str, reasons[:2]))}" if reasons else "")]
    if a in ("approval_requested", "approval_decided", "approval_received"):
        return [f"{a.replace('_', ' ')}: {p.get('decision', e.result)} by {p.get('operator', e.actor)}"]
    if a == "verdict_requested":
        return [f"verification inconclusive, change kept: {'; '.join(map(str, p.get('evidence') or []))}"]
    if a in ("verdict_received", "verdict_expired"):
        return [f"{a.replace('_', ' ')}: {p.get('verdict', e.result)} by {p.get('operator', 'expiry')}"]
    if a == "execution_outcome":
        return [
            f"outcome {p.get('outcome_id', '?')}: {e.result}",
            f"signature: {e.actor} key {e.key_id}, {e.signature[:20]}…",
        ]
    return [f"{a.replace('_', ' ')}: {e.result}"]


def explain_lines(entries: list[LedgerEntry], target: str) -> list[str]:
    """The provenance tree of ``target`` (an outcome, plan or directive id) as text lines."""
    rel = related(entries, target)
    if not any(target in _ids(_payload(e)) for e in rel):
        return []
    facts = [(text, e.sequence) for e in rel for text in _line(e, _payload(e))]
    cycles = sorted({e.cycle_id for e in rel})
    out = [f"{target} (cycle {', '.join(cycles)})"]
    for i, (text, seq) in enumerate(facts):
        out.append(f"{'└─' if i == len(facts) - 1 else '├─'} {text}  [seq {seq}]")
    return out
