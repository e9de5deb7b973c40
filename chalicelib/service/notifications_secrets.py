"""Webhook signing secrets: each owner's secret is HMAC-SHA256(stage master secret, owner and version),
so nothing secret is stored per owner and the delivering function needs no database; rotating a
secret is one more version. Callers read theirs with GET /webhook-secret and rotate it with
POST /webhook-secret/rotate."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Protocol


class SecretVersions(Protocol):
    """adapters.webhook_secrets.WebhookSecretRepository and the tests' fake."""

    def current(self, owner: str | None) -> tuple[int, int | None]: ...

    def rotate(self, owner: str | None) -> int: ...


def derive_secret(master: str, owner: str | None, version: int) -> str:
    """The owner's secret of that version: `whsec_` and 64 hex digits."""
    if not master:
        raise ValueError("the stage's webhook master secret is empty")
    message = f"handpipe-webhook:{owner or ''}:{version}".encode()
    return "whsec_" + hmac.new(master.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _view(master: str, owner: str | None, version: int, rotated_at: int | None) -> dict[str, Any]:
    return {
        "secret": derive_secret(master, owner, version),
        "version": version,
        "rotated_at": rotated_at,
        "header": "X-Handpipe-Signature",
        "algorithm": "sha256=<hex HMAC-SHA256 of the raw request body, keyed by secret>",
    }


def webhook_secret(versions: SecretVersions, master: str, owner: str | None) -> dict[str, Any]:
    version, rotated_at = versions.current(owner)
    return _view(master, owner, version, rotated_at)


def rotate_webhook_secret(versions: SecretVersions, master: str, owner: str | None) -> dict[str, Any]:
    """A new secret at once: events announced from now on are signed with it. Events announced before
    keep the secret of their time (X-Handpipe-Secret-Version says which) while SQS retries them."""
    versions.rotate(owner)
    version, rotated_at = versions.current(owner)
    return _view(master, owner, version, rotated_at)
