"""SCRAM-SHA-256 (RFC 5802 / 7677) for the server side, as PostgreSQL does it: pure.

`ScramVerifier.from_password` keeps only the salted keys (never the password),
`ScramExchange` runs one authentication: client-first -> server-first,
client-final -> server-final (or `ScramFailed`). Channel binding (-PLUS) is not
offered, so a client that asks for it with 'p=' is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096
NONCE_BYTES = 18


class ScramFailed(Exception):
    """Authentication failed (wrong password or a malformed exchange): SQLSTATE 28P01."""


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str, salt: bytes | None = None,
                      iterations: int = ITERATIONS) -> "ScramVerifier":
        salt = salt or secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))


def _attributes(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramFailed(f"malformed SCRAM attribute {part[:20]!r}")
        out[part[0]] = part[2:]
    return out


class ScramExchange:
    def __init__(self, verifier: ScramVerifier, nonce: str | None = None) -> None:
        self.verifier = verifier
        self._server_nonce = nonce or base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode()
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def server_first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramFailed("client-first-message is not UTF-8") from None
        gs2, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2 or gs2 not in ("n", "y") and not gs2.startswith("p="):
            raise ScramFailed("malformed client-first-message")
        if gs2.startswith("p="):
            raise ScramFailed("channel binding is not supported; use SCRAM-SHA-256 without -PLUS")
        attrs = _attributes(bare)
        client_nonce = attrs.get("r", "")
        if not client_nonce:
            raise ScramFailed("client-first-message without a nonce")
        self._client_first_bare = bare
        self._gs2_header = f"{gs2},{authzid},"
        self._nonce = client_nonce + self._server_nonce
        self._server_first = (f"r={self._nonce},s={base64.b64encode(self.verifier.salt).decode()},"
                              f"i={self.verifier.iterations}")
        return self._server_first.encode()

    def server_final(self, client_final: bytes) -> bytes:
        try:
            text = client_final.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramFailed("client-final-message is not UTF-8") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramFailed("client-final-message without a proof")
        attrs = _attributes(without_proof)
        if attrs.get("r") != self._nonce:
            raise ScramFailed("nonce mismatch")
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise ScramFailed("channel binding mismatch")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ScramFailed("proof is not base64") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(client_signature):
            raise ScramFailed("proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramFailed("password authentication failed")
        server_signature = _hmac(self.verifier.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)
