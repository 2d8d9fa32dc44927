"""The healing loop as the design's users watch it: ``meta_coordinated_healing``.

::

    from metaheal.agents.meta_coordinated_healing import meta_coordinated_healing
    current = meta_coordinated_healing.current_cycle
    print(f"Focus: {current.focus_area.value}")

Every property reads the topics when it is used (through :class:`~metaheal.agents.meta.status.StatusClient`),
so the answer is the system's, not one process's memory, and is current on each access. The
handle is configured from ``metaheal.yaml`` / ``METAHEAL_*`` on first use (:mod:`metaheal.defaults`).

>>> meta_coordinated_healing
<meta_coordinated_healing: not built yet>
"""

from __future__ import annotations

from metaheal.agents.meta.status import StatusClient
from metaheal.config import Settings
from metaheal.defaults import Configured
from metaheal.events import CycleFocus, SignedOutcome


class MetaCoordinatedHealing:
    """Read-only view of the loop: its latest cycle decision, its outcomes, its guardrails."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = StatusClient(settings)

    @property
    def current_cycle(self) -> CycleFocus | None:
        """The latest :class:`~metaheal.events.CycleFocus` on ``<prefix>cycles`` (``None`` before the first)."""
        return self.status.current_cycle()

    @property
    def outcome_history(self) -> list[SignedOutcome]:
        """Every signed outcome ``<prefix>outcomes`` retains, oldest first."""
        return self.status.outcome_history(limit=None)

    @property
    def guardrail_level(self) -> str:
        """The guardrail level in force (``tight``, ``maintain`` or ``loose``)."""
        return self.status.guardrail_level()

    def __repr__(self) -> str:
        return f"MetaCoordinatedHealing(topics={self.settings.topics.prefix}*)"


#: The process-wide handle (built on first use; ``meta_coordinated_healing.configure(settings)`` to choose).
meta_coordinated_healing: Configured[MetaCoordinatedHealing] = Configured(
    "meta_coordinated_healing", MetaCoordinatedHealing
)

__all__ = ["MetaCoordinatedHealing", "meta_coordinated_healing"]
