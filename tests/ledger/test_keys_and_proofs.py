"""Keys (registry, rotation, revocation) and offline proofs, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaheal.config import OperatorSettings, Settings
from metaheal.ledger.authz import ACTIONS, SYSTEM_ACTORS, allowed
from metaheal.ledger.keys import (
    KeyRegistry,
    LedgerKeyError,
    init_operator_key,
    init_system_keys,
    revoke_key,
    rotate_key,
)
from metaheal.ledger.proof import (
    ProofError,
    check_consistency,
    check_inclusion,
    consistency_bundle,
    inclusion_bundle,
)
from metaheal.ledger.verify import RawRecord, verify_records
from tests.ledger.conftest import build_chain, rec


def test_system_keys_are_private_idempotent_and_registered(tmp_path: Path) -> None:
    ids = init_system_keys(tmp_path)
    assert set(ids) == set(SYSTEM_ACTORS) and init_system_keys(tmp_path) == ids
    reg = KeyRegistry.load(tmp_path)
    for actor, kid in ids.items():
        assert (tmp_path / f"{kid}.key").stat().st_mode & 0o777 == 0o600
        assert reg.current(actor).key_id == kid
    doc = json.loads((tmp_path / "registry.json").read_text())
    assert all("private" not in json.dumps(r) for r in doc["keys"])


def test_operator_key_and_unknown_actor(tmp_path: Path) -> None:
    path, pub = init_operator_key(tmp_path, "alice")
    assert path.stat().st_mode & 0o777 == 0o600 and len(pub) == 64
    assert init_operator_key(tmp_path, "alice") == (path, pub)
    with pytest.raises(LedgerKeyError, match="not a known actor"):
        init_operator_key(tmp_path, "bad name")


def test_rotation_keeps_old_key_valid_for_old_timestamps(tmp_path: Path) -> None:
    old = init_system_keys(tmp_path)["executor"]
    new = rotate_key(tmp_path, "executor")
    reg = KeyRegistry.load(tmp_path)
    assert reg.current("executor").key_id == new.key_id != old
    o = reg.get(old)
    assert o.valid_until == new.valid_from and o.valid_at("2000-01-01T00:00:00.000000Z") is False
    assert o.valid_at(o.valid_from) and not o.valid_at(new.valid_from)


def test_revoked_key_cannot_sign(tmp_path: Path) -> None:
    kid = init_system_keys(tmp_path)["executor"]
    revoke_key(tmp_path, kid)
    with pytest.raises(LedgerKeyError, match="no valid signing key for actor 'executor'"):
        KeyRegistry.load(tmp_path).signing_key("executor")


def test_operators_from_settings_join_the_registry(tmp_path: Path) -> None:
    _, pub = init_operator_key(tmp_path / "elsewhere", "bob")
    reg = KeyRegistry.load(tmp_path).with_operators([OperatorSettings(name="bob", public_key=pub)])
    assert [r.actor for r in reg.records.values()] == ["operator:bob"]


def test_authz_table() -> None:
    assert not allowed("ml_advisors", "execution_outcome")
    assert allowed("operator:carol", "approval_decided") and not allowed("executor", "approval_decided")
    assert all(allowed("ledger", a) for a in ACTIONS["ledger"])
    assert not allowed("operator:", "approval_decided") and not allowed("operator", "approval_decided")


@pytest.fixture
def offline(tmp_path: Path) -> Settings:
    return Settings(keys=tmp_path / "keys")


def test_inclusion_bundle_checks_offline_and_detects_tampering(offline: Settings) -> None:
    chain = build_chain(offline, 40, checkpoint_every=8)
    reg = KeyRegistry.load(offline.keys)
    for seq in (0, 7, 20, 30):
        bundle = inclusion_bundle(chain, seq, reg)
        assert check_inclusion(json.loads(json.dumps(bundle)), reg) == []
    bundle = inclusion_bundle(chain, 20, reg)
    assert bundle["tree_size"] == max(json.loads(e.payload)["size"] for e in chain if e.action == "checkpoint")
    bad = json.loads(json.dumps(bundle))
    bad["audit_path"][0] = "00" * 32
    assert check_inclusion(bad) == [f"audit path does not lead to the checkpoint root (size {bundle['tree_size']})"]
    bad = json.loads(json.dumps(bundle))
    bad["checkpoint"] = bad["checkpoint"].replace(f"\n{bundle['tree_size']}\n", f"\n{bundle['tree_size'] + 1}\n")
    assert "checkpoint signature does not verify" in check_inclusion(bad)
    with pytest.raises(ProofError, match="no checkpoint covers sequence 44"):
        inclusion_bundle(chain, 44, reg)


def test_consistency_between_checkpoints(offline: Settings) -> None:
    chain = build_chain(offline, 40, checkpoint_every=8)
    sizes = [json.loads(e.payload)["size"] for e in chain if e.action == "checkpoint"]
    ledger_key = KeyRegistry.load(offline.keys).current("ledger").verify_key()
    for old in sizes:
        for new in sizes:
            if old <= new:
                assert check_consistency(consistency_bundle(chain, old, new), ledger_key) == []
    # a checkpoint over a rewritten history is not an extension of the old one
    other = build_chain(offline, 40, checkpoint_every=8)  # same keys, different timestamps = different history
    mixed = consistency_bundle(chain, sizes[0], sizes[-1])
    mixed["old_checkpoint"] = consistency_bundle(other, sizes[0], sizes[-1])["old_checkpoint"]
    assert check_consistency(mixed, ledger_key) == [
        f"checkpoint {sizes[-1]} is not an extension of checkpoint {sizes[0]}"
    ]


def test_verifier_offline_on_records(offline: Settings) -> None:
    chain = build_chain(offline, 25, checkpoint_every=6)
    records = [
        RawRecord(i, r.key.encode(), r.value, {k: v.encode() for k, v in r.headers.items()})
        for i, r in enumerate(rec(e) for e in chain)
    ]
    reg = KeyRegistry.load(offline.keys)
    assert verify_records(records, reg).clean
    swapped = [
        *records[:3],
        RawRecord(3, records[3].key, records[3].value, {**records[3].headers, "actor": b"x"}),
        *records[4:],
    ]
    assert [str(f) for f in verify_records(swapped, reg).findings] == [
        f"sequence 3: header mismatch: header actor=b'x' differs from the entry's '{chain[3].actor}'"
    ]


def test_strict_mode_flags_non_canonical_payload(offline: Settings) -> None:
    from metaheal.ledger.sequencer import Sequencer

    build_chain(offline, 1)
    reg = KeyRegistry.load(offline.keys)
    seq = Sequencer()
    fields = dict(
        actor="executor",
        action="step_executed",
        resource="",
        subsystem="",
        cycle_id="c",
        result="ok",
        payload='{"b": 1, "a": 2.0}',
    )  # signed as given, but not canonical
    e = seq.add(fields, reg.signing_key("executor"))[0]
    r = rec(e)
    records = [RawRecord(0, r.key.encode(), r.value, {k: v.encode() for k, v in r.headers.items()})]
    assert verify_records(records, reg).clean
    assert [f.kind for f in verify_records(records, reg, strict=True).findings] == ["payload"]


def _checkpoint_for_older_size(offline: Settings, *, wrong_root: bool) -> list[RawRecord]:
    """12 entries, then a checkpoint that commits to only the first 5 (the verifier's slow path)."""
    import base64

    from metaheal.ledger.chain import seal
    from metaheal.ledger.checkpoint import sign_note
    from metaheal.ledger.merkle import leaf_hash, root

    chain = build_chain(offline, 12)
    reg = KeyRegistry.load(offline.keys)
    key_id, sk = reg.signing_key("ledger")
    leaves = [leaf_hash(bytes.fromhex(e.entry_hash)) for e in chain]
    r = root(leaves[:4] if wrong_root else leaves[:5])
    origin = offline.ledger.origin
    payload = {"origin": origin, "size": 5, "root": base64.b64encode(r).decode(), "note": sign_note(origin, 5, r, sk)}
    cp = seal(
        sequence=len(chain),
        timestamp=chain[-1].timestamp,
        cycle_id="checkpoints",
        actor="ledger",
        action="checkpoint",
        resource="",
        subsystem="ledger",
        payload=payload,
        result="ok",
        key_id=key_id,
        prev_hash=chain[-1].entry_hash,
        signing_key=sk,
    )
    return [
        RawRecord(i, x.key.encode(), x.value, {k: v.encode() for k, v in x.headers.items()})
        for i, x in enumerate(rec(e) for e in [*chain, cp])
    ]


def test_checkpoint_of_an_older_size_is_checked_against_the_leaves(offline: Settings) -> None:
    good = _checkpoint_for_older_size(offline, wrong_root=False)  # the sequencer commits to everything: hand-made
    reg = KeyRegistry.load(offline.keys)
    assert verify_records(good, reg).clean
    bad = verify_records(_checkpoint_for_older_size(offline, wrong_root=True), reg)
    assert [str(f) for f in bad.findings] == [
        "sequence 12: checkpoint: Merkle root of the first 5 entries does not match"
    ]
