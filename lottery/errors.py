"""The one exception type a user ever sees, and the shapes its one-line messages take.

This module imports nothing of lottery's: every layer may raise these.
"""

from __future__ import annotations


class LotteryError(Exception):
    """A user-facing error: bad configuration, missing data, a corrupt file.

    Every entry point prints it as a single line (no stack trace) and exits with status 2.
    """


def unknown(kind: str, name: str, valid) -> LotteryError:
    return LotteryError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(valid))}")


def check_choice(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise unknown(kind, name, valid)


def first_cause(e: BaseException) -> BaseException:
    """The error behind a wrapped one (dynamo's ``inner_exception``, ``raise ... from``, or the
    one being handled when it was raised)."""
    seen = {id(e)}
    while (inner := getattr(e, "inner_exception", None) or e.__cause__
           or (None if e.__suppress_context__ else e.__context__)) is not None and id(inner) not in seen:
        e = inner
        seen.add(id(e))
    return e


def one_line(e: BaseException) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
