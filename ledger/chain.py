"""One entry's bytes: what is hashed, what is signed, how it travels.

For an entry ``e`` let ``body`` be the JSON object with exactly these members::

    sequence (int), timestamp, cycle_id, actor, action, resource, subsystem,
    payload (the canonical JSON *text* of the payload object, as a string),
    result, key_id, prev_hash (64 lowercase hex; 64 zeros for sequence 0)

Then ``M = b"metaheal-ledger-entry-v1\\x00" + canonical_bytes(body)`` (see
:mod:`metaheal.ledger.canonical`), ``entry_hash = hex(SHA-256(M))`` and
``signature = hex(Ed25519-sign(actor's key, M))`` (RFC 8032, 64 bytes). A third
party needs only SHA-256, Ed25519 and a JCS encoder (or this description) plus the
public keys in ``registry.json``.

On the topic an entry is one record: key ``<cycle_id>/<sequence>`` (unique, so
compaction never removes a distinct entry), value the Avro single-object encoding
of :class:`metaheal.events.LedgerEntry`, headers ``cycle_id``, ``actor``,
``action``, ``signature``.

>>> from nacl.signing import SigningKey
>>> sk = SigningKey(bytes(32))
>>> e = seal(sequence=0, timestamp="2026-01-01T00:00:00.000000Z", cycle_id="c1", actor="meta_loop",
...          action="cycle_focus_decided", resource="api", subsystem="meta", payload={"focus": "latency_drift"},
...          result="ok", key_id="k", prev_hash=GENESIS, signing_key=sk)
>>> e.payload, entry_hash(e) == e.entry_hash, verify_signature(e, sk.verify_key)
('{"focus":"latency_drift"}', True, True)
>>> record_key(e)
'c1/0'
"""

from __future__ import annotations

import hashlib
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metaheal.events import LedgerEntry
from metaheal.ledger.canonical import canonical_bytes, canonical_json, quote

DOMAIN = b"metaheal-ledger-entry-v1\x00"
GENESIS = "0" * 64
BODY_FIELDS = (
    "sequence",
    "timestamp",
    "cycle_id",
    "actor",
    "action",
    "resource",
    "subsystem",
    "payload",
    "result",
    "key_id",
    "prev_hash",
)


_SORTED = sorted(BODY_FIELDS)  # ASCII keys: UTF-16 order is plain order
_TEMPLATE = "{" + ",".join(f'"{f}":' + ("%d" if f == "sequence" else "%s") for f in _SORTED) + "}"


def message(e: LedgerEntry | dict[str, Any]) -> bytes:
    """``M``: the domain-separated canonical body (hashed and signed).

    Fast path for the usual case (every field a str, sequence an int), equal by
    construction to ``DOMAIN + canonical_bytes(body)``, which is the fallback.
    """
    d = e if isinstance(e, dict) else e.__dict__
    if type(d["sequence"]) is int:
        try:
            text = _TEMPLATE % (
                quote(d["action"]),
                quote(d["actor"]),
                quote(d["cycle_id"]),
                quote(d["key_id"]),
                quote(d["payload"]),
                quote(d["prev_hash"]),
                quote(d["resource"]),
                quote(d["result"]),
                d["sequence"],
                quote(d["subsystem"]),
                quote(d["timestamp"]),
            )
            return DOMAIN + text.encode("utf-8")
        except (TypeError, UnicodeEncodeError):
            pass  # a non-string field or a lone surrogate: the general encoder names the problem
    return DOMAIN + canonical_bytes({f: d[f] for f in BODY_FIELDS})


def entry_hash(e: LedgerEntry | dict[str, Any]) -> str:
    return hashlib.sha256(message(e)).hexdigest()


def verify_signature(e: LedgerEntry, key: VerifyKey) -> bool:
    try:
        key.verify(message(e), bytes.fromhex(e.signature))
        return True
    except (BadSignatureError, ValueError):
        return False


def seal(
    *,
    sequence: int,
    timestamp: str,
    cycle_id: str,
    actor: str,
    action: str,
    resource: str,
    subsystem: str,
    payload: dict[str, Any] | str,
    result: str,
    key_id: str,
    prev_hash: str,
    signing_key: SigningKey,
) -> LedgerEntry:
    """Build the complete entry: canonical payload, hash, signature."""
    if isinstance(payload, str):
        payload_text = payload
    else:
        if not isinstance(payload, dict):
            raise TypeError(f"payload: must be a JSON object (dict), got {type(payload).__name__}")
        payload_text = canonical_json(payload)
    body: dict[str, Any] = {
        "sequence": sequence,
        "timestamp": timestamp,
        "cycle_id": cycle_id,
        "actor": actor,
        "action": action,
        "resource": resource,
        "subsystem": subsystem,
        "payload": payload_text,
        "result": result,
        "key_id": key_id,
        "prev_hash": prev_hash,
    }
    m = message(body)
    return LedgerEntry.model_construct(
        **body,
        entry_hash=hashlib.sha256(m).hexdigest(),
        signature=signing_key.sign(m).signature.hex(),
    )


def record_key(e: LedgerEntry) -> str:
    return f"{e.cycle_id}/{e.sequence}"


def record_headers(e: LedgerEntry) -> dict[str, str]:
    return {"cycle_id": e.cycle_id, "actor": e.actor, "action": e.action, "signature": e.signature}
