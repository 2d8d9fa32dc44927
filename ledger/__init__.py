"""The signed, hash-chained, replayable ledger (``metaheal.ledger``).

``immutable_log`` is the process's :class:`ImmutableLog`, configured from ``metaheal.yaml`` /
``METAHEAL_*`` on first use (:mod:`metaheal.defaults`), as the design uses it::

    from metaheal.ledger import immutable_log
    replay = await immutable_log.replay_cycle("cycle_20250115_143000_42")

>>> from metaheal.ledger import ImmutableLog, LedgerUnavailable, immutable_log
>>> from metaheal.kafka import KafkaUnavailable
>>> issubclass(LedgerUnavailable, KafkaUnavailable)
True
>>> immutable_log
<immutable_log: not built yet>
"""

from metaheal.defaults import Configured
from metaheal.errors import LedgerUnavailable
from metaheal.ledger.log import ImmutableLog
from metaheal.ledger.outcomes import OutcomeEntry

#: The process-wide ledger handle (built on first use; ``immutable_log.configure(settings)`` to choose).
immutable_log: Configured[ImmutableLog] = Configured("immutable_log", ImmutableLog, ImmutableLog.close)

__all__ = ["ImmutableLog", "LedgerUnavailable", "OutcomeEntry", "immutable_log"]
