"""Who is calling: API keys (checked by API Gateway's usage plan in AWS, by the app against a
configured list in the local stack) or IAM; each caller becomes an owner that scopes what it sees."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.service.errors import Forbidden, ServiceError

AUTH_MODES = ("api_key", "iam", "none")
# Route templates anyone may call. The viewer page holds no data (it asks the API with the caller's key),
# and a browser cannot send a header when it opens a link.
PUBLIC_PATHS = ("/health", "/openapi.json", "/jobs/{job_id}/viewer")
MAX_OWNER_LENGTH = 255  # the schema's owner columns
NO_BODY = ["*/*"]  # routes that read no body do not care what Content-Type a client sends


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


@dataclass(frozen=True)
class Caller:
    owner: str | None  # None: unscoped (auth off, or scoping off)


def parse_api_keys(text: str | None) -> dict[str, str]:
    """`key=owner,key2=owner2` (a bare `key` is owned by "default") into {key: owner}."""
    keys: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, _, owner = entry.partition("=")
        if len(key) < 16:
            raise ValueError("an API key must be at least 16 characters long")
        keys[key] = owner.strip() or "default"
    return keys


def authenticate(
    mode: str,
    headers: Mapping[str, str],
    request_context: Mapping[str, Any] | None,
    local_keys: Mapping[str, str],
    scope_callers: bool,
) -> Caller:
    """The caller of one request, or Unauthorized (no credentials) / Forbidden (wrong ones)."""
    if mode == "none":
        return Caller(owner=None)
    identity = (request_context or {}).get("identity") or {}
    if mode == "api_key":
        presented = headers.get("x-api-key")
        if local_keys:
            if not presented:
                raise Unauthorized("send your API key in the x-api-key header")
            # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
            given = presented.encode("utf-8", "surrogateescape")
            owner = next((o for k, o in local_keys.items() if hmac.compare_digest(k.encode(), given)), None)
            if owner is None:
                raise Forbidden("that API key is not valid")
        else:
            # In AWS, API Gateway has already checked the key against the usage plan.
            owner = identity.get("apiKeyId")
            if not owner:
                raise Unauthorized("send your API key in the x-api-key header")
    elif mode == "iam":
        owner = identity.get("userArn") or identity.get("caller")
        if not owner:
            raise Unauthorized("sign the request with AWS credentials (SigV4)")
    else:
        raise Forbidden(f"unknown authentication mode {mode!r}")
    owner = str(owner)
    if len(owner) > MAX_OWNER_LENGTH:
        raise Forbidden(
            f"your identity has {len(owner)} characters, more than the {MAX_OWNER_LENGTH} handpipe records as an "
            "owner; call with a shorter role session name or IAM path"
        )
    return Caller(owner=owner if scope_callers else None)


def route_protection(mode: str) -> dict[str, Any]:
    """What the protected routes declare, so that API Gateway checks credentials in AWS: an API key
    of the stage's usage plan, or an IAM signature (the app checks them again for each request)."""
    if mode == "api_key":
        return {"api_key_required": True}
    if mode == "iam":
        from chalice import IAMAuthorizer  # only the app, never the worker, needs chalice

        return {"authorizer": IAMAuthorizer()}
    return {}


def request_caller(request: Any, settings: Any) -> Caller:
    """Who sent `request` (a Chalice request) under `settings`; raises Unauthorized or Forbidden (401/403).
    app.py's routes and the insight blueprint both ask here, so neither imports the other."""
    return authenticate(settings.auth, request.headers, request.context, settings.api_keys, settings.scope_callers)
