"""Learning benchmark for the ML advisors: do diagnosis and playbook choice improve with experience?

A seeded stream of simulated incidents: several causes on several services, noisy
and incomplete symptoms (each true symptom may be missing, unrelated ones appear),
some symptom patterns the knowledge map does not know (probe error types, traffic
surges that look like CPU saturation), playbooks that fix some causes and not others
(with one service where the usual fix does not work), and noisy outcomes.

Each incident runs the real advisors: symptoms -> ``RootCauseSuggester`` -> top
diagnosis -> ``PlaybookRanker`` (Thompson sampling on) -> simulated execution ->
an ``Outcome`` fed back exactly as the service feeds signed ledger outcomes.
A second, frozen copy of the advisors (knowledge map and declared priors only, no
learning) sees the same incidents, so the gain from learning is measured in the
same run. Prints one line per 50-incident block.

    python benchmarks/bench_advisors.py [--incidents 1500] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from metaheal.agents.advisors.base import UNKNOWN, Outcome, Symptom
from metaheal.agents.advisors.playbook_ranker import PlaybookRanker
from metaheal.agents.advisors.root_cause import RootCauseSuggester
from metaheal.agents.common.playbooks import load_playbooks

REPO = Path(__file__).resolve().parent.parent

SERVICES = ["api", "web", "checkout", "search"]
#: feature -> (metric, signal, direction, labels)
SYMPTOMS = {
    "latency_up": ("latency_p95_ms", "latency", 1, {}),
    "errors_up": ("error_rate", "errors", 1, {}),
    "traffic_up": ("requests_per_second", "traffic", 1, {}),
    "queue_up": ("queue_depth", "saturation", 1, {}),
    "cpu_up": ("cpu_utilization", "saturation", 1, {}),
    "memory_up": ("memory_rss_mb", "saturation", 1, {}),
    "cache_hit_down": ("cache_hit_rate", None, -1, {}),
    "db_latency_up": ("dependency_latency_ms", "dependency", 1, {"dependency": "orders-db"}),
    "dep_errors_up": ("dependency_errors", "dependency", 1, {"dependency": "payments"}),
    "deploy": ("deployments", "change", 1, {}),
    "timeout": ("probe_errors", "errors", 1, {"error_type": "timeout"}),
    "exception": ("probe_errors", "errors", 1, {"error_type": "exception"}),
    "conn_refused": ("probe_errors", "errors", 1, {"error_type": "connection_refused"}),
    "oom": ("probe_errors", "errors", 1, {"error_type": "oom"}),
}
#: true cause -> (focus area, [(symptom, presence probability)])
CAUSES = {
    "database_slow_query": ("latency_drift", [("latency_up", 0.9), ("db_latency_up", 0.75), ("timeout", 0.6)]),
    "cache_miss_rate_high": ("latency_drift", [("latency_up", 0.9), ("cache_hit_down", 0.7), ("cpu_up", 0.35)]),
    "cpu_saturation": ("latency_drift", [("latency_up", 0.85), ("cpu_up", 0.9), ("traffic_up", 0.35)]),
    "traffic_surge": (
        "capacity_strain",
        [("traffic_up", 0.9), ("cpu_up", 0.7), ("latency_up", 0.7), ("queue_up", 0.4)],
    ),
    "bad_deployment": ("error_spike", [("errors_up", 0.9), ("deploy", 0.65), ("exception", 0.6), ("latency_up", 0.3)]),
    "upstream_outage": ("dependency_health", [("dep_errors_up", 0.8), ("errors_up", 0.7), ("conn_refused", 0.6)]),
    "memory_leak": ("latency_drift", [("memory_up", 0.65), ("latency_up", 0.6), ("errors_up", 0.4), ("oom", 0.55)]),
}
#: (playbook, declared focus areas, declared root causes, prior_success) for ``--catalogue ideal``:
#: what the simulation's truth would justify declaring. The default is the shipped ``playbooks/``.
PLAYBOOKS = [
    ("scale_up_instances", ["capacity_strain", "latency_drift"], ["traffic_surge", "cpu_saturation"], 0.7),
    ("warm_cache", ["latency_drift"], ["cache_miss_rate_high"], 0.6),
    ("restart_service", ["latency_drift", "error_spike"], ["memory_leak", "unknown"], 0.5),
    ("rollback_flag", ["error_spike"], ["bad_deployment"], 0.7),
    (
        "failover_dependency",
        ["dependency_health", "latency_drift", "error_spike"],
        ["upstream_outage", "database_slow_query"],
        0.6,
    ),
]
#: P(success | playbook, true cause); anything missing is 0.05.
WORKS = {
    ("scale_up_instances", "traffic_surge"): 0.85,
    ("scale_up_instances", "cpu_saturation"): 0.75,
    ("warm_cache", "cache_miss_rate_high"): 0.85,
    ("warm_cache", "database_slow_query"): 0.2,
    ("restart_service", "memory_leak"): 0.8,
    ("restart_service", "bad_deployment"): 0.3,
    ("restart_service", "cpu_saturation"): 0.3,
    ("rollback_flag", "bad_deployment"): 0.9,
    ("failover_dependency", "upstream_outage"): 0.85,
    ("failover_dependency", "database_slow_query"): 0.6,
}
#: Service-specific exceptions: on search, scaling does not fix CPU saturation but a restart does.
WORKS_ON = {
    ("search", "scale_up_instances", "cpu_saturation"): 0.15,
    ("search", "restart_service", "cpu_saturation"): 0.8,
    ("checkout", "failover_dependency", "database_slow_query"): 0.1,
}
#: Each service's mix of causes (not uniform, as in real fleets).
CAUSE_MIX = {
    "api": [3, 1, 2, 2, 2, 1, 1],
    "web": [1, 3, 1, 3, 2, 1, 1],
    "checkout": [2, 1, 1, 1, 3, 3, 1],
    "search": [1, 2, 3, 1, 1, 1, 2],
}


@dataclass
class Incident:
    service: str
    cause: str
    focus: str
    symptoms: list[Symptom]
    ts: float


def incidents(n: int, seed: int) -> list[Incident]:
    rng = random.Random(seed)
    causes = list(CAUSES)
    out = []
    for i in range(n):
        service = rng.choice(SERVICES)
        cause = rng.choices(causes, weights=CAUSE_MIX[service])[0]
        focus, pattern = CAUSES[cause]
        present = {name: rng.uniform(0.5, 1.0) for name, p in pattern if rng.random() < p}
        for name in SYMPTOMS:  # unrelated noise
            if name not in present and rng.random() < 0.06:
                present[name] = rng.uniform(0.3, 0.8)
        syms = []
        for name, strength in present.items():
            metric, signal, direction, labels = SYMPTOMS[name]
            syms.append(
                Symptom(
                    service,
                    metric,
                    signal,
                    direction,
                    rng.uniform(0.2, 2.0),
                    strength,
                    labels.get("dependency"),
                    dict(labels),
                )
            )
        out.append(Incident(service, cause, focus, syms, 1.7e9 + i * 600.0))
    return out


def playbooks(catalogue: str) -> dict[str, Any]:
    """The shipped default playbooks (``playbooks/``), or the benchmark's own idealised declarations."""
    if catalogue == "shipped":
        return load_playbooks(REPO / "playbooks")
    return {
        name: SimpleNamespace(
            name=name,
            impact="low",
            blast_radius=1,
            prior_success=prior,
            applies_to=SimpleNamespace(focus_areas=focus, root_causes=causes),
        )
        for name, focus, causes, prior in PLAYBOOKS
    }


