"""The signed, hash-chained, replayable ledger (``metaheal.ledger``).

>>> from metaheal.ledger import ImmutableLog, LedgerUnavailable
>>> from metaheal.kafka import KafkaUnavailable
>>> issubclass(LedgerUnavailable, KafkaUnavailable)
True
"""

from metaheal.errors import LedgerUnavailable
from metaheal.ledger.log import ImmutableLog

__all__ = ["ImmutableLog", "LedgerUnavailable"]
