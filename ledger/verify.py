"""The auditor's check of a whole ledger, record by record, as an attacker could have left it.

Input is the raw records of the ledger partition in offset order (key, value,
headers), so nothing is hidden by decoding or by the index. Every problem is a
:class:`Finding` naming the sequence (or offset, if there is no sequence) and what
is wrong. Checks: record decodes; record key ``<cycle_id>/<sequence>`` and
headers match the entry; entry hash; Ed25519 signature by a key of the registry
that belongs to the actor, was valid at the entry's timestamp and is not revoked;
the actor may take the action; payload is canonical JSON; sequences are gap-free,
in order, without duplicates or forks (two entries with one sequence); the chain
of ``prev_hash``; re-use of a signed entry under another sequence; tombstones
(null values); checkpoint entries (note signature, Merkle root over the entries
before them); and, given a witnessed checkpoint, that the ledger still holds and
agrees with everything it committed to (detects a truncated tail).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import fastavro
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from metaheal.config import Settings
from metaheal.errors import DecodeError, NoteError
from metaheal.events import LedgerEntry
from metaheal.kafka import KafkaUnavailable, PartitionReader
from metaheal.kafka.serializers import (
    HEADER_LEN,
    AvroDeserializer,
    check_header,
)
from metaheal.ledger.authz import allowed
from metaheal.ledger.canonical import canonical_json
from metaheal.ledger.chain import GENESIS, message
from metaheal.ledger.checkpoint import parse_note, verify_note
from metaheal.ledger.index import TAIL_KEY
from metaheal.ledger.keys import KeyRegistry
from metaheal.ledger.merkle import Frontier, leaf_hash

_HEADERS = ("cycle_id", "actor", "action", "signature")


@dataclass(frozen=True)
class RawRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None] = field(default_factory=dict)  # a header may have a null value


@dataclass(frozen=True)
class Finding:
    sequence: int | None
    offset: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"sequence {self.sequence}" if self.sequence is not None else f"offset {self.offset}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class Report:
    findings: list[Finding]
    entries: int
    last_sequence: int | None
    checkpoints: int

    @property
    def clean(self) -> bool:
        return not self.findings


@dataclass(frozen=True)
class Witness:
    """A checkpoint known from outside the ledger (index topic, a saved note)."""

    size: int
    root: bytes
    source: str


class Verifier:
    """Feed records in offset order, then :meth:`finish` for the report."""

    def __init__(
        self, registry: KeyRegistry, *, since: int = 0, origin: str | None = None, strict: bool = False
    ) -> None:
        self.registry = registry
        self.strict = strict  # also require payloads in canonical form (costs about as much as the signature check)
        self.since = since
        self.origin = origin
        de = AvroDeserializer(LedgerEntry)
        self._schema, self._fp = de.parsed_schema, de.fingerprint
        self._vk: dict[str, VerifyKey] = {}
        self.findings: list[Finding] = []
        self.hashes: dict[int, str] = {}  # sequence -> entry_hash of the first entry seen with it
        self.leaves: list[bytes] = []  # leaf hashes of the accepted chain, index = sequence
        self._frontier = Frontier()
        self._signatures: dict[str, int] = {}
        self._allowed: dict[tuple[str, str], bool] = {}
        self.expected = 0
        self.entries = 0
        self.checkpoints = 0

    def _add(self, seq: int | None, offset: int | None, kind: str, detail: str) -> None:
        if seq is None or seq >= self.since:
            self.findings.append(Finding(seq, offset, kind, detail))

    def _decode(self, value: bytes) -> dict[str, Any]:
        check_header(value, self._fp, "LedgerEntry")
        try:
            d = fastavro.schemaless_reader(io.BytesIO(value[HEADER_LEN:]), self._schema, None)
        except Exception as exc:
            raise DecodeError(f"corrupt LedgerEntry datum: {exc!r}") from None
        return cast(dict[str, Any], d)  # a record schema decodes to a dict

    def feed(self, r: RawRecord) -> None:
        key = (r.key or b"").decode("utf-8", "replace")
        if r.value is None:
            self._add(
                _key_sequence(key), r.offset, "tombstone", f"null value for key {key!r} (an attempt to erase an entry)"
            )
            return
        try:
            d = self._decode(r.value)
        except DecodeError as exc:
            self._add(_key_sequence(key), r.offset, "undecodable", str(exc))
            return
        self.entries += 1
        seq = d["sequence"]
        if key != f"{d['cycle_id']}/{seq}":
            self._add(seq, r.offset, "key mismatch", f"record key {key!r} is not {d['cycle_id']}/{seq}")
        headers = r.headers
        for h in _HEADERS:
            got = headers.get(h)
            if got is None or got != d[h].encode():
                self._add(seq, r.offset, "header mismatch", f"header {h}={got!r} differs from the entry's {d[h]!r}")
        m = message(d)
        h = hashlib.sha256(m).hexdigest()
        content_ok = h == d["entry_hash"]
        if not content_ok:
            self._add(seq, r.offset, "hash mismatch", "entry content does not match its entry_hash (modified)")
        # sequence bookkeeping: duplicates, forks, gaps, order
        if seq in self.hashes:
            if self.hashes[seq] == d["entry_hash"] and content_ok:
                self._add(seq, r.offset, "duplicate", "the same entry appears twice")
            else:
                self._add(seq, r.offset, "fork", "two different entries carry this sequence")
            return
        self.hashes[seq] = d["entry_hash"]
        if seq > self.expected:
            self._add(seq, r.offset, "gap", f"sequences {self.expected}..{seq - 1} are missing")
        elif seq < self.expected:
            self._add(seq, r.offset, "out of order", f"appears after sequence {self.expected - 1}")
        prev = GENESIS if seq == 0 else self.hashes.get(seq - 1)
        if prev is not None and d["prev_hash"] != prev:
            self._add(seq, r.offset, "chain broken", f"prev_hash does not match the entry_hash of sequence {seq - 1}")
        self.expected = max(self.expected, seq + 1)
        first = self._signatures.setdefault(d["signature"][:32], seq)  # 128 bits: enough to spot re-use
        if first != seq:
            self._add(seq, r.offset, "replayed entry", f"signature already used by sequence {first}")
        self._check_signature(d, m, seq, r.offset)
        pair = (d["actor"], d["action"])
        ok = self._allowed.get(pair)
        if ok is None:
            ok = self._allowed[pair] = allowed(*pair)
        if not ok:
            self._add(seq, r.offset, "unauthorised", f"actor {d['actor']!r} may not take action {d['action']!r}")
        try:
            payload = json.loads(d["payload"])
            if not isinstance(payload, dict):
                self._add(seq, r.offset, "payload", "payload is not a JSON object")
            elif self.strict and canonical_json(payload) != d["payload"]:
                self._add(seq, r.offset, "payload", "payload is not in canonical JSON form")
        except (ValueError, TypeError):
            self._add(seq, r.offset, "payload", "payload is not valid JSON")
            payload = None
        # A checkpoint commits to the entries before it: check it while the frontier still
        # ends just before its own leaf (the O(1) path of ``root``, not a rebuild from every leaf).
        if d["action"] == "checkpoint" and d["actor"] == "ledger" and isinstance(payload, dict):
            self._check_checkpoint(d, payload, seq, r.offset)
        if seq == len(self.leaves):
            leaf = _leaf(d["entry_hash"])
            self.leaves.append(leaf)
            if leaf and self._frontier.size == seq:
                self._frontier.append(leaf)

    def _check_signature(self, d: dict[str, Any], m: bytes, seq: int, offset: int) -> None:
        rec = self.registry.get(d["key_id"])
        if rec is None:
            self._add(seq, offset, "unknown key", f"key {d['key_id']!r} is not in the key registry")
            return
        if rec.actor != d["actor"]:
            self._add(seq, offset, "wrong key", f"key {d['key_id']} belongs to {rec.actor!r}, not {d['actor']!r}")
        if rec.revoked:
            self._add(seq, offset, "revoked key", f"signed with revoked key {d['key_id']} ({rec.actor})")
        elif rec.valid_from and not rec.valid_at(d["timestamp"]):
            self._add(seq, offset, "key not valid", f"key {d['key_id']} was not valid at {d['timestamp']}")
        vk = self._vk.get(rec.key_id)
        if vk is None:
            vk = self._vk[rec.key_id] = rec.verify_key()
        try:
            vk.verify(m, bytes.fromhex(d["signature"]))
        except (BadSignatureError, ValueError):
            self._add(seq, offset, "bad signature", f"Ed25519 signature does not verify with key {d['key_id']}")

    def _check_checkpoint(self, d: dict[str, Any], p: dict[str, Any], seq: int, offset: int) -> None:
        self.checkpoints += 1
        size, root_b64, note = p.get("size"), p.get("root"), p.get("note")
        if not isinstance(size, int) or not isinstance(root_b64, str) or not isinstance(note, str):
            self._add(seq, offset, "checkpoint", "payload lacks size/root/note")
            return
        try:
            cp = parse_note(note)
        except NoteError as exc:
            self._add(seq, offset, "checkpoint", str(exc))
            return
        if (cp.size, base64.b64encode(cp.root).decode(), cp.origin) != (size, root_b64, p.get("origin")):
            self._add(seq, offset, "checkpoint", "note does not match the entry's size/root/origin")
        rec = self.registry.get(d["key_id"])
        if rec is not None and not verify_note(note, rec.verify_key()):
            self._add(seq, offset, "checkpoint", "note signature does not verify")
        if size > seq:
            self._add(seq, offset, "checkpoint", f"commits to {size} entries but only {seq} precede it")
            return
        root = self.root(size)
        if root is None:
            self._add(seq, offset, "checkpoint", f"cannot recompute the root: entries before {size} are missing")
        elif root != cp.root:
            self._add(seq, offset, "checkpoint", f"Merkle root of the first {size} entries does not match")

    def root(self, size: int) -> bytes | None:
        if size == self._frontier.size:
            return self._frontier.root()  # the usual case: a checkpoint commits to everything before it
        if size > len(self.leaves) or any(not x for x in self.leaves[:size]):
            return None
        f = Frontier()
        for h in self.leaves[:size]:
            f.append(h)
        return f.root()

    def finish(self, witnesses: Iterable[Witness] = ()) -> Report:
        for w in witnesses:
            have = len(self.leaves)
            if w.size > have:
                self._add(
                    have,
                    None,
                    "truncated",
                    f"{w.source} commits to {w.size} entries but the ledger holds {have} in sequence",
                )
            else:
                root = self.root(w.size)
                if root is not None and root != w.root:
                    self._add(
                        w.size - 1 if w.size else None,
                        None,
                        "history rewritten",
                        f"the first {w.size} entries do not match {w.source}",
                    )
        last = self.expected - 1 if self.expected else None
        self.findings.sort(key=lambda f: (f.sequence if f.sequence is not None else -1, f.offset or 0))
        return Report(self.findings, self.entries, last, self.checkpoints)


def _key_sequence(key: str) -> int | None:
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _leaf(entry_hash: str) -> bytes:
    """Merkle leaf of an entry hash; empty if the hash is not 64 lowercase hex digits."""
    if not _HEX64.fullmatch(entry_hash):
        return b""
    return leaf_hash(bytes.fromhex(entry_hash))


def witness_from_note(note: str, source: str) -> Witness:
    cp = parse_note(note)
    return Witness(cp.size, cp.root, source)


def verify_records(
    records: Iterable[RawRecord],
    registry: KeyRegistry,
    *,
    since: int = 0,
    witnesses: Iterable[Witness] = (),
    cycle: str | None = None,
    strict: bool = False,
) -> Report:
    """Verify every record; with ``cycle`` only that cycle's findings are reported.

    The chain is always checked whole.
    """
    v = Verifier(registry, since=since, strict=strict)
    cycle_seqs: set[int] = set()
    for r in records:
        if cycle is not None and r.key is not None and r.key.decode("utf-8", "replace").startswith(f"{cycle}/"):
            s = _key_sequence(r.key.decode("utf-8", "replace"))
            if s is not None:
                cycle_seqs.add(s)
        v.feed(r)
    report = v.finish(witnesses)
    if cycle is not None:
        report.findings = [f for f in report.findings if f.sequence in cycle_seqs]
    return report


def read_raw(settings: Settings, topic: str | None = None, timeout: float = 120.0) -> Iterator[RawRecord]:
    """Every record of the ledger partition, tombstones included, in offset order."""
    topic = topic or settings.topics.name("ledger")
    c = PartitionReader(settings.kafka)
    try:
        for m in c.read(topic, timeout=timeout):
            headers = {k: v for k, v in (m.headers() or [])}
            yield RawRecord(m.offset(), m.key(), m.value(), headers)
    finally:
        c.close()


def stored_witness(settings: Settings) -> Witness | None:
    """The newest checkpoint the sequencer recorded in the index topic (``__tail__``)."""
    tail = None
    c = PartitionReader(settings.kafka)
    try:
        for m in c.read(settings.topics.name("ledger-index")):
            if m.key() == TAIL_KEY.encode() and m.value() is not None:
                tail = m.value()
    except KafkaUnavailable:
        return None
    finally:
        c.close()
    if tail is None:
        return None
    cp = json.loads(tail).get("checkpoint")
    if not cp:
        return None
    return Witness(int(cp["size"]), base64.b64decode(cp["root"]), f"checkpoint at sequence {cp['sequence']} (index)")


def verify_ledger(
    settings: Settings,
    *,
    since: int = 0,
    cycle: str | None = None,
    checkpoint_notes: Iterable[tuple[str, str]] = (),
    use_index_witness: bool = True,
    strict: bool = False,
) -> Report:
    """Read the ledger topic and verify it; ``checkpoint_notes`` are ``(source, note text)`` witnesses."""
    registry = KeyRegistry.load(settings.keys).with_operators(settings.operators)
    witnesses = [witness_from_note(note, src) for src, note in checkpoint_notes]
    if use_index_witness:
        w = stored_witness(settings)
        if w is not None:
            witnesses.append(w)
    return verify_records(read_raw(settings), registry, since=since, witnesses=witnesses, cycle=cycle, strict=strict)


__all__ = [
    "Finding",
    "RawRecord",
    "Report",
    "Verifier",
    "Witness",
    "read_raw",
    "stored_witness",
    "verify_ledger",
    "verify_records",
]
