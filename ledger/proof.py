"""Inclusion and consistency proofs against signed checkpoints, checkable offline.

A proof bundle is plain JSON holding everything an auditor needs: the entry, its
signer's public key, the checkpoint note, the ledger's public key and the RFC 9162
audit path (hex). :func:`check_inclusion` needs no broker and no metaheal state:
it recomputes the entry hash, checks both signatures and the path. Auditors
should also compare the two public keys with the key registry they trust
(``registry=``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from metaheal.config import Settings
from metaheal.errors import DecodeError, NoteError, ProofError
from metaheal.events import LedgerEntry
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.ledger.chain import entry_hash, message
from metaheal.ledger.checkpoint import parse_note, verify_note
from metaheal.ledger.keys import KeyRegistry
from metaheal.ledger.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from metaheal.ledger.verify import RawRecord, read_raw


def chain_entries(records: Iterable[RawRecord]) -> list[LedgerEntry]:
    """The first entry of each sequence, contiguous from 0 (stops at the first gap)."""
    de = AvroDeserializer(LedgerEntry)
    by_seq: dict[int, LedgerEntry] = {}
    for r in records:
        if r.value is None:
            continue
        try:
            e = de(r.value)
        except DecodeError:
            continue
        by_seq.setdefault(e.sequence, e)
    out: list[LedgerEntry] = []
    while len(out) in by_seq:
        out.append(by_seq[len(out)])
    return out


def _checkpoints(entries: list[LedgerEntry]) -> list[tuple[LedgerEntry, dict[str, Any]]]:
    return [(e, json.loads(e.payload)) for e in entries if e.action == "checkpoint" and e.actor == "ledger"]


def _keys(registry: KeyRegistry, key_id: str) -> dict[str, str]:
    rec = registry.get(key_id)
    if rec is None:
        raise ProofError(f"key {key_id} is not in the registry")
    return {"key_id": rec.key_id, "actor": rec.actor, "public_key": rec.public_key}


def inclusion_bundle(entries: list[LedgerEntry], sequence: int, registry: KeyRegistry) -> dict[str, Any]:
    if not 0 <= sequence < len(entries):
        raise ProofError(f"sequence {sequence} is not in the ledger (it holds 0..{len(entries) - 1})")
    covering = [(c, p) for c, p in _checkpoints(entries) if p["size"] > sequence]
    if not covering:
        raise ProofError(f"no checkpoint covers sequence {sequence} yet; wait for the next checkpoint")
    cp, payload = covering[-1]
    leaves = [leaf_hash(bytes.fromhex(e.entry_hash)) for e in entries[: payload["size"]]]
    e = entries[sequence]
    return {
        "entry": e.model_dump(),
        "entry_key": _keys(registry, e.key_id),
        "leaf_index": sequence,
        "tree_size": payload["size"],
        "audit_path": [h.hex() for h in inclusion_proof(sequence, leaves)],
        "checkpoint": payload["note"],
        "checkpoint_sequence": cp.sequence,
        "ledger_key": _keys(registry, cp.key_id),
    }


def check_inclusion(bundle: dict[str, Any], registry: KeyRegistry | None = None) -> list[str]:
    """Problems with an inclusion bundle; an empty list means the proof holds."""
    problems: list[str] = []
    try:
        e = LedgerEntry.model_validate(bundle["entry"])
        ek, lk = bundle["entry_key"], bundle["ledger_key"]
        note, index, size = bundle["checkpoint"], int(bundle["leaf_index"]), int(bundle["tree_size"])
        path = [bytes.fromhex(h) for h in bundle["audit_path"]]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"malformed proof bundle: {exc}"]
    if registry is not None:
        for k in (ek, lk):
            rec = registry.get(k["key_id"])
            if rec is None or rec.public_key != k["public_key"] or rec.revoked:
                problems.append(f"key {k['key_id']} is unknown, different or revoked in the registry")
    if entry_hash(e) != e.entry_hash:
        problems.append("entry content does not match its entry_hash")
    if ek.get("actor") != e.actor or ek.get("key_id") != e.key_id:
        problems.append("entry key does not belong to the entry's actor")
    try:
        VerifyKey(bytes.fromhex(ek["public_key"])).verify(message(e), bytes.fromhex(e.signature))
    except (BadSignatureError, ValueError):
        problems.append("entry signature does not verify")
    try:
        cp = parse_note(note)
    except NoteError as exc:
        return [*problems, str(exc)]
    if not verify_note(note, VerifyKey(bytes.fromhex(lk["public_key"]))):
        problems.append("checkpoint signature does not verify")
    if cp.size != size or e.sequence != index:
        problems.append("bundle size/index disagree with the checkpoint or entry")
    if not verify_inclusion(index, cp.size, leaf_hash(bytes.fromhex(e.entry_hash)), path, cp.root):
        problems.append(f"audit path does not lead to the checkpoint root (size {cp.size})")
    return problems


def consistency_bundle(entries: list[LedgerEntry], old_size: int, new_size: int) -> dict[str, Any]:
    """Proof that the checkpoint of ``new_size`` extends the one of ``old_size``."""
    cps = {p["size"]: p for _, p in _checkpoints(entries)}
    for s in (old_size, new_size):
        if s not in cps:
            raise ProofError(f"no checkpoint of size {s} (sizes: {sorted(cps)})")
    leaves = [leaf_hash(bytes.fromhex(e.entry_hash)) for e in entries[:new_size]]
    return {
        "old_checkpoint": cps[old_size]["note"],
        "new_checkpoint": cps[new_size]["note"],
        "proof": [h.hex() for h in consistency_proof(old_size, leaves)],
    }


def check_consistency(bundle: dict[str, Any], ledger_key: VerifyKey) -> list[str]:
    problems = []
    old, new = parse_note(bundle["old_checkpoint"]), parse_note(bundle["new_checkpoint"])
    for name, note in (("old", bundle["old_checkpoint"]), ("new", bundle["new_checkpoint"])):
        if not verify_note(note, ledger_key):
            problems.append(f"{name} checkpoint signature does not verify")
    proof = [bytes.fromhex(h) for h in bundle["proof"]]
    if not verify_consistency(old.size, new.size, old.root, new.root, proof):
        problems.append(f"checkpoint {new.size} is not an extension of checkpoint {old.size}")
    return problems


def prove(settings: Settings, sequence: int) -> dict[str, Any]:
    """Read the ledger and build the inclusion bundle of ``sequence`` against the latest checkpoint."""
    registry = KeyRegistry.load(settings.keys).with_operators(settings.operators)
    return inclusion_bundle(chain_entries(read_raw(settings)), sequence, registry)
