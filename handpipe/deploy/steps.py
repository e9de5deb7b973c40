"""The numbered steps deploy and destroy print, and the one place that turns a failure inside a step into a
DeployError naming the step and what to do, so no step writes its own error handling."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import DeployError, Problem, error_code, error_message


class Steps:
    """Counts and announces the steps of one run; `step()` wraps each one."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self._number = 0
        self._total = 0

    def begin(self, total: int) -> None:
        self._number = 0
        self._total = total

    @contextmanager
    def step(self, title: str, hint: str) -> Iterator[None]:
        self._number += 1
        where = f"step {self._number}/{self._total}"
        self.say(f"[{self._number}/{self._total}] {title}")
        try:
            yield
        except DeployError:
            raise
        except KeyboardInterrupt:
            raise DeployError(f"{where} ({title}) was interrupted; run the command again to finish") from None
        except Problem as problem:
            raise DeployError(f"{where} ({title}) failed: {problem}\n  what to do: {problem.hint or hint}") from problem
        except Exception as error:  # anything else: name the step and give its advice
            message = error_message(error) if error_code(error) else str(error) or type(error).__name__
            raise DeployError(f"{where} ({title}) failed: {message}\n  what to do: {hint}") from error
