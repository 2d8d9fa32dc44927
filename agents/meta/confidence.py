"""Which playbooks a focus area may use, and in which order while the ranker has too little evidence."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from metaheal.agents.common.playbooks import load_playbooks
from metaheal.config import Settings


def focus_playbooks(settings: Settings) -> tuple[dict[str, list[str]], dict[str, float], dict[str, frozenset[str]]]:
    """Applicable playbooks per focus area (best prior first), each playbook's declared prior success
    and the root causes each declares it fixes.

    A folder that cannot be loaded raises :class:`~metaheal.errors.PlaybookError`, as it does for
    the executor and the advisors: the meta loop never directs from playbooks it did not read.
    """
    books = load_playbooks(settings.playbooks)
    out: dict[str, list[str]] = defaultdict(list)
    for name, pb in sorted(books.items(), key=lambda kv: -kv[1].prior_success):
        for area in pb.applies_to.focus_areas:
            out[area].append(name)
    causes = {name: frozenset(pb.applies_to.root_causes) for name, pb in books.items()}
    return dict(out), {name: pb.prior_success for name, pb in books.items()}, causes


def order_by_diagnosis(
    books: list[str], fixes: Mapping[str, frozenset[str]], cause_probability: Mapping[str, float]
) -> list[str]:
    """Playbooks that fix the diagnosed cause first, weighted by how likely each cause is.

    Used while the ranker has too little evidence to be trusted: the root-cause
    suggester still knows *what* is wrong, and a playbook that does not declare
    that cause (scale-up for a cache eviction storm) should not be tried first
    just because its prior is higher. A playbook that declares several causes shares its
    weight among them (the more specific fix for a cause goes first: failover, not
    scale-up, for a slow query). Ties keep the given (learned) order.

    >>> fixes = {"scale_up": frozenset({"cpu_saturation"}), "warm_cache": frozenset({"cache_miss_rate_high"})}
    >>> order_by_diagnosis(["scale_up", "warm_cache"], fixes, {"cache_miss_rate_high": 0.6, "cpu_saturation": 0.2})
    ['warm_cache', 'scale_up']
    >>> order_by_diagnosis(["scale_up", "warm_cache"], fixes, {})
    ['scale_up', 'warm_cache']
    """

    def weight(name: str) -> float:
        declared = fixes.get(name, frozenset())
        return sum(p for cause, p in cause_probability.items() if cause in declared) / max(1, len(declared))

    return [b for _, b in sorted(enumerate(books), key=lambda ib: (-weight(ib[1]), ib[0]))]