class Advisors:
    def __init__(self, seed: int, learn: bool, catalogue: str) -> None:
        pbs = playbooks(catalogue)
        self.learn_enabled = learn
        self.rc = RootCauseSuggester(playbook_causes={n: list(p.applies_to.root_causes) for n, p in pbs.items()})
        self.ranker = PlaybookRanker(pbs, explore=learn, seed=seed)

    def handle(self, inc: Incident, rng: random.Random, i: int) -> tuple[list[str], bool]:
        feats = self.rc.features_for([inc.service], inc.symptoms)
        cands = self.rc.candidates_for([inc.service], inc.symptoms, feats)
        causes = [c.cause for c in cands]
        diagnosis = causes[0]
        ranked = self.ranker.rank(inc.service, inc.focus, diagnosis, now=inc.ts, features=feats[inc.service])
        if not ranked:
            return causes, False
        choice = ranked[0].name
        p = WORKS_ON.get((inc.service, choice, inc.cause), WORKS.get((choice, inc.cause), 0.05))
        ok = rng.random() < p
        if self.learn_enabled:
            outcome = Outcome(
                f"o{i}",
                inc.service,
                choice,
                "success" if ok else "failed",
                inc.ts,
                root_cause=diagnosis if diagnosis != UNKNOWN else None,
                verification_passed=ok,
            )
            self.rc.learn(outcome, feats)
            self.ranker.learn(outcome, feats)
        return causes, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incidents", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument(
        "--catalogue",
        choices=["shipped", "ideal"],
        default="shipped",
        help="shipped: the playbooks/ folder's declarations; ideal: declarations that match the simulation",
    )
    ap.add_argument("--no-explore", action="store_true", help="learning ranker exploits only (no Thompson draws)")
    args = ap.parse_args()

    stream = incidents(args.incidents, args.seed)
    learning = Advisors(args.seed, learn=True, catalogue=args.catalogue)
    frozen = Advisors(args.seed, learn=False, catalogue=args.catalogue)
    learning.ranker.explore = not args.no_explore
    rng_l, rng_f = random.Random(args.seed + 1), random.Random(args.seed + 1)
    print(
        f"{args.incidents} incidents, seed {args.seed}, {len(CAUSES)} causes, {len(SERVICES)} services, "
        f"{len(learning.ranker.playbooks)} playbooks ({args.catalogue} declarations)"
    )
    print(f"{'block':>9} | {'learning: top1  top3  fixed':>27} | {'frozen prior: top1  top3  fixed':>31}")
    totals = {"l": [0, 0, 0], "f": [0, 0, 0]}
    per_incident: dict[str, list[tuple[int, int, int, int]]] = {"l": [], "f": []}
    t0 = time.perf_counter()
    block: dict[str, list[int]] = {"l": [0, 0, 0], "f": [0, 0, 0]}
    for i, inc in enumerate(stream):
        for key, adv, rng in (("l", learning, rng_l), ("f", frozen, rng_f)):
            causes, ok = adv.handle(inc, rng, i)
            hit = (int(causes[0] == inc.cause), int(inc.cause in [c for c in causes if c != UNKNOWN][:3]), int(ok))
            per_incident[key].append((*hit, int(causes[0] == UNKNOWN)))
            block[key] = [a + b for a, b in zip(block[key], hit, strict=True)]
        if (i + 1) % args.block == 0 or i + 1 == len(stream):
            n = (i % args.block) + 1
            lo = i + 1 - n
            row = [f"{lo + 1:>4}-{i + 1:<4}"]
            for key in ("l", "f"):
                t1, t3, fx = (v / n for v in block[key])
                row.append(f"{t1:>16.2f} {t3:>5.2f} {fx:>6.2f}" if key == "l" else f"{t1:>20.2f} {t3:>5.2f} {fx:>6.2f}")
                totals[key] = [a + b for a, b in zip(totals[key], block[key], strict=True)]
            print(" | ".join(row))
            block = {"l": [0, 0, 0], "f": [0, 0, 0]}
    elapsed = time.perf_counter() - t0
    n = len(stream)
    for key, label in (("l", "learning"), ("f", "frozen prior")):
        t1, t3, fx = (v / n for v in totals[key])
        print(f"overall {label:>12}: top1={t1:.3f} top3={t3:.3f} fixed={fx:.3f}")
    third = n // 3
    for part, lo in (("first third", 0), ("middle third", third), ("last third", 2 * third)):
        cells = []
        for key in ("l", "f"):
            rows = per_incident[key][lo : lo + third]
            t1, t3, fx, unk = (sum(r[j] for r in rows) / len(rows) for j in range(4))
            committed = t1 / (1 - unk) if unk < 1 else 0.0  # top-1 accuracy when not answering "unknown"
            cells.append(f"top1={t1:.3f} top3={t3:.3f} fixed={fx:.3f} unknown={unk:.2f} committed-top1={committed:.2f}")
        print(f"{part:>12}: learning {cells[0]} | frozen {cells[1]}")
    print(
        f"learned root-cause labels: {learning.rc.learned}; "
        f"{elapsed / n * 1000:.2f} ms per incident for both advisor sets (noisy: shared 2-core machine)"
    )


if __name__ == "__main__":
    main()
