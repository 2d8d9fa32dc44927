"""Symptoms -> causes: the hand-written prior that makes the suggester useful on day one.

Each cause is a rule over the symptom features of one service (feature values are
0..1 strengths, see ``root_cause.symptom_features``):

* ``all``: every one must be present (the rule's strength is the weakest of them);
* ``any``: at least one must be present (the strongest counts);
* ``boost``: optional corroboration (raises the match from 0.8 towards 1.0);
* ``none``: features that explain the symptoms better elsewhere (they dampen the match);
* ``expect``: features the cause produces whenever telemetry can show them; they do not raise the
  match, but found at baseline they argue against the cause (``negative``).

Matches become probabilities by normalising against an explicit ``unknown`` weight,
so a pattern that matches nothing leaves most of the mass on ``unknown`` instead
of on the least-bad rule. The learned model (``root_cause``) takes over from this
prior as confirmed outcomes accumulate.

A YAML file with the same shape replaces the built-in map (``ml.knowledge_map``)::

    unknown_weight: 0.25
    causes:
      database_slow_query: {all: [latency_up, db_latency_up], boost: [slow_query]}

>>> km = KnowledgeMap.default()
>>> p = km.probabilities({"latency_up": 1.0, "cpu_up": 1.0, "saturation_up": 1.0})
>>> max(p, key=p.get), round(p["cpu_saturation"], 2)
('cpu_saturation', 0.73)
>>> p = km.probabilities({})
>>> max(p, key=p.get)
'unknown'
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metaheal.agents.advisors.base import UNKNOWN

#: Floor likelihood of a cause whose rule does not match at all (keeps learning possible).
EPSILON = 0.02


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all: list[str] = Field(default_factory=list)
    any: list[str] = Field(default_factory=list)
    boost: list[str] = Field(default_factory=list)
    none: list[str] = Field(default_factory=list)
    expect: list[str] = Field(default_factory=list)

    def match(self, f: dict[str, float]) -> float:
        """0..1: how well the features fit this rule."""
        if not self.all and not self.any:
            return 0.0
        m = min((f.get(k, 0.0) for k in self.all), default=1.0)
        if self.any:
            m *= max(f.get(k, 0.0) for k in self.any)
        if m <= 0:
            return 0.0
        if self.boost:
            m *= 0.8 + 0.2 * max(f.get(k, 0.0) for k in self.boost)
        else:
            m *= 0.8
        if self.none:
            m *= 1.0 - 0.75 * max(f.get(k, 0.0) for k in self.none)
        return m


class KnowledgeMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unknown_weight: float = Field(0.25, gt=0)
    causes: dict[str, Rule] = Field(min_length=1)

    @classmethod
    def default(cls) -> KnowledgeMap:
        return cls.model_validate(DEFAULT_MAP)

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeMap:
        """Read a YAML map; errors name the file and the field."""
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"knowledge map {p}: {exc}") from None
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"knowledge map {p}: {problems}") from None

    @property
    def labels(self) -> list[str]:
        return [*self.causes, UNKNOWN]

    def matches(self, features: dict[str, float]) -> dict[str, float]:
        return {cause: rule.match(features) for cause, rule in self.causes.items()}

    def probabilities(self, features: dict[str, float]) -> dict[str, float]:
        """A distribution over the causes plus ``unknown`` (sums to 1)."""
        weights = {c: EPSILON + m for c, m in self.matches(features).items()}
        weights[UNKNOWN] = self.unknown_weight
        total = sum(weights.values())
        return {c: w / total for c, w in weights.items()}

    def explain(self, cause: str, features: dict[str, float]) -> list[str]:
        """The features that made ``cause`` match, for the advice's evidence."""
        rule = self.causes.get(cause)
        if rule is None:
            return []
        keys = list(dict.fromkeys([*rule.all, *rule.any, *rule.boost]))
        return [f"{k}={features[k]:.2f}" for k in keys if features.get(k, 0.0) > 0]


DEFAULT_MAP = {
    "unknown_weight": 0.25,
    "causes": {
        # a slow database whose load did not rise; misses falling through to it explain its latency better
        "database_slow_query": {
            "all": ["latency_up", "db_latency_up"],
            "boost": ["slow_query"],
            "none": ["cache_hit_down", "dep_load_up"],
        },
        # the misses land on the database: its load and latency rising corroborate them; without a hit-rate
        # metric, a dependency loaded beyond this service's own traffic is what shows them (a hit rate at its
        # baseline still argues against them)
        "cache_miss_rate_high": {
            "all": ["latency_up"],
            "any": ["cache_hit_down", "dep_load_up"],
            "boost": ["dep_load_up", "db_latency_up"],
            "expect": ["cache_hit_down"],
        },
        "cpu_saturation": {"all": ["latency_up", "cpu_up"], "boost": ["saturation_up"], "none": ["traffic_up"]},
        "traffic_surge": {"all": ["traffic_up", "saturation_up"], "boost": ["latency_up"]},
        "bad_deployment": {"all": ["errors_up"], "any": ["deploy_recent", "config_change_recent"]},
        # a dependency failing under load this service sends it (more requests than our own traffic
        # explains, or our cache misses falling through to it) is no outage of the dependency
        "upstream_outage": {
            "any": ["dep_errors_up", "dep_down"],
            "boost": ["errors_up"],
            "none": ["deploy_recent", "dep_load_up", "cache_hit_down"],
        },
        "memory_leak": {"all": ["memory_up"], "boost": ["errors_up"], "none": ["traffic_up"]},
    },
}
