"""The `handpipe` command: run the engine on a file, run the local stack, run the demo, and talk to
the API (local or deployed). This module wires the command groups (one module each) to argparse."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from . import api, db, deploy, process, stack
from .errors import CliError
from .options import DEFAULT_API_URL

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handpipe", description="Hand landmarks from video with MediaPipe.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order here is the order `handpipe --help` lists the commands in.
    process.add_commands(commands)
    db.add_commands(commands)
    stack.add_commands(commands)
    api.add_commands(commands)
    deploy.add_commands(commands)
    return parser


def quiet_native_logs() -> None:
    """MediaPipe's C++ side writes INFO and WARNING lines straight to file descriptor 2, which
    nobody can act on. Send descriptor 2 to /dev/null and keep Python's stderr on the real one."""
    sys.stderr.flush()
    real_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real_stderr, "w", buffering=1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose and args.command in ("process", "demo") and argv is None:
        quiet_native_logs()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if hasattr(args, "api_url"):
        args.api_url_given = args.api_url is not None
        args.api_url = args.api_url or os.environ.get("HANDPIPE_API_URL") or DEFAULT_API_URL
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CliError as error:
        print(f"handpipe: {error}", file=sys.stderr)
        return error.status
    except ConnectionError as error:
        print(f"handpipe: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from ..client import ApiError

        if isinstance(error, ApiError):
            print(f"handpipe: {error}", file=sys.stderr)
            return 1
        raise
