"""The one place metaheal talks to confluent-kafka.

Everything else asks for an :class:`Admin`, :class:`Producer`, :class:`Consumer`,
:class:`PartitionReader` or :class:`~metaheal.kafka.tail.TopicTail` built from
:class:`~metaheal.config.KafkaSettings`, so client tuning (``kafka.client``, and the
broker-specific settings tansu needs) lives in one package, as in Quix Streams'
``kafka/`` package. The few confluent-kafka names callers handle (a consumed
``Message``, a ``TopicPartition`` to start from, the logical offsets, error codes)
are re-exported here, so no module outside this package imports confluent-kafka.
"""

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from metaheal.kafka.admin import Admin, TopicSpec
from metaheal.kafka.config import aiokafka_security, client_config, consumer_config, producer_config
from metaheal.kafka.consumer import Consumer
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.message import ConsumedMessage
from metaheal.kafka.producer import Producer, RawProducer
from metaheal.kafka.reader import PartitionReader

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "Admin",
    "ConsumedMessage",
    "Consumer",
    "KafkaError",
    "KafkaException",
    "KafkaUnavailable",
    "Message",
    "PartitionReader",
    "Producer",
    "RawProducer",
    "TopicPartition",
    "TopicSpec",
    "aiokafka_security",
    "client_config",
    "consumer_config",
    "producer_config",
]
