"""The tamper suite: records written straight to the ledger topic, then ``verify``.

Each attack must be reported by sequence and kind; a clean ledger must verify
clean (so no finding is a false alarm by construction).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from nacl.signing import SigningKey

from metaheal.config import Settings
from metaheal.events import LedgerEntry
from metaheal.ledger.chain import message, seal
from metaheal.ledger.keys import KeyRegistry, key_id_of, revoke_key
from metaheal.ledger.verify import verify_ledger
from tests.ledger.conftest import Rec, build_chain, rec, write_raw

pytestmark = pytest.mark.broker


def findings(settings: Settings, notes: list[tuple[str, str]] | None = None) -> set[tuple[int | None, str]]:
    report = verify_ledger(settings, checkpoint_notes=notes or [], use_index_witness=False)
    return {(f.sequence, f.kind) for f in report.findings}


def resign(e: LedgerEntry, key: SigningKey, **changes: object) -> LedgerEntry:
    """An attacker's re-hashed, re-signed copy of ``e`` (with a key they hold)."""
    d = {**e.__dict__, **changes}
    m = message(d)
    d["entry_hash"] = hashlib.sha256(m).hexdigest()
    d["signature"] = key.sign(m).signature.hex()
    return LedgerEntry.model_construct(**d)


def test_clean_ledger_of_10000_entries_verifies_clean(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10_000, checkpoint_every=1000)
    write_raw(chain_settings, [rec(e) for e in chain])
    report = verify_ledger(chain_settings, use_index_witness=False)
    assert report.clean, [str(f) for f in report.findings[:5]]
    assert report.entries == len(chain) == 10_010 and report.checkpoints == 10
    assert report.last_sequence == 10_009


def test_modified_payload(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    chain[4] = chain[4].model_copy(update={"payload": '{"i":4,"score":0.99}'})
    write_raw(chain_settings, [rec(e) for e in chain])
    assert findings(chain_settings) == {(4, "hash mismatch"), (4, "bad signature")}


def test_modified_actor(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    chain[1] = chain[1].model_copy(update={"actor": "executor", "action": "execution_outcome"})
    write_raw(chain_settings, [rec(e) for e in chain])
    got = findings(chain_settings)
    assert {(1, "hash mismatch"), (1, "wrong key"), (1, "bad signature")} <= got
    assert {s for s, _ in got} == {1}


def test_forged_signature_with_recomputed_hash(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    chain[3] = resign(chain[3], SigningKey.generate(), payload='{"i":3,"score":0}')  # key_id kept
    write_raw(chain_settings, [rec(e) for e in chain])
    assert findings(chain_settings) == {(3, "bad signature"), (4, "chain broken")}


def test_signature_by_unknown_key(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    mallory = SigningKey.generate()
    chain[9] = resign(chain[9], mallory, key_id=key_id_of(mallory.verify_key.encode()))
    write_raw(chain_settings, [rec(e) for e in chain])
    assert findings(chain_settings) == {(9, "unknown key")}


def test_signature_by_revoked_key(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    write_raw(chain_settings, [rec(e) for e in chain])
    assert findings(chain_settings) == set()
    revoked = KeyRegistry.load(chain_settings.keys).current("ml_advisors").key_id
    revoke_key(chain_settings.keys, revoked)
    assert findings(chain_settings) == {(1, "revoked key"), (6, "revoked key")}


def test_deleted_entry_leaves_a_gap(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    write_raw(chain_settings, [rec(e) for e in chain if e.sequence != 5])
    assert findings(chain_settings) == {(6, "gap")}


def test_reordered_entries(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    chain[3], chain[4] = chain[4], chain[3]
    write_raw(chain_settings, [rec(e) for e in chain])
    assert findings(chain_settings) == {(4, "gap"), (3, "out of order")}


def test_duplicated_entry_with_new_sequence(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    copy = chain[2].model_copy(update={"sequence": 10, "cycle_id": chain[2].cycle_id, "prev_hash": chain[9].entry_hash})
    copy = copy.model_copy(update={"entry_hash": hashlib.sha256(message(copy)).hexdigest()})
    write_raw(chain_settings, [rec(e) for e in chain] + [rec(copy)])
    assert findings(chain_settings) == {(10, "replayed entry"), (10, "bad signature")}


def test_exact_duplicate_is_reported(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 5)
    write_raw(chain_settings, [rec(e) for e in chain] + [rec(chain[2])])
    assert findings(chain_settings) == {(2, "duplicate")}


def test_tombstone_for_existing_key(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    write_raw(chain_settings, [rec(e) for e in chain] + [Rec(f"{chain[7].cycle_id}/7", None, {})])
    assert findings(chain_settings) == {(7, "tombstone")}


def test_truncated_tail_after_checkpoint(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 30, checkpoint_every=10)
    last_cp = [e for e in chain if e.action == "checkpoint"][-1]
    note = json.loads(last_cp.payload)["note"]
    write_raw(chain_settings, [rec(e) for e in chain[:15]])  # everything after sequence 14 is gone
    report = verify_ledger(chain_settings, checkpoint_notes=[("saved checkpoint", note)], use_index_witness=False)
    assert [(f.sequence, f.kind) for f in report.findings] == [(15, "truncated")]
    size = json.loads(last_cp.payload)["size"]
    assert f"commits to {size} entries but the ledger holds 15" in str(report.findings[0])


def test_forked_history(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    reg = KeyRegistry.load(chain_settings.keys)
    kid, sk = reg.signing_key("executor")
    other = seal(
        sequence=8,
        timestamp=chain[8].timestamp,
        cycle_id=chain[8].cycle_id,
        actor="executor",
        action="execution_started",
        resource="svc-x",
        subsystem="api",
        payload={"forked": True},
        result="ok",
        key_id=kid,
        prev_hash=chain[7].entry_hash,
        signing_key=sk,
    )
    write_raw(chain_settings, [rec(e) for e in chain] + [rec(other)])
    assert findings(chain_settings) == {(8, "fork")}


def test_action_by_actor_not_allowed(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 10)
    reg = KeyRegistry.load(chain_settings.keys)
    kid, sk = reg.signing_key("ml_advisors")
    bad = seal(
        sequence=10,
        timestamp=chain[9].timestamp,
        cycle_id="cycle-x",
        actor="ml_advisors",
        action="execution_outcome",
        resource="api",
        subsystem="api",
        payload={"result": "success"},
        result="success",
        key_id=kid,
        prev_hash=chain[9].entry_hash,
        signing_key=sk,
    )
    write_raw(chain_settings, [rec(e) for e in chain] + [rec(bad)])
    assert findings(chain_settings) == {(10, "unauthorised")}


def test_tampered_checkpoint_root(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 20, checkpoint_every=10)
    cp = chain[10]
    assert cp.action == "checkpoint"
    payload = json.loads(cp.payload)
    payload["size"] = 9
    reg = KeyRegistry.load(chain_settings.keys)
    _kid, sk = reg.signing_key("ledger")  # even the ledger key cannot make a wrong root pass
    chain[10] = resign(cp, sk, payload=json.dumps(payload, sort_keys=True, separators=(",", ":")))
    write_raw(chain_settings, [rec(e) for e in chain])
    got = findings(chain_settings)
    assert (10, "checkpoint") in got and (11, "chain broken") in got
