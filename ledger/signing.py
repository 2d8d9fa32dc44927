"""Signed bus records: who wrote a record that can cause an action, checked before anyone acts on it.

A record on a topic that can make metaheal act (a directive, the executor's durable state, a
service registration, the meta loop's lease and guardrails, a probe command, an outcome) carries
one Kafka header, ``metaheal-sig``: a small JSON envelope ``{v, type, actor, key_id, ts, id, sig}``.
``sig`` is the actor's Ed25519 signature (its key in the :class:`~metaheal.ledger.keys.KeyRegistry`)
over the record type, actor, key id, signing time, record id, the record's Kafka key and the
SHA-256 of its value, so the bytes, the key they are stored under and the claimed writer are all
bound. The value itself is unchanged: readers that ignore headers still decode it (the Avro
schemas do not change).

:data:`RECORD_WRITERS` is the one table of which actor may write which record type (the record
twin of :data:`metaheal.ledger.authz.ACTIONS`). A reader refuses, with a
:class:`~metaheal.errors.RecordRefused` naming the reason, a record that is unsigned, signed by a
key the registry does not know, revoked, or not valid at the signing time, signed by an actor the
table does not allow, mis-signed, signed further in the future than the clock skew allows, older
than the reader's age bound, or (for readers that ask) a record id seen before.

>>> import tempfile, pathlib, time
>>> from metaheal.ledger.keys import init_system_keys
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = init_system_keys(d); now = time.time()
>>> h = RecordSigner(d, "meta_loop").sign("directive", b"value", key=b"api", record_id="d1", ts=now)
>>> v = RecordVerifier(d, clock=lambda: now + 1)
>>> v.verify("directive", b"value", b"api", h, record_id="d1").actor
'meta_loop'
>>> v.verify("directive", b"other", b"api", h, record_id="d1")
Traceback (most recent call last):
...
metaheal.errors.RecordRefused: bad_signature: directive signed by meta_loop (key ...) does not verify
>>> v.verify("executor_state", b"v", b"api", RecordSigner(d, "meta_loop").sign("control", b"v", key=b"api", ts=now))
Traceback (most recent call last):
...
metaheal.errors.RecordRefused: wrong_type: the envelope signs a control record, read as executor_state
>>> v.verify("directive", b"value", b"api", None)
Traceback (most recent call last):
...
metaheal.errors.RecordRefused: unsigned: directive record has no metaheal-sig header
>>> RecordVerifier(d, clock=lambda: now - 60).verify("directive", b"value", b"api", h)
Traceback (most recent call last):
...
metaheal.errors.RecordRefused: future_ts: signed at ..., 60.0s ahead of now (max skew 30s)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from metaheal.config import OperatorSettings
from metaheal.errors import LedgerKeyError, RecordRefused
from metaheal.ledger.authz import role, valid_actor
from metaheal.ledger.keys import REGISTRY_FILE, KeyRegistry

logger = logging.getLogger(__name__)

#: The header that carries the envelope.
HEADER = "metaheal-sig"
VERSION = 1
#: Largest envelope a reader parses (a real one is ~300 bytes).
MAX_ENVELOPE_BYTES = 2048

#: Which actor (role: ``operator`` stands for every ``operator:<name>``) may write which record type.
RECORD_WRITERS: dict[str, frozenset[str]] = {
    # <prefix>directives: issued by the meta loop, executed by the executor
    "directive": frozenset({"meta_loop"}),
    # <prefix>control: lease, guardrail level and last cycle of the meta loop
    "control": frozenset({"meta_loop"}),
    # <prefix>probes: extra telemetry switched on by the meta loop
    "probe_command": frozenset({"meta_loop"}),
    # <prefix>executor-state: the executor's write-ahead state, read back by executors only
    "executor_state": frozenset({"executor"}),
    # <prefix>outcomes: what became of a plan, learned from by the meta loop
    "outcome": frozenset({"executor"}),
    # <prefix>services: the control plane's registrar key (`metaheal services register`, `metaheal simulate`
    # where the keys folder is) or a named operator
    "service_registration": frozenset({"registrar", "operator"}),
}


def may_write(actor: str, record_type: str) -> bool:
    """>>> may_write("meta_loop", "directive"), may_write("executor", "directive"), may_write("operator:a", "control")
    (True, False, False)
    >>> may_write("operator:alice", "service_registration"), may_write("registrar", "service_registration")
    (True, True)
    """
    return valid_actor(actor) and role(actor) in RECORD_WRITERS.get(record_type, frozenset())


def iso(ts: float) -> str:
    """Epoch seconds in the key registry's fixed-width UTC form (``valid_from`` compares as text)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _field(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def signed_message(
    record_type: str, actor: str, key_id: str, ts: float, record_id: str, key: bytes | None, value: bytes | None
) -> bytes:
    """The bytes an envelope signs: length-prefixed fields after a domain tag (no two records share them)."""
    digest = b"tombstone" if value is None else hashlib.sha256(value).digest()
    parts = [record_type, actor, key_id, repr(float(ts)), record_id]
    return b"metaheal.record.v1" + b"".join(_field(p.encode()) for p in parts) + _field(key or b"") + _field(digest)


