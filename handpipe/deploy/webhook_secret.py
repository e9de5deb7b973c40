"""The stage's webhook signing master secret in Secrets Manager (each owner's webhook secret is derived
from it: chalicelib.service.notifications_secrets). Made by deploy rather than by the stack, so that a
stack update never regenerates it and silently changes every caller's secret."""

from __future__ import annotations

import secrets
from typing import Any

from .errors import error_code


def secret_name(stage: str) -> str:
    return f"handpipe/{stage}/webhook-signing"


def ensure_webhook_secret(secretsmanager: Any, stage: str) -> str:
    """The secret's ARN, made with 64 random hex digits the first time."""
    name = secret_name(stage)
    try:
        arn: str = secretsmanager.describe_secret(SecretId=name)["ARN"]
        return arn
    except Exception as error:
        if error_code(error) != "ResourceNotFoundException":
            raise
    created = secretsmanager.create_secret(
        Name=name,
        Description=f"handpipe {stage}: the master secret each owner's webhook signing secret is derived from",
        SecretString=secrets.token_hex(32),
        Tags=[{"Key": "handpipe:stage", "Value": stage}],
    )
    made: str = created["ARN"]
    return made


def delete_webhook_secret(secretsmanager: Any, stage: str) -> bool:
    """Schedule the secret's deletion (recoverable for 7 days); False when there was none."""
    try:
        secretsmanager.delete_secret(SecretId=secret_name(stage), RecoveryWindowInDays=7)
    except Exception as error:
        if error_code(error) == "ResourceNotFoundException":
            return False
        raise
    return True
