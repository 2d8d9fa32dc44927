from __future__ import annotations

from pathlib import Path

import pytest

from metaheal.agents.advisors.knowledge_map import KnowledgeMap
from metaheal.agents.advisors.root_cause import RootCauseSuggester

CAUSES = [
    "database_slow_query",
    "cache_miss_rate_high",
    "cpu_saturation",
    "traffic_surge",
    "bad_deployment",
    "upstream_outage",
    "memory_leak",
]


@pytest.mark.parametrize("cause", CAUSES)
def test_default_map_gives_the_right_top_cause_for_each_seeded_pattern(cause, patterns) -> None:
    rc = RootCauseSuggester()  # no graph, no learning: the map alone, day one
    cands = rc.candidates_for(["api"], patterns[cause])
    assert cands[0].cause == cause, [(c.cause, round(c.probability, 2)) for c in cands[:3]]
    assert cands[0].probability > 0.5
    assert cands[0].evidence, "the top candidate names the features it rests on"
    assert abs(sum(c.probability for c in cands) - 1.0) < 1e-6


def test_no_symptoms_means_unknown_not_a_confident_guess() -> None:
    p = KnowledgeMap.default().probabilities({})
    assert max(p, key=p.get) == "unknown"
    assert max(v for k, v in p.items() if k != "unknown") < 0.1


def test_ambiguous_pattern_splits_probability(make_sym) -> None:
    # latency up with both CPU and the database slow: two explanations, neither certain
    syms = [
        make_sym("api", "latency_p95_ms", "latency"),
        make_sym("api", "cpu_utilization", "saturation"),
        make_sym("api", "dependency_latency_ms", "dependency", dependency="orders-db"),
    ]
    cands = RootCauseSuggester().candidates_for(["api"], syms)
    top2 = {c.cause for c in cands[:2]}
    assert top2 == {"cpu_saturation", "database_slow_query"}
    assert all(c.probability < 0.6 for c in cands)


def test_yaml_map_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("unknown_weight: 0.1\ncauses:\n  noisy_neighbour: {all: [cpu_up], none: [traffic_up]}\n")
    km = KnowledgeMap.load(path)
    p = km.probabilities({"cpu_up": 1.0})
    assert set(p) == {"noisy_neighbour", "unknown"} and max(p, key=p.get) == "noisy_neighbour"


def test_bad_yaml_map_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("causes:\n  x: {all: [a], sometimes: [b]}\n")
    with pytest.raises(ValueError, match=r"map.yaml: causes.x.sometimes: Extra inputs"):
        KnowledgeMap.load(path)
