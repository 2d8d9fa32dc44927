"""RFC 9162 Merkle trees: against a literal recursive MTH and every (index, size) pair."""

from __future__ import annotations

import hashlib

import pytest

from metaheal.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def mth(data: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, written as literally as possible (independent of the module)."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


DATA = [f"leaf-{i}".encode() for i in range(33)]
LEAVES = [leaf_hash(d) for d in DATA]


def test_known_vectors() -> None:
    # Empty tree and the RFC 6962 prefixes, written out.
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert (
        root([leaf_hash(b"a"), leaf_hash(b"b")])
        == hashlib.sha256(b"\x01" + hashlib.sha256(b"\x00a").digest() + hashlib.sha256(b"\x00b").digest()).digest()
    )


@pytest.mark.parametrize("n", range(0, 34))
def test_root_and_frontier_match_literal_mth(n: int) -> None:
    f = Frontier()
    for h in LEAVES[:n]:
        f.append(h)
    assert root(LEAVES[:n]) == mth(DATA[:n]) == f.root()


def test_every_inclusion_proof_verifies_and_wrong_ones_do_not() -> None:
    for n in range(1, 34):
        r = mth(DATA[:n])
        for i in range(n):
            proof = inclusion_proof(i, LEAVES[:n])
            assert verify_inclusion(i, n, LEAVES[i], proof, r)
            assert not verify_inclusion(i, n, leaf_hash(b"other"), proof, r)
            if proof:
                bad = [bytes(32), *proof[1:]]
                assert not verify_inclusion(i, n, LEAVES[i], bad, r)
            if n > 1:
                assert not verify_inclusion((i + 1) % n, n, LEAVES[i], proof, r)


def test_every_consistency_proof_verifies_and_forks_do_not() -> None:
    forked = [*LEAVES[:5], leaf_hash(b"evil"), *LEAVES[6:]]
    for n in range(1, 34):
        for m in range(1, n + 1):
            proof = consistency_proof(m, LEAVES[:n])
            assert verify_consistency(m, n, mth(DATA[:m]), mth(DATA[:n]), proof)
            if m > 5 and m < n:
                # an old checkpoint of a different history cannot be proven consistent
                assert not verify_consistency(m, n, root(forked[:m]), mth(DATA[:n]), proof)


def test_node_hash_prefix() -> None:
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
