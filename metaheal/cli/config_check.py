"""What ``metaheal config check`` loads beyond the settings: the playbooks and the knowledge map."""

from __future__ import annotations

from typing import Any

from metaheal.agents.advisors.knowledge_map import KnowledgeMap
from metaheal.agents.common.playbooks import load_playbooks
from metaheal.config import Settings
from metaheal.errors import PlaybookError
from metaheal.runtime import resolve_playbooks


def check_references(settings: Settings) -> dict[str, Any]:
    """Load the playbooks (as ``up`` finds them) and the knowledge map; every problem in ``errors``."""
    errors: list[str] = []
    folder = resolve_playbooks(settings.playbooks)
    names: list[str] = []
    try:
        names = sorted(load_playbooks(folder))
    except PlaybookError as exc:
        errors += str(exc).splitlines()
    km_path = settings.ml.knowledge_map
    causes = 0
    try:
        km = KnowledgeMap.load(km_path) if km_path is not None else KnowledgeMap.default()
        causes = len(km.causes)
    except ValueError as exc:
        errors.append(f"ml.knowledge_map: {exc}")
    return {
        "services": len(settings.services),
        "operators": len(settings.operators),
        "playbooks_folder": str(folder),
        "playbooks": names,
        "knowledge_map": str(km_path) if km_path is not None else "built-in",
        "causes": causes,
        "errors": errors,
    }