def _as_bytes(key: bytes | str | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


@dataclass(frozen=True)
class Signed:
    """What a verified envelope says: who signed, with which key, when, under which record id."""

    record_type: str
    actor: str
    key_id: str
    ts: float
    record_id: str

    def header_value(self, sig: str) -> bytes:
        doc = {
            "v": VERSION,
            "type": self.record_type,
            "actor": self.actor,
            "key_id": self.key_id,
            "ts": self.ts,
            "id": self.record_id,
            "sig": sig,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class _Registry:
    """The key registry (plus operators' keys from settings), re-read when ``registry.json`` changes."""

    def __init__(self, folder: Path, operators: Sequence[OperatorSettings] = (), min_interval: float = 1.0) -> None:
        self.folder = Path(folder)
        self.operators = list(operators)
        self.min_interval = min_interval
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.registry = self._load()

    def _mtime(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.folder / REGISTRY_FILE)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> KeyRegistry:
        self._stamp = self._mtime()
        return KeyRegistry.load(self.folder).with_operators(self.operators)

    def get(self, force: bool = False) -> KeyRegistry:
        now = time.monotonic()
        if force or now - self._checked >= self.min_interval:
            with self._lock:
                self._checked = now
                if self._mtime() != self._stamp:
                    self.registry = self._load()
        return self.registry


class RecordSigner:
    """Signs records as ``actor`` with its current key; follows rotation (re-reads the registry when it changes)."""

    def __init__(self, keys: str | Path, actor: str, *, clock: Callable[[], float] = time.time) -> None:
        if not valid_actor(actor):
            raise LedgerKeyError(f"actor {actor!r} is not a known actor (see metaheal.ledger.authz)")
        self.actor = actor
        self.clock = clock
        self._keys = _Registry(Path(keys))
        self._key: tuple[str, SigningKey] | None = None
        self._stamp: tuple[int, int] | None = None

    def _signing_key(self) -> tuple[str, SigningKey]:
        reg = self._keys.get()
        if self._key is None or self._stamp != self._keys._stamp:
            self._key = reg.signing_key(self.actor)  # raises LedgerKeyError naming the actor
            self._stamp = self._keys._stamp
        return self._key

    def sign(
        self,
        record_type: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        record_id: str = "",
        ts: float | None = None,
    ) -> dict[str, bytes]:
        """The headers to send with the record (``{HEADER: envelope}``)."""
        if not may_write(self.actor, record_type):
            raise LedgerKeyError(f"{self.actor} may not write {record_type} records (see RECORD_WRITERS)")
        key_id, sk = self._signing_key()
        signed = Signed(record_type, self.actor, key_id, self.clock() if ts is None else float(ts), record_id)
        msg = signed_message(record_type, self.actor, key_id, signed.ts, record_id, _as_bytes(key), value)
        return {HEADER: signed.header_value(sk.sign(msg).signature.hex())}


def envelope_of(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> bytes | None:
    """The ``metaheal-sig`` header's bytes (the last one, if a record carries several), or None."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    found = None
    for k, v in items:
        if k == HEADER:
            found = v
    return found


class RecordVerifier:
    """Checks envelopes against the key registry and :data:`RECORD_WRITERS`; thread-safe.

    ``max_age``: refuse records signed longer ago than this (live inputs: directives, probes);
    ``replay``: remember the last ``replay_capacity`` record ids per type and refuse a second one.
    """

    def __init__(
        self,
        keys: str | Path,
        operators: Sequence[OperatorSettings] = (),
        *,
        max_skew: float = 30.0,
        max_age: float | None = None,
        replay: bool = False,
        replay_capacity: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = _Registry(Path(keys), operators)
        self.max_skew = max_skew
        self.max_age = max_age
        self.replay = replay
        self.replay_capacity = replay_capacity
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Any, *, live: bool = False, replay: bool = False) -> RecordVerifier:
        """From ``Settings``: ``live`` bounds the age by ``signing.max_record_age_seconds``."""
        sig = settings.signing
        return cls(
            settings.keys,
            settings.operators,
            max_skew=sig.max_clock_skew_seconds,
            max_age=sig.max_record_age_seconds if live else None,
            replay=replay,
        )

    def verify(
        self,
        record_type: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None,
        *,
        record_id: str | None = None,
    ) -> Signed:
        """The envelope's claims once they check out; raises :class:`RecordRefused` naming the reason."""
        raw = envelope_of(headers)
        if raw is None:
            raise RecordRefused("unsigned", f"{record_type} record has no {HEADER} header")
        env, sig = self._parse(raw, record_type)
        if env.record_type != record_type:
            raise RecordRefused("wrong_type", f"the envelope signs a {env.record_type} record, read as {record_type}")
        if record_id is not None and env.record_id != record_id:
            raise RecordRefused("id_mismatch", f"envelope id {env.record_id!r} is not the record's id {record_id!r}")
        if not may_write(env.actor, record_type):
            raise RecordRefused("not_allowed", f"{env.actor} may not write {record_type} records")
        now = self.clock()
        if env.ts > now + self.max_skew:
            raise RecordRefused(
                "future_ts", f"signed at {env.ts:.3f}, {env.ts - now:.1f}s ahead of now (max skew {self.max_skew:g}s)"
            )
        if self.max_age is not None and env.ts < now - self.max_age:
            raise RecordRefused("stale_ts", f"signed {now - env.ts:.1f}s ago (max age {self.max_age:g}s)")
        reg = self._keys.get()
        rec = reg.get(env.key_id)
        if rec is None:
            rec = self._keys.get(force=True).get(env.key_id)  # a key issued since we last looked
        if rec is None:
            raise RecordRefused("unknown_key", f"key {env.key_id} is not in the key registry")
        if rec.actor != env.actor:
            raise RecordRefused("wrong_actor", f"key {env.key_id} belongs to {rec.actor}, not {env.actor}")
        if rec.revoked:
            raise RecordRefused("key_revoked", f"key {env.key_id} of {rec.actor} was revoked at {rec.revoked_at}")
        if not rec.valid_at(iso(env.ts)):
            raise RecordRefused("key_not_valid", f"key {env.key_id} of {rec.actor} was not valid at {iso(env.ts)}")
        msg = signed_message(record_type, env.actor, env.key_id, env.ts, env.record_id, _as_bytes(key), value)
        if not rec.verify(msg, sig):
            raise RecordRefused(
                "bad_signature", f"{record_type} signed by {env.actor} (key {env.key_id}) does not verify"
            )
        if self.replay and env.record_id:
            with self._lock:
                k = (record_type, env.record_id)
                if k in self._seen:
                    raise RecordRefused("replayed", f"{record_type} {env.record_id} was seen before")
                self._seen[k] = None
                while len(self._seen) > self.replay_capacity:
                    self._seen.popitem(last=False)
        return env

    def check(self, record_type: str, msg: Any, *, record_id: str | None = None) -> Signed:
        """:meth:`verify` a consumed message (its value, key and headers)."""
        return self.verify(record_type, msg.value(), msg.key(), msg.headers(), record_id=record_id)

    @staticmethod
    def _parse(raw: bytes | None, record_type: str) -> tuple[Signed, str]:
        if raw is None or len(raw) > MAX_ENVELOPE_BYTES:
            raise RecordRefused("bad_envelope", f"{HEADER} header is empty or over {MAX_ENVELOPE_BYTES} bytes")
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("v") != VERSION:
                raise ValueError(f"not a version {VERSION} envelope")
            ts = doc["ts"]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != ts or abs(ts) > 1e11:
                raise ValueError("ts is not a finite epoch time")
            fields = [doc["type"], doc["actor"], doc["key_id"], doc["id"], doc["sig"]]
            if not all(isinstance(f, str) for f in fields):
                raise ValueError("type, actor, key_id, id and sig must be strings")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise RecordRefused("bad_envelope", f"{HEADER} of a {record_type} record: {exc}") from None
        return Signed(doc["type"], doc["actor"], doc["key_id"], float(ts), doc["id"]), doc["sig"]


__all__ = [
    "HEADER",
    "RECORD_WRITERS",
    "RecordSigner",
    "RecordVerifier",
    "Signed",
    "envelope_of",
    "may_write",
    "signed_message",
]
