"""The errors every command (and the deploy code it calls) reports to the user, and the way a command
declares itself: a module of its own, so whoever raises them needs no import of the command line itself."""

from __future__ import annotations

import argparse
from typing import Any


class CliError(Exception):
    """A problem the user can fix; printed as one line without a traceback, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def command(commands: Any, name: str, summary: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `handpipe --help`), a description and examples (in
    `handpipe NAME --help`)."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
