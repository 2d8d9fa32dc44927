"""Checkpoints: a signed commitment to the Merkle root and size of the ledger so far.

The text form follows the C2SP tlog-checkpoint / signed-note formats, so existing
tooling and people who know Certificate Transparency can read it::

    <origin>\\n
    <tree size, decimal>\\n
    <base64 RFC 9162 root hash>\\n
    \\n
    \\u2014 <origin> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>\\n

The signature covers the body (the first three lines including their newlines);
the key hash is ``SHA-256(origin || "\\n" || 0x01 || public key)[:4]`` as in C2SP
signed notes. Leaf ``i`` of the tree is ``entry_hash`` of sequence ``i``; a
checkpoint entry of size ``n`` commits to sequences ``0 .. n-1``, i.e. everything
before the checkpoint entry itself.

>>> from nacl.signing import SigningKey
>>> sk = SigningKey(bytes(32))
>>> note = sign_note("metaheal.ledger", 3, bytes(32), sk)
>>> print(note, end="")
metaheal.ledger
3
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
<BLANKLINE>
— metaheal.ledger ...
>>> c = parse_note(note)
>>> (c.origin, c.size, c.root) == ("metaheal.ledger", 3, bytes(32)), verify_note(note, sk.verify_key)
(True, True)
>>> verify_note(note.replace("\\n3\\n", "\\n4\\n"), sk.verify_key)
False
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metaheal.errors import NoteError

DASH = "\u2014"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (key name, key hash + signature)

    @property
    def body(self) -> str:
        return body(self.origin, self.size, self.root)


def body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + public_key).digest()[:4]


def sign_note(origin: str, size: int, root: bytes, key: SigningKey) -> str:
    text = body(origin, size, root)
    sig = key.sign(text.encode()).signature
    blob = base64.b64encode(key_hash(origin, key.verify_key.encode()) + sig).decode()
    return f"{text}\n{DASH} {origin} {blob}\n"


def parse_note(note: str) -> Checkpoint:
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        raise NoteError("checkpoint: no blank line between body and signatures")
    lines = text.split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint: body needs origin, size and root lines")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not size_s.isdigit():
        raise NoteError(f"checkpoint: size line {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError:
        raise NoteError(f"checkpoint: root line {root_s!r} is not base64") from None
    if len(root) != 32:
        raise NoteError(f"checkpoint: root is {len(root)} bytes, expected 32")
    signatures = []
    for line in sigs.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise NoteError(f"checkpoint: bad signature line {line!r}")
        try:
            signatures.append((parts[1], base64.b64decode(parts[2], validate=True)))
        except ValueError:
            raise NoteError(f"checkpoint: signature of {parts[1]!r} is not base64") from None
    return Checkpoint(origin, int(size_s), root, tuple(signatures))


def verify_note(note: str, key: VerifyKey, name: str | None = None) -> bool:
    """True if ``note`` parses and carries a valid signature by ``key`` (under ``name``, default origin)."""
    try:
        cp = parse_note(note)
    except NoteError:
        return False
    name = name or cp.origin
    kh = key_hash(name, key.encode())
    for signer, blob in cp.signatures:
        if signer == name and blob[:4] == kh and len(blob) == 68:
            try:
                key.verify(cp.body.encode(), blob[4:])
                return True
            except BadSignatureError:
                return False
    return False
