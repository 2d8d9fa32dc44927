"""The service dependency graph: who calls whom, and where a fault in one service shows in others.

Used by the meta loop, the advisors and the demo; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def upstream(service: str, dependencies: dict[str, list[str]]) -> set[str]:
    """Every service ``service`` calls, directly or not."""
    seen: set[str] = set()
    todo = list(dependencies.get(service, []))
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(dependencies.get(d, []))
    return seen


def downstream(service: str, dependencies: dict[str, list[str]]) -> set[str]:
    """Every service that calls ``service``, directly or not.

    >>> sorted(downstream("db", {"web": ["api"], "api": ["db", "cache"]}))
    ['api', 'web']
    """
    return {caller for caller in dependencies if service in upstream(caller, dependencies)}


class ServiceGraph:
    """``settings.services`` as a dependency graph, as it is now.

    ``metaheal up`` swaps in a new list when a service registers at run time; the graph
    is rebuilt only then, so reading it per anomaly costs nothing.
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._of: list[Any] | None = None
        self._graph: dict[str, list[str]] = {}

    @property
    def graph(self) -> dict[str, list[str]]:
        if self._of is not self._settings.services:
            self._of = self._settings.services
            self._graph = {svc.name: list(svc.dependencies) for svc in self._of}
        return self._graph


def related(services: str | Iterable[str], dependencies: dict[str, list[str]]) -> set[str]:
    """The services themselves, everything they call and everything calling them, directly or not:
    whose remediation changes them, and where a fault in them shows.

    >>> sorted(related("api", {"web": ["api"], "api": ["db"], "cache": []}))
    ['api', 'db', 'web']
    """
    names = {services} if isinstance(services, str) else set(services)
    return names.union(*(upstream(s, dependencies) | downstream(s, dependencies) for s in names))
