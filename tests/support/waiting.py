"""Bounded waits for tests: a condition polled a fixed number of times, then a clear failure (never a
timing assertion: how long something took is measured by bench/, not asserted here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 300, poll_s: float = 0.1) -> Any:
    """The first true value `check` returns within about `timeout_s`; AssertionError naming `what` if none."""
    for _ in range(max(1, int(timeout_s / poll_s))):
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")
