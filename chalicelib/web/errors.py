"""Service errors to HTTP: the one mapping app.py's routes and the insight blueprint both wrap their
views in, so a fault answers the same JSON (code, message, Retry-After) whichever route it came from."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from chalice import Response

from chalicelib.adapters.database import DatabaseUnavailable
from chalicelib.adapters.migrations import SchemaOutOfDate
from chalicelib.config import NotConfigured
from chalicelib.service.common import gone
from chalicelib.service.errors import BeingWritten, ServiceError, Unavailable
from chalicelib.shared.queues import QueueUnavailable
from chalicelib.shared.storage import ObjectMissing, StorageUnavailable

logger = logging.getLogger("handpipe")  # Chalice's app.log: the app is named handpipe


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response_headers: dict[str, str | list[str]] = {**(headers or {})}
    return Response(body={"code": code, "message": message}, status_code=status, headers=response_headers)


def not_configured(error: NotConfigured) -> Response:
    """A deployment missing its settings: logged for the operator, a 503 for the caller (the details
    name resources a caller has no business seeing)."""
    logger.error("%s", error)
    return error_response(503, "not_configured", "the service is not configured; see its logs", {"Retry-After": "60"})


def map_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Maps service errors to JSON responses; an unavailable dependency is a 503 with Retry-After."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except Unavailable as error:
            return error_response(503, error.code, error.message, {"Retry-After": str(error.retry_after_s)})
        except BeingWritten as error:
            return error_response(error.status, error.code, error.message, {"Retry-After": str(error.retry_after_s)})
        except ServiceError as error:
            return error_response(error.status, error.code, error.message)
        except ObjectMissing as error:
            # Every read of a stored object can find it gone; that is the object's state, not a fault.
            missing = gone(error)
            return error_response(missing.status, missing.code, missing.message)
        except (DatabaseUnavailable, StorageUnavailable, QueueUnavailable) as error:
            logger.error("dependency unavailable: %s", error)
            what = {DatabaseUnavailable: "database", StorageUnavailable: "storage", QueueUnavailable: "queue"}
            return error_response(
                503, "unavailable", f"the {what[type(error)]} is unavailable; retry shortly", {"Retry-After": "5"}
            )
        except NotConfigured as error:
            return not_configured(error)
        except SchemaOutOfDate as error:
            logger.error("%s", error)
            return error_response(
                503, "schema_out_of_date", "the service is being upgraded; retry shortly", {"Retry-After": "30"}
            )

    return wrapper
