"""``OutcomeEntry``: a verified ``execution_outcome`` entry, readable as the design's outcome record.

``get_signed_outcomes`` returns these, so the design's learning code runs as written:
``o["result"]``, ``o["playbook"]``, ``o["cycle_id"]``, ``o["verification_passed"]``,
``o["learned_insights"]``, ... are the entry's own fields, then its (signed) payload's,
and ``o["actor_signature"]`` is the entry's signature. Attributes are the entry's.

>>> o = OutcomeEntry(sequence=9, timestamp="2025-01-15T14:31:30.000000Z", cycle_id="c1", actor="executor",
...                  action="execution_outcome", resource="api_cluster", subsystem="meta_coordinated_healing",
...                  payload='{"playbook":"scale_up_instances","result":"success","verification_passed":true}',
...                  result="success", key_id="k", prev_hash="", entry_hash="", signature="c8f1")
>>> o["result"], o["playbook"], o["cycle_id"], o["verification_passed"], o["actor_signature"], o.sequence
('success', 'scale_up_instances', 'c1', True, 'c8f1', 9)
>>> "playbook" in o, "nonsense" in o
(True, False)
"""

from __future__ import annotations

from typing import Any

from metaheal.events import LedgerEntry


class OutcomeEntry(LedgerEntry):
    """A signature-checked ``execution_outcome`` entry (see the module docstring)."""

    def keys(self) -> list[str]:
        return list(dict.fromkeys([*super().keys(), "actor_signature", *self.payload_dict]))

    def __getitem__(self, key: str) -> Any:
        if key == "actor_signature":
            return self.signature
        try:
            return super().__getitem__(key)
        except KeyError:
            pass
        payload = self.payload_dict
        if key in payload:
            return payload[key]
        raise KeyError(key)

    @classmethod
    def of(cls, entry: LedgerEntry) -> OutcomeEntry:
        return cls.model_validate(entry.model_dump())
