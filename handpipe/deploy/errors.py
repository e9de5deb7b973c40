"""How deploy and destroy fail: DeployError, which names the failed step and what to do, and Problem, which a
step raises when it knows better advice. Both reach the CLI, which prints them without a traceback."""

from __future__ import annotations


class DeployError(Exception):
    """A step failed. The text names the step, what went wrong and what to do about it."""


class Problem(Exception):
    """Raised inside a step when it knows better than the step's general advice what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError, or "" for any other exception."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", error))
