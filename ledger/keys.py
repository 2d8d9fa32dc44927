"""Per-actor Ed25519 keys and the key registry that decides which key was valid when.

Layout of the keys folder (``settings.keys``)::

    registry.json          public: every key ever issued (never shrinks)
    <key_id>.key           private: hex Ed25519 seed, mode 0600, one per key

A registry record is ``{key_id, actor, public_key, valid_from, valid_until,
revoked, revoked_at}``. ``key_id`` is the first 16 hex digits of SHA-256 of the
raw 32-byte public key. Rotation closes the old key (``valid_until``) and issues a
new one, so entries signed earlier still verify; revocation marks a key as
compromised and every entry it signed becomes a finding. Private key material is
never logged.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> ids = init_system_keys(d)
>>> sorted(ids) == sorted(SYSTEM_ACTORS) and init_system_keys(d) == ids
True
>>> oct((d / f"{ids['executor']}.key").stat().st_mode & 0o777)
'0o600'
>>> KeyRegistry.load(d).current("executor").key_id == ids["executor"]
True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metaheal.config import OperatorSettings
from metaheal.errors import LedgerKeyError
from metaheal.ledger.authz import SYSTEM_ACTORS, valid_actor

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"


def utc_now() -> str:
    """UTC timestamp in the one fixed-width form used everywhere (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    actor: str
    public_key: str
    valid_from: str
    valid_until: str | None = None
    revoked: bool = False
    revoked_at: str | None = None

    def valid_at(self, ts: str) -> bool:
        """Whether the key could sign at ``ts`` (revocation is judged separately)."""
        return self.valid_from <= ts and (self.valid_until is None or ts < self.valid_until)

    def verify_key(self) -> VerifyKey:
        return VerifyKey(bytes.fromhex(self.public_key))

    def verify(self, message: bytes, signature_hex: str) -> bool:
        try:
            self.verify_key().verify(message, bytes.fromhex(signature_hex))
            return True
        except (BadSignatureError, ValueError):
            return False


@dataclass
class KeyRegistry:
    """Every key ever issued, by id; read by signers and verifiers alike."""

    folder: Path
    records: dict[str, KeyRecord]

    @classmethod
    def load(cls, folder: str | Path) -> KeyRegistry:
        folder = Path(folder)
        path = folder / REGISTRY_FILE
        if not path.is_file():
            return cls(folder, {})
        try:
            doc = json.loads(path.read_text())
            records = [KeyRecord(**r) for r in doc["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerKeyError(f"{path}: invalid key registry: {exc}") from None
        return cls(folder, {r.key_id: r for r in records})

    def with_operators(self, operators: Iterable[OperatorSettings]) -> KeyRegistry:
        """Add operators' public keys from settings not issued here."""
        records = dict(self.records)
        for op in operators:
            try:
                pub = bytes.fromhex(op.public_key)
                VerifyKey(pub)
            except ValueError:
                logger.warning("operator_key_ignored operator=%s reason=not a 32-byte hex Ed25519 key", op.name)
                continue
            kid = key_id_of(pub)
            records.setdefault(kid, KeyRecord(kid, f"operator:{op.name}", pub.hex(), ""))
        return KeyRegistry(self.folder, records)

    def get(self, key_id: str) -> KeyRecord | None:
        return self.records.get(key_id)

    def for_actor(self, actor: str) -> list[KeyRecord]:
        return sorted((r for r in self.records.values() if r.actor == actor), key=lambda r: r.valid_from)

    def current(self, actor: str, at: str | None = None) -> KeyRecord:
        """The key ``actor`` signs with now: valid at ``at`` and not revoked."""
        at = at or utc_now()
        usable = [r for r in self.for_actor(actor) if not r.revoked and r.valid_at(at)]
        if not usable:
            raise LedgerKeyError(f"no valid signing key for actor {actor!r} in {self.folder}")
        return usable[-1]

    def signing_key(self, actor: str) -> tuple[str, SigningKey]:
        """``(key_id, SigningKey)`` for ``actor``; raises :class:`LedgerKeyError` if absent."""
        rec = self.current(actor)
        path = self.folder / f"{rec.key_id}.key"
        try:
            sk = SigningKey(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            raise LedgerKeyError(
                f"private key for actor {actor!r} (key {rec.key_id}) missing from {self.folder}"
            ) from None
        except ValueError:
            raise LedgerKeyError(f"private key file for actor {actor!r} (key {rec.key_id}) is corrupt") from None
        if sk.verify_key.encode().hex() != rec.public_key:
            raise LedgerKeyError(f"private key file {rec.key_id}.key does not match the registry")
        return rec.key_id, sk


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[KeyRegistry]:
    """Read-modify-write the registry under an exclusive lock, then replace atomically."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reg = KeyRegistry.load(folder)
        before = dict(reg.records)
        yield reg
        if reg.records != before:
            tmp = folder / f".{REGISTRY_FILE}.tmp"
            doc = {"keys": [asdict(r) for r in sorted(reg.records.values(), key=lambda r: (r.actor, r.valid_from))]}
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, folder / REGISTRY_FILE)


def _write_private(path: Path, seed_hex: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed_hex + "\n")


def _issue(reg: KeyRegistry, actor: str, valid_from: str | None = None) -> KeyRecord:
    if not valid_actor(actor):
        raise LedgerKeyError(f"actor {actor!r} is not a known actor (see metaheal.ledger.authz)")
    sk = SigningKey.generate()
    pub = sk.verify_key.encode()
    rec = KeyRecord(key_id_of(pub), actor, pub.hex(), valid_from or utc_now())
    _write_private(reg.folder / f"{rec.key_id}.key", sk.encode().hex())
    reg.records[rec.key_id] = rec
    logger.info("key_issued actor=%s key_id=%s", actor, rec.key_id)
    return rec


def _ensure(reg: KeyRegistry, actor: str) -> KeyRecord:
    try:
        rec = reg.current(actor)
        if (reg.folder / f"{rec.key_id}.key").is_file():
            return rec
    except LedgerKeyError:
        pass
    return _issue(reg, actor)


def init_system_keys(folder: str | Path) -> dict[str, str]:
    """Create a key for every system actor that has none; idempotent. Returns actor -> key_id."""
    with _locked(Path(folder)) as reg:
        return {actor: _ensure(reg, actor).key_id for actor in SYSTEM_ACTORS}


def init_operator_key(folder: str | Path, name: str) -> tuple[Path, str]:
    """Create (or return) operator ``name``'s key: ``(private_key_path, public_key_hex)``."""
    with _locked(Path(folder)) as reg:
        rec = _ensure(reg, f"operator:{name}")
    return Path(folder) / f"{rec.key_id}.key", rec.public_key


def rotate_key(folder: str | Path, actor: str) -> KeyRecord:
    """Close ``actor``'s current key now and issue a new one; old entries stay verifiable."""
    with _locked(Path(folder)) as reg:
        now = utc_now()
        for rec in reg.for_actor(actor):
            if rec.valid_until is None and not rec.revoked:
                reg.records[rec.key_id] = replace(rec, valid_until=now)
        return _issue(reg, actor, valid_from=now)


def revoke_key(folder: str | Path, key_id: str) -> KeyRecord:
    """Mark a key compromised: every entry it signed is reported by the verifier."""
    with _locked(Path(folder)) as reg:
        rec = reg.get(key_id)
        if rec is None:
            raise LedgerKeyError(f"unknown key id {key_id!r}")
        rec = replace(rec, revoked=True, revoked_at=utc_now())
        reg.records[key_id] = rec
        logger.info("key_revoked actor=%s key_id=%s", rec.actor, key_id)
        return rec
