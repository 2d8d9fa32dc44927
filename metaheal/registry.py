"""The service registry on ``<prefix>services``: services announce themselves, the control plane follows.

Why a topic and not only ``services:`` in ``metaheal.yaml``: the control plane and the
services it heals start in any order, on any machine. A fleet started after
``metaheal up`` (``metaheal simulate``, or a real deployment's start-up step running
``metaheal services register``) publishes one :class:`~metaheal.events.ServiceRegistration`
per service; every ``up`` process follows the topic and merges them into
``settings.services`` while running, so the executor can call the admin URL of a
service it had never heard of when it started. The topic is compacted and keyed by
service name, so its latest record per name is the registry and a tombstone (null
value) removes a name.

Configured services win: what an operator wrote beats what a service says about
itself, except a missing ``admin_url``, which a registration fills in.

Registrations (and deregistering tombstones) are signed records
(``service_registration`` in :data:`metaheal.ledger.signing.RECORD_WRITERS`): written with
the control plane's ``registrar`` key (``metaheal services register`` and ``metaheal
simulate`` where the keys folder is) or an operator's key. An unsigned or mis-signed
record, or an older one replayed after a newer one, is rejected (dead letter with the reason).

>>> from metaheal.config import ServiceSettings
>>> conf = [ServiceSettings(name="db", criticality="critical")]
>>> reg = [ServiceSettings(name="db", admin_url="http://h:1", criticality="low"), ServiceSettings(name="web")]
>>> [(s.name, s.admin_url, s.criticality) for s in merged_services(conf, reg)]
[('db', 'http://h:1', 'critical'), ('web', None, 'medium')]
>>> decode_registration(b'{"name": "db", "admin_url": "tcp://h", "registered_by": "x", "ts": 1}')
Traceback (most recent call last):
...
metaheal.errors.DecodeError: invalid ServiceRegistration: admin_url: must be an http:// or https:// URL (got 'tcp://h')
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metaheal.config import ServiceSettings, Settings, admin_url_problem
from metaheal.errors import DecodeError, LimitExceeded, RecordRefused
from metaheal.events import DeadLetter, ServiceRegistration
from metaheal.kafka import ConsumedMessage, Consumer, KafkaUnavailable, Producer, TopicPartition
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import (
    MAGIC,
    AvroDeserializer,
    AvroSerializer,
    validate,
)
from metaheal.kafka.tail import TopicTail
from metaheal.ledger.signing import RecordSigner, RecordVerifier

logger = logging.getLogger(__name__)

TOPIC = "services"
#: the record type in ``RECORD_WRITERS``
RECORD = "service_registration"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")

_avro_in = AvroDeserializer(ServiceRegistration)
_avro_out = AvroSerializer(ServiceRegistration)


def check(reg: ServiceRegistration) -> ServiceRegistration:
    """What makes a registration usable, beyond its types: the executor calls ``admin_url`` over
    HTTP and walks ``dependencies``, so a bad one would only fail at remediation time.

    >>> check(ServiceRegistration(name="db", dependencies=["db"], registered_by="me", ts=0.0))
    Traceback (most recent call last):
    ...
    ValueError: invalid ServiceRegistration: dependencies: 'db' cannot depend on itself
    """
    problems = []
    if not NAME.fullmatch(reg.name):
        problems.append(f"name: only letters, digits, '_', '.', '-' allowed (got {reg.name!r})")
    url_problem = admin_url_problem(reg.admin_url) if reg.admin_url is not None else None
    if url_problem is not None:
        problems.append(f"admin_url: {url_problem}")
    if reg.name in reg.dependencies:
        problems.append(f"dependencies: {reg.name!r} cannot depend on itself")
    bad = [d for d in reg.dependencies if not NAME.fullmatch(d)]
    if bad:
        problems.append(f"dependencies: not service names: {', '.join(map(repr, bad))}")
    if problems:
        raise ValueError("invalid ServiceRegistration: " + "; ".join(problems))
    return reg


def registered_by(tool: str) -> str:
    """Who registered: the tool, host and pid, so ``metaheal services list`` can say where a URL came from."""
    return f"{tool}@{socket.gethostname()}:{os.getpid()}"


def registration(svc: ServiceSettings, by: str, ts: float | None = None) -> ServiceRegistration:
    """The registration of a configured-style service entry (raises ``ValueError`` naming the field)."""
    return check(ServiceRegistration(**svc.model_dump(), registered_by=by, ts=time.time() if ts is None else ts))


def to_service(reg: ServiceRegistration) -> ServiceSettings:
    return ServiceSettings(**reg.model_dump(exclude={"registered_by", "ts"}))


def decode_registration(value: bytes) -> ServiceRegistration:
    """Avro single-object (what metaheal publishes) or JSON (what a shell script can publish), checked."""
    if value[:2] == MAGIC:
        reg = _avro_in(value)
    else:
        try:
            doc = loads(value)
        except LimitExceeded:
            raise
        except DecodeError as exc:
            raise DecodeError(f"neither Avro single-object nor JSON: {exc}") from None
        reg = validate(ServiceRegistration, doc)
    try:
        return check(reg)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


def merged_services(
    configured: Iterable[ServiceSettings], registered: Iterable[ServiceSettings]
) -> list[ServiceSettings]:
    """Configured entries first and winning; a registration only fills a configured entry's missing admin_url."""
    by_name = {s.name: s for s in configured}
    for s in registered:
        have = by_name.get(s.name)
        if have is None:
            by_name[s.name] = s
        elif have.admin_url is None and s.admin_url is not None:
            by_name[s.name] = have.model_copy(update={"admin_url": s.admin_url})
    return list(by_name.values())


