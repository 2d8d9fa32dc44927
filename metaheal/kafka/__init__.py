"""The one place metaheal talks to confluent-kafka.

Everything else asks for an :class:`Admin`, :class:`Producer` or :class:`Consumer`
built from :class:`~metaheal.config.KafkaSettings`, so client tuning (and the
broker-specific settings tansu needs) lives in one module, as in Quix Streams'
``kafka/`` package.
"""

from metaheal.kafka.admin import Admin, TopicSpec
from metaheal.kafka.config import client_config, consumer_config, producer_config
from metaheal.kafka.consumer import Consumer
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.producer import Producer

__all__ = [
    "Admin",
    "Consumer",
    "KafkaUnavailable",
    "Producer",
    "TopicSpec",
    "client_config",
    "consumer_config",
    "producer_config",
]
