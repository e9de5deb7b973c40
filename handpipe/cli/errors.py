"""The errors every command (and the deploy code it calls) reports to the user: a module of its own, so
whoever raises them needs no import of the command line itself."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
