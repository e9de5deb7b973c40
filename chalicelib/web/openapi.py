"""The API's OpenAPI 3.1 description, chalicelib/web/openapi.json: it sits next to this module so that it
ships with the Lambda. Read on first use and kept for the container's life."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

OPENAPI_PATH = Path(__file__).resolve().with_name("openapi.json")

_DOCUMENT: dict[str, Any] | None = None
_LOCK = threading.Lock()


def load_openapi() -> dict[str, Any]:
    """The parsed document; callers must not change it (it is shared)."""
    global _DOCUMENT
    with _LOCK:
        if _DOCUMENT is None:
            _DOCUMENT = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
        return _DOCUMENT
