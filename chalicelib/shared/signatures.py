"""Webhook signatures: the API signs each event body and receivers check it with the same two functions
(the Python client's verify_webhook is `verify_signature`), so both sides agree on one format."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Handpipe-Signature"
_PREFIX = "sha256="


def sign_body(body: bytes, secret: str) -> str:
    """The header value for `body`: `sha256=` and the hex HMAC-SHA256 of the raw bytes, keyed by `secret`."""
    if not secret:
        raise ValueError("a webhook secret must not be empty")
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes | str, header: str | None, secret: str) -> bool:
    """Whether `header` is the signature of the raw `body` under `secret` (compared in constant time).
    Pass the body exactly as received: re-serialised JSON has other bytes and fails."""
    if not header or not secret or not header.startswith(_PREFIX):
        return False
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hmac.compare_digest(sign_body(raw, secret), header.strip())
