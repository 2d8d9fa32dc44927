"""Who may sign what: an actor may only append the actions that belong to it.

The table is data, not code paths, so auditors can read it and the verifier can
apply exactly the rule the writer applied. ``operator:<name>`` stands for every
human operator.

>>> allowed("executor", "execution_outcome"), allowed("ml_advisors", "execution_outcome")
(True, False)
>>> allowed("operator:alice", "approval_decided"), allowed("meta_loop", "approval_decided")
(True, False)

Subsystems and resources are descriptive, not authorising: the verifier checks actor and
action only, so ledgers written in either vocabulary below verify alike.

>>> subsystems("meta_coordinated_healing") == {"meta_coordinated_healing", "meta_loop", "advisors", "agents"}
True
>>> subsystems("api")
{'api'}
"""

from __future__ import annotations

#: The subsystem the healing loop (meta loop, advisors, planner and executor) writes under: the design's name.
SUBSYSTEM = "meta_coordinated_healing"
#: The resource of the loop's decisions about itself (``cycle_focus_decided``, ``advice_provided``).
SELF_HEAL = "self_heal"
#: What the same components wrote before they used the design's name; still read as the loop's entries.
LEGACY_SUBSYSTEMS: frozenset[str] = frozenset({"meta_loop", "advisors", "agents"})

ACTIONS: dict[str, frozenset[str]] = {
    "meta_loop": frozenset(
        {
            "cycle_focus_decided",
            "probes_enabled",
            "directive_issued",
            "learning_update",
            "guardrail_changed",
            "trust_violation",
        }
    ),
    "ml_advisors": frozenset({"advice_provided", "model_updated"}),
    "agentic_planner": frozenset({"plan_created", "trust_checked", "trust_violation", "approval_requested"}),
    "executor": frozenset(
        {
            "execution_started",
            "step_executed",
            "verification_result",
            "rollback_executed",
            "execution_outcome",
            "trust_violation",
            "plan_recovered",
            "approval_received",
            "verdict_requested",
            "verdict_received",
            "verdict_expired",
        }
    ),
    "operator": frozenset({"approval_decided"}),
    "ledger": frozenset({"checkpoint"}),
    # signs service registrations on the bus (metaheal.ledger.signing.RECORD_WRITERS); appends nothing
    "registrar": frozenset(),
}

#: Actors that get a key from ``metaheal keys init`` (operators are created by name).
SYSTEM_ACTORS: tuple[str, ...] = ("meta_loop", "ml_advisors", "agentic_planner", "executor", "ledger", "registrar")


def role(actor: str) -> str:
    """``operator:alice`` -> ``operator``; system actors are their own role."""
    return "operator" if actor.startswith("operator:") else actor


def valid_actor(actor: str) -> bool:
    """>>> valid_actor("operator:bob"), valid_actor("operator:"), valid_actor("mallory")
    (True, False, False)
    """
    if actor.startswith("operator:"):
        name = actor.split(":", 1)[1]
        return bool(name) and all(c.isalnum() or c in "-_." for c in name)
    return actor in ACTIONS and actor != "operator"


def allowed(actor: str, action: str) -> bool:
    return valid_actor(actor) and action in ACTIONS.get(role(actor), frozenset())


def subsystems(name: str) -> set[str]:
    """The subsystem names that select ``name``'s entries (the loop's include its earlier names)."""
    return {name, *LEGACY_SUBSYSTEMS} if name == SUBSYSTEM else {name}
