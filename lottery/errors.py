"""The one exception type a user ever sees, and the shapes its one-line messages take."""

from __future__ import annotations

from lottery.config import help_of


class LotteryError(Exception):
    """A user-facing error: bad configuration, missing data, a corrupt file.

    Every entry point prints it as a single line (no stack trace) and exits with status 2.
    """


def unknown(kind: str, name: str, valid) -> LotteryError:
    return LotteryError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(valid))}")


def check_choice(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise unknown(kind, name, valid)


def bad_value(path: str, value, rule: str) -> LotteryError:
    """``path=value: rule``, followed by the field's own help, so the fix is in the message."""
    about = help_of(path)
    rule = rule if rule.startswith(" ") else f": {rule}"  # " is above ..." reads on from the value
    return LotteryError(f"{path}={value}{rule}" + (f" ({path}: {about})" if about else ""))


def one_line(e: BaseException) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
