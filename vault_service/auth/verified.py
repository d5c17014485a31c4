"""The one cache of verified tokens, shared by the service's own verifier
(auth/tokens.py) and the external issuers' (auth/oidc.py).

An Ed25519 or RSA verification costs more than decrypting a whole record, so a token
that verified is remembered by SHA-256 of its text, bounded in number (least recently
used first out). Each verifier decides whether its own entry still holds (the token
not expired, its key still published); the account's state, the link and the token's
revocation are checked on every request all the same (auth/accounts.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class VerifiedTokens:
    """sha256(token) -> (claims, kid) of the verifier that verified it."""

    def __init__(self, size: int) -> None:
        self._entries: OrderedDict[bytes, tuple[object, str]] = OrderedDict()
        self._size = size

    def get(self, digest: bytes) -> tuple[object, str] | None:
        return self._entries.get(digest)

    def hit(self, digest: bytes) -> None:
        self._entries.move_to_end(digest)

    def drop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def put(self, digest: bytes, claims: object, kid: str) -> None:
        if not self._size:
            return
        self._entries[digest] = (claims, kid)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
