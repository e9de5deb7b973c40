"""Query-string parsing for the routes: one value per name, limits and millisecond bounds, with a
clear 400 for anything else."""

from __future__ import annotations

from typing import Any

from chalicelib.service.errors import InvalidInput

MAX_PAGE = 100


MAX_FRAMES_PAGE = 1000


def parse_limit(raw: str | None, default: int, maximum: int, name: str = "limit") -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise InvalidInput(f"{name} must be between 1 and {maximum}, got {value}")
    return value


def parse_ms(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number of milliseconds") from None
    if not 0 <= value <= 24 * 3600 * 1000:
        raise InvalidInput(f"{name} must be between 0 and 86400000")
    return value


def single_query_value(params: Any, name: str) -> str | None:
    """A query parameter's value; given twice, it is ambiguous, and refused (a 400) rather than one
    of the values picked. `params` is Chalice's MultiDict, or None when the URL had no query."""
    if not params or name not in params:
        return None
    values = list(params.getlist(name)) if hasattr(params, "getlist") else [params[name]]
    if len(values) > 1:
        raise InvalidInput(f"{name} was given {len(values)} times; give it once")
    return values[0] if values else None