class RegistryPublisher:
    """Registers and deregisters services; ``register`` returns once the broker acknowledged."""

    def __init__(self, settings: Settings, *, actor: str = "registrar") -> None:
        self.topic = settings.topics.name(TOPIC)
        self._producer = Producer(settings.kafka)
        self._signer = RecordSigner(settings.keys, actor)

    def register(self, regs: Iterable[ServiceRegistration]) -> int:
        return self._send((reg.name, _avro_out(reg)) for reg in regs)

    def deregister(self, names: Iterable[str]) -> int:
        return self._send((name, None) for name in names)  # tombstones

    def _send(self, records: Iterable[tuple[str, bytes | None]]) -> int:
        n = 0
        for key, value in records:
            headers = self._signer.sign(RECORD, value, key=key, record_id=key)
            self._producer.produce(self.topic, value, key=key, headers=headers)
            n += 1
        self._producer.flush(15.0)
        return n

    def close(self) -> None:
        self._producer.close(5.0)


@dataclass
class Snapshot:
    """The registry as of the topic's end: latest registration per name, and the records that were rejected."""

    services: dict[str, ServiceRegistration] = field(default_factory=dict)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # offset, key, error
    next_offset: int = 0
    #: checks each record's signature (None: not checked, for tools that only display)
    verifier: RecordVerifier | None = None
    signed_at: dict[str, float] = field(default_factory=dict)  # name -> signing time of the record applied


def read_registry(settings: Settings, timeout: float = 30.0) -> Snapshot:
    """Read ``<prefix>services`` to its end (partition EOF; tansu's watermarks are unreliable)."""
    snap = Snapshot(verifier=RecordVerifier.for_settings(settings))
    with Consumer(settings.kafka) as c:
        for m in c.read_to_end(settings.topics.name(TOPIC), partitions=[0], timeout=timeout):
            snap.next_offset = m.offset() + 1
            apply_record(snap, m)
    return snap


def apply_record(snap: Snapshot, m: ConsumedMessage) -> ServiceRegistration | DecodeError | None:
    """Fold one record into ``snap``; returns the registration, ``None`` for a tombstone, or the error."""
    key = (m.key() or b"").decode("utf-8", "replace")
    value = m.value()
    if snap.verifier is not None:
        try:
            signed = snap.verifier.check(RECORD, m, record_id=key)
            if signed.ts < snap.signed_at.get(key, float("-inf")) - snap.verifier.max_skew:
                raise RecordRefused("replayed", f"{key} signed at {signed.ts:.3f}, before the record already applied")
        except RecordRefused as exc:
            snap.rejected.append((m.offset(), key, str(exc)))
            return exc
        snap.signed_at[key] = max(signed.ts, snap.signed_at.get(key, float("-inf")))
    if value is None:
        snap.services.pop(key, None)
        return None
    try:
        reg = decode_registration(value)
    except DecodeError as exc:
        snap.rejected.append((m.offset(), key, str(exc)))
        return exc
    if key and key != reg.name:
        err = DecodeError(f"record key {key!r} is not the registration's name {reg.name!r}")
        snap.rejected.append((m.offset(), key, str(err)))
        return err
    snap.services[reg.name] = reg
    return reg


class RegistryFollower(TopicTail):
    """Follows ``<prefix>services`` from ``start_offset``; ``on_change(name, registration or None)`` per record.

    ``on_change`` runs on this tail's thread (callers hand it to their event loop).
    With ``dead_letter`` set, an invalid registration goes to ``<prefix>deadletter``
    with the reason; only records that arrive while following are dead-lettered, so a
    restarted control plane does not file the same bad record twice.
    """

    name = "service-registry"
    batch = 100

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[str, ServiceRegistration | None], None],
        *,
        start_offset: int = 0,
        dead_letter: bool = False,
        signed_at: dict[str, float] | None = None,
    ) -> None:
        super().__init__(settings.kafka)
        self._settings = settings
        self._topic = settings.topics.name(TOPIC)
        self._on_change = on_change
        self._start = start_offset
        self._dead_letter = dead_letter
        # signed_at: what the snapshot read up to start_offset had applied (an older record replayed later loses)
        self._snap = Snapshot(verifier=RecordVerifier.for_settings(settings), signed_at=dict(signed_at or {}))
        self._producer: Producer | None = None
        self._ser_dead = AvroSerializer(DeadLetter)

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return [TopicPartition(self._topic, 0, self._start)]

    def handle(self, msg: ConsumedMessage) -> None:
        got = apply_record(self._snap, msg)
        key = (msg.key() or b"").decode("utf-8", "replace")
        if isinstance(got, DecodeError):
            logger.warning("service registration rejected key=%s offset=%d error=%s", key, msg.offset(), got)
            if self._dead_letter:
                why = f"untrusted service registration: {got.reason}" if isinstance(got, RecordRefused) else None
                self._send_dead_letter(msg, str(got), why)
            return
        self._on_change(got.name if got is not None else key, got)

    def _send_dead_letter(self, msg: ConsumedMessage, error: str, reason: str | None = None) -> None:
        if self._producer is None:
            self._producer = Producer(self._kafka)
        dl = DeadLetter.of(msg, reason or "invalid service registration", error)
        try:
            self._producer.send(self._settings.topics.name("deadletter"), self._ser_dead(dl), key=msg.key())
        except KafkaUnavailable as exc:  # the warning above already names the record
            logger.warning("service registration dead_letter_failed offset=%d error=%s", msg.offset(), exc)

    def stop(self) -> None:
        super().stop()
        if self._producer is not None:
            self._producer.close(5.0)
            self._producer = None
