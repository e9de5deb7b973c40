"""The health check: which dependencies answer, and what kind of failure the others show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalicelib.service.common import logger


def health(checks: Mapping[str, Any]) -> tuple[bool, dict[str, str]]:
    """Run each named check (a callable that raises when unhealthy); report every outcome. The
    answer is public, so it says only what kind of failure it was: the error's own text (database
    user, host and name, queue URLs, role ARNs) goes to the log."""
    outcome: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            outcome[name] = "ok"
        except Exception as error:  # a health check reports failures, it does not raise them
            logger.warning("health check %s failing: %s", name, error)
            outcome[name] = f"failing: {_failure_kind(error)}"
    return all(v == "ok" for v in outcome.values()), outcome


def _failure_kind(error: Exception) -> str:
    kinds = {
        "DatabaseUnavailable": "the database does not answer",
        "StorageUnavailable": "the bucket does not answer or refuses access",
        "ObjectMissing": "the bucket does not exist",
        "QueueUnavailable": "the queue does not answer or refuses access",
        "SchemaOutOfDate": "the database schema is out of date",
        "NotConfigured": "not configured",
    }
    return f"{kinds.get(type(error).__name__, 'unexpected error')} (details in the service's log)"
