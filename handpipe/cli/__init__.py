"""The `handpipe` command: run the engine on a file, run the local stack, run the demo, and talk to
the API (local or deployed). This module wires the command groups (one module each) to argparse and
turns every failure into one line on stderr, `handpipe: error: ...`, and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from . import api, db, deploy, jobs, process, stack, submit
from .errors import CliError
from .options import DEFAULT_API_URL, resolve_api_args

__all__ = ["DEFAULT_API_URL", "CliError", "Parser", "build_parser", "main"]

PREFIX = "handpipe: error: "


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error that says where the help is, instead of the usage block."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)", 2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("handpipe")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="handpipe",
        description="Hand landmarks from video with MediaPipe: the engine on a file, a local stack, and a client "
        "for the handpipe API (local or deployed).",
        epilog="examples:\n"
        "  handpipe demo                          # the whole pipeline on a sample clip\n"
        "  handpipe up                            # the local stack on http://127.0.0.1:8000\n"
        "  handpipe submit clip.mp4 --wait        # upload, process, print the summary\n"
        "  handpipe submit recordings/ --tag day1 # a folder as one batch\n"
        "  handpipe jobs --tag day1               # find its jobs again\n"
        "\n`handpipe COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"handpipe {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does; show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    # The order here is the order `handpipe --help` lists the commands in.
    process.add_commands(commands)
    db.add_commands(commands)
    stack.add_commands(commands)
    submit.add_commands(commands)
    api.add_commands(commands)
    jobs.add_commands(commands)
    deploy.add_commands(commands)
    return parser


def quiet_native_logs() -> None:
    """MediaPipe's C++ side writes INFO and WARNING lines straight to file descriptor 2, which nobody can
    act on: the worker's filter (handpipe_worker.native_logs) drops exactly those and keeps native errors."""
    from handpipe_worker.native_logs import filter_native_stderr

    filter_native_stderr()


def fail(message: str, status: int = 1) -> int:
    print(PREFIX + " ".join(message.split()), file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    verbose = "-v" in given or "--verbose" in given
    try:
        args = build_parser().parse_args(argv)
        if not args.verbose and args.command in ("process", "demo") and argv is None:
            quiet_native_logs()
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        if hasattr(args, "api_url"):
            resolve_api_args(args)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except CliError as error:
        return fail(str(error), error.status)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (`handpipe jobs | head -1`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:
        return _unexpected(error, verbose)


def _unexpected(error: Exception, verbose: bool) -> int:
    """The client's errors, said for a person at a terminal; anything else in one line (the traceback
    only with -v, for a bug report)."""
    from ..client import ApiError, HandpipeConnectionError, HandpipeError, StorageError

    if isinstance(error, StorageError):
        return fail(f"the bucket refused the transfer: {error.message} (HTTP {error.status})")
    if isinstance(error, ApiError):
        if error.status == 401:
            return fail(f"{error.message} (HTTP 401): pass --api-key KEY or set HANDPIPE_API_KEY")
        if error.status == 403:
            return fail(f"{error.message} (HTTP 403): check --api-key or HANDPIPE_API_KEY")
        if error.status in (429, 503):
            return fail(f"{error.message} (HTTP {error.status}, still after retrying): try again in a while")
        return fail(f"{error.message} (HTTP {error.status})")
    if isinstance(error, HandpipeConnectionError):
        return fail(
            f"{error}: is the API running? Start a local stack with `handpipe up`, or point --api-url "
            "(or HANDPIPE_API_URL) at one"
        )
    if isinstance(error, HandpipeError):
        return fail(str(error))
    if verbose:
        raise error
    return fail(f"unexpected {type(error).__name__}: {error} (run again with -v for the details)")
